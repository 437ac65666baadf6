"""Gemma2Config, presets (docs/recipe.md#gemma-2-sizes) and the HF config.json round trip."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from gemmascope import model
from gemmascope.model.config import FULL, SLIDING

# docs/recipe.md#gemma-2-sizes, column by column: d_model, layers, heads, kv heads, head_dim, d_mlp,
# scalar.
SPEC_SIZES = {
    "gemma2_2b": (2304, 26, 8, 4, 256, 9216, 256),
    "gemma2_9b": (3584, 42, 16, 8, 256, 14336, 256),
    "gemma2_27b": (4608, 46, 32, 16, 128, 36864, 144),
}


@pytest.mark.parametrize("name", sorted(SPEC_SIZES))
def test_presets_have_every_number_of_the_spec(name):
    cfg = model.presets.get(name)
    d, layers, heads, kv, head_dim, d_mlp, scalar = SPEC_SIZES[name]
    assert (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.query_pre_attn_scalar,
    ) == (d, layers, heads, kv, head_dim, d_mlp, scalar)
    assert cfg.vocab_size == 256000
    assert cfg.attn_logit_softcapping == 50.0 and cfg.final_logit_softcapping == 30.0
    assert cfg.sliding_window == 4096 and cfg.rope_theta == 10000.0
    assert cfg.max_position_embeddings == 8192 and cfg.rms_norm_eps == 1e-6
    assert cfg.hidden_activation == "gelu_pytorch_tanh" and cfg.tie_word_embeddings
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (0, 1, 2)
    # Local first, then alternating (docs/recipe.md#gemma-2-layers).
    assert cfg.layer_types[:3] == (SLIDING, FULL, SLIDING) and len(cfg.layer_types) == layers


def test_attn_z_width_of_27b_is_narrower_than_d_model():
    assert model.presets.gemma2_27b().attn_z_width == 4096
    assert model.sites.dim(model.presets.gemma2_27b(), "attn_z/0") == 4096
    assert model.sites.dim(model.presets.gemma2_27b(), "resid_post/0") == 4608


def test_2b_parameter_count_matches_the_released_model():
    # google/gemma-2-2b: 2,614,341,888 parameters (tied embedding counted once).
    assert model.presets.gemma2_2b().n_params() == 2_614_341_888


def test_config_is_hashable_and_jit_static():
    cfg = model.presets.tiny()
    assert hash(cfg) == hash(model.presets.tiny()) and cfg == model.presets.tiny()
    assert {cfg: 1}[model.presets.tiny()] == 1
    double = jax.jit(lambda c, x: x * c.hidden_size, static_argnums=0)
    assert int(double(cfg, jnp.int32(2))) == 128
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 3


def test_tiny_override_rederives_layer_types():
    cfg = model.presets.tiny(num_hidden_layers=3)
    assert cfg.layer_types == (SLIDING, FULL, SLIDING)


def test_hf_dict_round_trips_through_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = model.presets.tiny(eos_token_id=(1, 107))
    hf = transformers.Gemma2Config(**cfg.to_hf_dict())
    assert hf.num_key_value_heads == cfg.num_key_value_heads
    assert hf.query_pre_attn_scalar == 24 and hf.sliding_window == 8
    assert hf.rope_parameters["rope_theta"] == cfg.rope_theta
    assert model.Gemma2Config.from_hf_dict(hf.to_dict()) == cfg


def test_from_hf_dict_reads_transformers_4_style_config():
    """Released config.json files predate rope_parameters and layer_types."""
    legacy = {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "rope_theta": 10000.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "cache_implementation": "hybrid",
        "torch_dtype": "float32",
        "attention_bias": False,
        "sliding_window": 4096,
        "vocab_size": 256000,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "pad_token_id": 0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-06,
    }
    assert model.Gemma2Config.from_hf_dict(legacy) == model.presets.gemma2_2b()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "llama"}, "expected 'gemma2'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type 'linear'"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
        ({"hidden_activation": "relu"}, "hidden_activation 'relu'"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"layer_types": ["full_attention"]}, "layer_types has 1 entries"),
        ({"layer_types": ["local"] * 4}, "Unknown layer_types"),
        ({"head_dim": 15}, "head_dim must be even"),
        ({"quantization_config": {"bits": 4}}, "Quantized"),
    ],
)
def test_bad_hf_config_raises_a_clear_error(change, match):
    hf = {**model.presets.tiny().to_hf_dict(), **change}
    with pytest.raises(ValueError, match=match):
        model.Gemma2Config.from_hf_dict(hf)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="gemma2_2b"):
        model.presets.get("gemma3")


def test_unknown_hf_keys_are_ignored_with_a_warning():
    hf = {**model.presets.tiny().to_hf_dict(), "mystery_knob": 1}
    with pytest.warns(UserWarning, match="mystery_knob"):
        assert model.Gemma2Config.from_hf_dict(hf) == model.presets.tiny()
