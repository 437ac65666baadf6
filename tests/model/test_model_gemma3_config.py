"""Gemma3Config: presets against the published numbers and transformers' modules, config.json."""

import dataclasses

import pytest

from gemmascope import model
from gemmascope.model.config import FULL, SLIDING, gemma3_layer_types
from gemmascope.model.hf_config import config_from_hf_dict

# The HF config.json of each google/gemma-3-<size>-pt checkpoint, with transformers'
# Gemma3TextConfig defaults for the keys a file omits (270m also: the real GGUF's metadata):
# d_model, layers, heads, kv heads, head_dim, d_mlp, query_pre_attn_scalar, vocab, window,
# global-layer RoPE scaling, max positions.
PUBLISHED = {
    "gemma3_270m": (640, 18, 4, 1, 256, 2048, 256, 262144, 512, 1.0, 32768),
    "gemma3_1b": (1152, 26, 4, 1, 256, 6912, 256, 262144, 512, 1.0, 32768),
    "gemma3_4b": (2560, 34, 8, 4, 256, 10240, 256, 262208, 1024, 8.0, 131072),
    "gemma3_12b": (3840, 48, 16, 8, 256, 15360, 256, 262208, 1024, 8.0, 131072),
    "gemma3_27b": (5376, 62, 32, 16, 128, 21504, 168, 262208, 1024, 8.0, 131072),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_have_the_published_numbers(name):
    cfg = model.presets.get(name)
    assert isinstance(cfg, model.Gemma3Config)
    assert (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.query_pre_attn_scalar,
        cfg.vocab_size,
        cfg.sliding_window,
        cfg.rope_scaling_factor,
        cfg.max_position_embeddings,
    ) == PUBLISHED[name]
    assert (cfg.rope_local_base_freq, cfg.rope_theta) == (10_000.0, 1_000_000.0)
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None
    assert cfg.rms_norm_eps == 1e-6 and cfg.tie_word_embeddings and cfg.qk_norm
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (0, 1, 2)
    # Five local layers, then a global one: layers 5, 11, 17, ... are global.
    globals_ = [i for i, kind in enumerate(cfg.layer_types) if kind == FULL]
    assert globals_ == list(range(5, cfg.num_hidden_layers, 6))
    assert cfg.rope(0) == (10_000.0, 1.0) and cfg.rope(5) == (1_000_000.0, PUBLISHED[name][9])


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_build_the_same_tensors_as_transformers(name):
    """The oracle: transformers' Gemma3ForCausalLM built from the preset's config.json.

    Built on the meta device (no memory), it has exactly our tensor names and shapes and our
    parameter count; its config reads back layer types and RoPE as ours.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = model.presets.get(name)
    hf_cfg = transformers.Gemma3TextConfig(**cfg.to_hf_dict())
    with torch.device("meta"):
        hf_model = transformers.Gemma3ForCausalLM(hf_cfg)
    shapes = {k: tuple(v.shape) for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    assert shapes == {spec.hf_name: spec.hf_shape for spec in model.param_specs(cfg)}
    assert cfg.n_params() == sum(v.numel() for k, v in hf_model.state_dict().items() if k in shapes)
    assert tuple(hf_cfg.layer_types) == cfg.layer_types
    full = hf_cfg.rope_parameters[FULL]
    assert full["rope_theta"] == cfg.rope_theta
    assert full.get("factor", 1.0) == cfg.rope_scaling_factor
    assert full["rope_type"] == ("linear" if cfg.rope_scaling_factor != 1.0 else "default")
    assert hf_cfg.rope_parameters[SLIDING]["rope_theta"] == cfg.rope_local_base_freq
    assert model.config_from_hf_dict(hf_cfg.to_dict()) == cfg


def test_parameter_counts_of_the_released_sizes():
    counts = {name: model.presets.get(name).n_params() for name in PUBLISHED}
    # 270M: 168M of them are the 262,144 x 640 embedding.
    assert counts == {
        "gemma3_270m": 268_098_176,
        "gemma3_1b": 999_885_952,
        "gemma3_4b": 3_880_263_168,
        "gemma3_12b": 11_766_034_176,
        "gemma3_27b": 27_009_346_304,
    }


def test_tiny_gemma3_round_trips_through_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = model.presets.tiny_gemma3(eos_token_id=(1, 106))
    assert cfg.layer_types == (SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL)
    hf = transformers.Gemma3TextConfig(**cfg.to_hf_dict())
    assert hf.query_pre_attn_scalar == 24 and hf.sliding_window == 8
    assert hf.rope_parameters[FULL] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}
    assert model.config_from_hf_dict(hf.to_dict()) == cfg
    assert model.Gemma3Config.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_layer_types_from_sliding_window_pattern():
    assert gemma3_layer_types(7, 3) == (SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL, SLIDING)
    assert gemma3_layer_types(2, 1) == (FULL, FULL)
    hf = {"model_type": "gemma3_text", "num_hidden_layers": 4, "sliding_window_pattern": 2}
    assert config_from_hf_dict(hf).layer_types == (SLIDING, FULL, SLIDING, FULL)
    with pytest.raises(ValueError, match="sliding_window_pattern must be a positive int"):
        gemma3_layer_types(4, 0)


def test_released_text_only_config_json_reads_as_the_preset():
    """The 4.x-style config.json of google/gemma-3-1b-pt reads as the 1B preset.

    It has rope_theta, rope_local_base_freq, rope_scaling null, sliding_window_pattern and no
    layer_types.
    """
    released = {
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": 1,
        "final_logit_softcapping": None,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 1152,
        "initializer_range": 0.02,
        "intermediate_size": 6912,
        "max_position_embeddings": 32768,
        "model_type": "gemma3_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 26,
        "num_key_value_heads": 1,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
        "use_cache": True,
        "vocab_size": 262144,
    }
    assert config_from_hf_dict(released) == model.presets.gemma3_1b()


def test_multimodal_config_json_reads_its_text_config_with_hf_defaults():
    """A multimodal config.json's text_config takes Gemma3TextConfig's defaults.

    It lists only the text keys that differ from them (here the 4B's), and the
    instruction-tuned ones give eos at the top level.
    """
    released = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": 255999,
        "eoi_token_index": 256000,
        "eos_token_id": [1, 106],
        "image_token_index": 262144,
        "mm_tokens_per_image": 256,
        "model_type": "gemma3",
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "model_type": "gemma3_text",
            "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152},
    }
    expected = dataclasses.replace(model.presets.gemma3_4b(), eos_token_id=(1, 106))
    assert config_from_hf_dict(released) == expected
    assert expected.special_token_ids == (0, 1, 2, 106)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "llama"}, r"supported model types: \['gemma2', 'gemma3', 'gemma3_text'\]"),
        ({"attn_logit_softcapping": 50.0}, "no attention logit softcapping"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope_type 'yarn'"),
        (
            {"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
            "on the sliding layers is not supported",
        ),
        ({"rope_parameters": {"rope_type": "default"}}, "must be nested by layer type"),
        ({"use_bidirectional_attention": True}, "bidirectional"),
        ({"quantization_config": {"quant_method": "gguf"}}, "gemmascope.model.convert"),
        ({"layer_types": ["full_attention"] * 2}, "layer_types has 2 entries"),
    ],
)
def test_bad_gemma3_config_raises_a_clear_error(change, match):
    hf = {**model.presets.tiny_gemma3().to_hf_dict(), **change}
    with pytest.raises(ValueError, match=match):
        config_from_hf_dict(hf)


def test_families_are_distinct_configs():
    g2 = model.presets.tiny()
    g3 = model.presets.tiny_gemma3()
    assert not g2.qk_norm and g3.qk_norm
    assert model.config_from_hf_dict(g2.to_hf_dict()) == g2
    assert g2.to_hf_dict()["architectures"] == ["Gemma2ForCausalLM"]
    assert g3.to_hf_dict()["architectures"] == ["Gemma3ForCausalLM"]
    with pytest.raises(ValueError, match="expected 'gemma3_text'"):
        model.Gemma3Config.from_hf_dict(g2.to_hf_dict())
