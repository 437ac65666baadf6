"""Every exported or imported SAE also as SAELens's folder: cfg.json + sae_weights.safetensors.

SAELens itself is not a test dependency: tools/saelens_roundtrip.py loads these folders with
SAELens (in its own virtualenv) and compares its encodings with ours. Here the files are checked
against the format of sae-lens 6.54.12 (keys, shapes, architecture, hook names) and an encoder
written from SAELens's JumpReLU/TopK definitions in numpy (apply_b_dec_to_input false, no
normalisation) must reproduce our released-form encoder on the params.npz.
"""

import json
import os

import fake_training_run
import numpy as np
import pytest
from safetensors.numpy import load_file

from gemmascope import export, files
from gemmascope.eval import metrics
from gemmascope.export import saelens_format

D, WIDTH = 16, 32


def _saelens(folder):
    with open(os.path.join(folder, "saelens", "cfg.json")) as f:
        cfg = json.load(f)
    return cfg, load_file(os.path.join(folder, "saelens", "sae_weights.safetensors"))


def _saelens_encode(cfg, weights, x):
    """SAELens 6.54's encode for our configs, in numpy.

    ``(x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``, then JumpReLU (pre > threshold) or
    TopK (the top k of pre, relu).
    """
    x = x - weights["b_dec"] * cfg["apply_b_dec_to_input"]
    pre = x.astype(np.float64) @ weights["W_enc"] + weights["b_enc"]
    if cfg["architecture"] == "topk":
        top = np.argsort(-pre, axis=-1)[:, : cfg["k"]]
        f = np.zeros_like(pre)
        np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, -1), 0), -1)
        return f
    return np.maximum(pre, 0) * (pre > weights["threshold"])


@pytest.mark.parametrize(
    "arch_name,values", [("jumprelu", [1e-3]), ("gated", [0.1]), ("topk", [4])]
)
def test_exported_saes_have_a_saelens_folder_that_encodes_as_ours(tmp_path, arch_name, values):
    workdir = str(tmp_path)
    files.write_json(
        os.path.join(workdir, "config.json"), {"data": {"seq_len": 128, "corpus": "c"}}
    )
    name, *_ = fake_training_run.fake_run(
        workdir, arch_name, values, d_in=D, width=WIDTH, site="mlp_out/3", norm_scale=4.0
    )
    (folder,) = export.export_run(workdir, name)
    cfg, weights = _saelens(folder)
    params = export.load_npz(os.path.join(folder, "params.npz"))
    topk = arch_name == "topk"
    expected_keys = {"W_enc", "W_dec", "b_enc", "b_dec"} | (set() if topk else {"threshold"})
    assert set(weights) == expected_keys
    for key in expected_keys:
        assert weights[key].dtype == np.float32
        np.testing.assert_array_equal(weights[key], params[key])
    assert cfg["architecture"] == ("topk" if topk else "jumprelu")
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D, WIDTH, "float32")
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    assert cfg["reshape_activations"] == "none"
    meta = cfg["metadata"]
    assert meta["sae_lens_version"] == saelens_format.SAELENS_VERSION == "6.54.12"
    assert meta["hook_name"] == "blocks.3.hook_mlp_out" and meta["model_name"] == "tiny"
    assert (meta["context_size"], meta["dataset_path"]) == (128, "c")  # from workdir/config.json
    if topk:
        assert (cfg["k"], cfg["rescale_acts_by_decoder_norm"]) == (4, False)
    x = np.random.default_rng(0).normal(size=(64, D)).astype(np.float32) * 4.0
    ours = (
        metrics.topk_encode_released(params, x, 4, 4)
        if topk
        else metrics.encode_released(params, x)
    )
    theirs = _saelens_encode(cfg, weights, x)
    assert 0 < (theirs > 0).sum() < theirs.size  # some latents fire, not all
    np.testing.assert_allclose(theirs, np.asarray(ours), rtol=1e-5, atol=1e-5)


def test_imported_release_at_attn_z_is_a_hook_z_saelens_sae(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "average_l0_9" / "params.npz"
    npz.parent.mkdir()
    np.savez(
        npz,
        W_enc=rng.normal(size=(D, WIDTH)),
        W_dec=rng.normal(size=(WIDTH, D)),
        b_enc=np.zeros(WIDTH),
        b_dec=np.zeros(D),
        threshold=np.ones(WIDTH),
    )
    folder = export.import_released(
        str(npz), str(tmp_path / "work"), "attn_z/2", d_in=D, model="google/gemma-2-2b"
    )
    cfg, weights = _saelens(folder)
    assert cfg["reshape_activations"] == "hook_z" and cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["hook_name"] == "blocks.2.attn.hook_z"
    assert cfg["metadata"]["model_name"] == "gemma-2-2b"
    assert cfg["metadata"]["context_size"] is None  # unknown for a released SAE
    np.testing.assert_array_equal(weights["threshold"], np.ones(WIDTH, np.float32))


def test_hook_names_follow_transformer_lens():
    assert saelens_format.hook_name("resid_post/0") == "blocks.0.hook_resid_post"
    assert saelens_format.hook_name("mlp_out/25") == "blocks.25.hook_mlp_out"
    assert saelens_format.hook_name("attn_z/7") == "blocks.7.attn.hook_z"
    assert saelens_format.hook_name("mlp_in/7") is None  # no TransformerLens hook computes it
    with pytest.raises(ValueError, match="must look like"):
        saelens_format.hook_name("resid_post")
