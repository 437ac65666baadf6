"""Gemma 3 against transformers beyond the every-site check.

Each architecture knob binds, the mlp_in site under replacement, and multimodal checkpoints
(their language model).
"""

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_oracle import SEQ_LEN, decoder_layers, randomize, torch_forward
from safetensors.numpy import load_file, save_file

from gemmascope import model

TOL = 1e-4


def run(cfg, params, tokens, **kwargs):
    return jax.jit(lambda p, t: model.forward(cfg, p, t, **kwargs))(params, tokens)


@pytest.fixture(scope="module")
def loaded(hf_cases):
    return {name: model.load_hf(hf_cases[name].path) for name in ("g3_scaled", "g3_scalar")}


def _without_qk_norm_gains(params):
    layers = [
        {**layer, "q_norm": 0 * layer["q_norm"], "k_norm": 0 * layer["k_norm"]}
        for layer in params["layers"]
    ]
    return {**params, "layers": layers}


@pytest.mark.parametrize("name", ["g3_scaled", "g3_scalar"])
@pytest.mark.parametrize(
    "knob",
    ["rope_scaling_factor", "rope_local_base_freq", "rope_theta", "sliding_window", "qk_norm"],
)
def test_each_gemma3_knob_changes_the_logits(hf_cases, loaded, name, knob):
    """Guards the oracle test's power: ignoring any Gemma 3 feature would fail it."""
    case = hf_cases[name]
    cfg, params = loaded[name]
    if knob == "qk_norm":
        params = _without_qk_norm_gains(params)
    else:
        neutral = {
            "rope_scaling_factor": 1.0,
            "rope_local_base_freq": cfg.rope_theta,  # one base for every layer
            "rope_theta": cfg.rope_local_base_freq,
            "sliding_window": None,
        }
        cfg = dataclasses.replace(cfg, **{knob: neutral[knob]})
    logits, _ = run(cfg, params, case.tokens)
    assert np.abs(np.asarray(logits) - case.logits).max() > 1e-2


def test_the_global_layer_uses_the_scaled_global_rope(hf_cases, loaded):
    cfg, _ = loaded["g3_scalar"]  # layer 0 global (1M, x8), layers 1-2 local (10k)
    assert [cfg.rope(layer) for layer in range(3)] == [(1e6, 8.0), (1e4, 1.0), (1e4, 1.0)]
    assert [cfg.is_sliding(layer) for layer in range(3)] == [False, True, True]
    assert hf_cases["g3_scalar"].tokens.shape[1] == SEQ_LEN > cfg.sliding_window


def _edit(x):
    """A non-trivial edit that torch and jnp spell the same."""
    return x * -0.5 + 0.25


@pytest.mark.parametrize("name", ["window", "g3_scaled"])
def test_editing_mlp_in_equals_hf_with_a_hook_doing_the_same(hf_cases, name):
    case = hf_cases[name]
    cfg, params = model.load_hf(case.path)
    ref_logits, ref_acts = torch_forward(
        case.torch_model, case.tokens, edit_site="mlp_in/1", edit=_edit
    )
    logits, acts = run(cfg, params, case.tokens, capture="*/1", replace={"mlp_in/1": _edit})
    assert np.abs(ref_logits - case.logits).max() > 1e-2  # the edit matters
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)
    # mlp_in is captured before the edit; the later sites see its effect.
    np.testing.assert_allclose(np.asarray(acts["mlp_in/1"]), case.acts["mlp_in/1"], atol=TOL)
    np.testing.assert_allclose(np.asarray(acts["mlp_out/1"]), ref_acts["mlp_out/1"], atol=TOL)
    # forward_from resumes from resid_post/0 and splices the same edit.
    resid = run(cfg, params, case.tokens, capture="resid_post/0")[1]["resid_post/0"]
    spliced, _ = jax.jit(
        lambda p, r: model.forward_from(cfg, p, "resid_post/0", r, replace={"mlp_in/1": _edit})
    )(params, resid)
    np.testing.assert_allclose(np.asarray(spliced), ref_logits, atol=TOL, rtol=0)


def test_mlp_in_is_the_input_of_the_mlp(hf_cases):
    """Cross-check of the site definition: a forward pre-hook on the MLP module sees mlp_in."""
    import torch

    case = hf_cases["g3_scaled"]
    seen = {}
    block = decoder_layers(case.torch_model)[2]
    handle = block.mlp.register_forward_pre_hook(lambda mod, inp: seen.update(x=inp[0]))
    try:
        with torch.no_grad():
            case.torch_model(torch.tensor(case.tokens, dtype=torch.long))
    finally:
        handle.remove()
    cfg, params = model.load_hf(case.path)
    acts = jax.jit(lambda p, t: model.collect_sites(cfg, p, t, "mlp_in/2"))(params, case.tokens)
    np.testing.assert_allclose(np.asarray(acts["mlp_in/2"]), seen["x"].numpy(), atol=TOL)
    assert acts["mlp_in/2"].shape == (*case.tokens.shape, model.sites.dim(cfg, "mlp_in/2"))


# ---------------------------------------------------------------------------- multimodal


@pytest.fixture(scope="module")
def multimodal(hf_cases, tmp_path_factory):
    """A tiny random Gemma3ForConditionalGeneration (SigLIP tower included), saved.

    transformers saves it; its text decoder is configured like the g3_scaled case. Returns the
    folder, the tokens and its torch outputs.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from model_oracle import GEMMA3_CASES

    torch.manual_seed(7)
    text = transformers.Gemma3TextConfig(**GEMMA3_CASES["g3_scaled"])
    vision = transformers.SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = transformers.Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=60,
        eoi_token_index=61,
        image_token_index=62,
        eos_token_id=[1, 59],
    )
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    torch_model = transformers.Gemma3ForConditionalGeneration(config).eval()
    randomize(torch_model)
    folder = tmp_path_factory.mktemp("multimodal") / "gemma3_mm"
    torch_model.save_pretrained(folder)
    tokens = hf_cases["g3_scaled"].tokens
    logits, acts = torch_forward(torch_model, tokens)
    return folder, tokens, logits, acts


def test_multimodal_checkpoint_loads_its_language_model(multimodal, caplog):
    folder, tokens, ref_logits, ref_acts = multimodal
    hf = json.loads((folder / "config.json").read_text())
    assert hf["model_type"] == "gemma3" and "text_config" in hf
    names = set(load_file(folder / "model.safetensors"))
    assert "language_model.model.embed_tokens.weight" in names  # transformers 5.x saves this
    vision = {n for n in names if n.startswith(("vision_tower.", "multi_modal_projector."))}
    assert vision
    with caplog.at_level(logging.INFO):
        cfg, params = model.load_hf(folder)
    assert f"skipped {len(vision)} vision tower and projector tensors" in caplog.text
    assert isinstance(cfg, model.Gemma3Config) and cfg.eos_token_id == (1, 59)
    logits, acts = run(cfg, params, tokens, capture="*/*")
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)
    for site, ref in ref_acts.items():
        np.testing.assert_allclose(np.asarray(acts[site]), ref, atol=TOL, rtol=0, err_msg=site)


def test_multimodal_checkpoint_in_the_transformers_4_layout(multimodal, tmp_path):
    """Transformers 4.52+ saved the language model under model.language_model."""
    folder, tokens, ref_logits, _ = multimodal
    renamed = {}
    for name, value in load_file(folder / "model.safetensors").items():
        for old, new in (
            ("language_model.model.", "model.language_model."),
            ("vision_tower.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."),
        ):
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        renamed[name] = value
    assert "model.language_model.layers.0.self_attn.q_norm.weight" in renamed
    save_file(renamed, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    cfg, params = model.load_hf(tmp_path)
    logits, _ = run(cfg, params, tokens)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)


def test_multimodal_checkpoint_without_a_language_model_is_refused(multimodal, tmp_path):
    folder, *_ = multimodal
    tensors = load_file(folder / "model.safetensors")
    vision_only = {n: v for n, v in tensors.items() if not n.startswith("language_model.")}
    save_file(vision_only, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="multimodal Gemma 3 .* has no language model tensors"):
        model.load_hf(tmp_path)


def test_save_hf_of_a_gemma3_writes_a_text_only_folder_transformers_loads(multimodal, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder, tokens, ref_logits, _ = multimodal
    cfg, params = model.load_hf(folder, dtype=jnp.float32)
    model.save_hf(cfg, params, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gemma3_text"
    reloaded = transformers.Gemma3ForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits = reloaded(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits, ref_logits, atol=TOL, rtol=0)


def test_gemma3_loads_sharded_onto_a_mesh(hf_cases):
    from jax.sharding import Mesh, PartitionSpec

    case = hf_cases["g3_scaled"]  # 4 heads, 2 KV heads on a model axis of 4
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    cfg, params = model.load_hf(case.sharded_path, mesh=mesh)
    layer = params["layers"][1]
    assert layer["q"].sharding.spec == PartitionSpec(None, "model", None)
    assert layer["q_norm"].sharding.is_fully_replicated  # (head_dim,): replicated
    assert [name for name, _, _ in model.params.replicated_params(cfg, 4)][:2] == [
        "layers.0.k",
        "layers.0.v",
    ]
    logits, _ = run(cfg, params, case.tokens)
    np.testing.assert_allclose(np.asarray(logits), case.logits, atol=TOL, rtol=0)
