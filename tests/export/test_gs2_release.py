"""Gemma Scope 2's release format: export, import, hand-written folders and bad ones.

Oracles: the release's rule applied in numpy to tensors read back with the safetensors library
(an independent reader), f = relu(π)·[π > θ] with π = x w_enc + b_enc and y = f w_dec + b_dec
(+ x affine_skip_connection); Gemma Scope 2's hook-point names as SAELens's tests spell them.
"""

import json
import os
import struct

import fake_training_run
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gemmascope import export
from gemmascope.eval import metrics
from gemmascope.eval.sweep_eval import SaeEntry
from gemmascope.export import gs2_format, gs2_release

D_IN, D_OUT, WIDTH = 8, 6, 16


def _numpy_release(tensors, x):
    """Latents and output of a Gemma Scope 2 folder's tensors on raw x, in float64."""
    x = x.astype(np.float64)
    pre = x @ tensors["w_enc"] + tensors["b_enc"]
    f = np.where(pre > tensors["threshold"], np.maximum(pre, 0.0), 0.0)
    y = f @ tensors["w_dec"] + tensors["b_dec"]
    if "affine_skip_connection" in tensors:
        y = y + x @ tensors["affine_skip_connection"]
    return f, y


def _trained(workdir, kind):
    """A finished fake job of one kind, exported: (our folder, its Gemma Scope 2 folder, site)."""
    if kind == "sae":
        name, *_ = fake_training_run.fake_run(
            workdir, "jumprelu", [1e-3], d_in=D_IN, width=WIDTH, site="resid_post/1",
            norm_scale=2.0,
        )  # fmt: skip
        relative, site = "resid_post/layer_1_width_16_lambda_1e-03", "resid_post/1"
    else:
        skip = kind == "skip_transcoder"
        name, _ = fake_training_run.fake_transcoder_run(
            workdir, "jumprelu", skip, d_in=D_IN, d_out=D_OUT, width=WIDTH, c_in=3.0, c_out=0.5
        )
        relative = "transcoder/layer_1_width_16_lambda_1e-03" + ("_affine" if skip else "")
        site = "mlp_in/1"
    (folder,) = export.export_run(workdir, name)
    return folder, os.path.join(workdir, "gemma_scope_2", relative), site


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_export_then_import_gives_identical_encodings_and_outputs(tmp_path, kind):
    folder, release, site = _trained(str(tmp_path / "a"), kind)
    tensors = load_file(os.path.join(release, "params.safetensors"))
    config = json.loads(open(os.path.join(release, "config.json")).read())
    layer_hooks = {
        "sae": ("model.layers.1.output", None),
        "transcoder": (
            "model.layers.1.pre_feedforward_layernorm.output",
            "model.layers.1.post_feedforward_layernorm.output",
        ),
    }
    hook_in, hook_out = layer_hooks["sae" if kind == "sae" else "transcoder"]
    assert config["architecture"] == "jump_relu" and config["hf_hook_point_in"] == hook_in
    assert config.get("hf_hook_point_out") == hook_out
    assert config["affine_connection"] == (kind == "skip_transcoder")
    names = {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"}
    if kind == "skip_transcoder":
        names.add("affine_skip_connection")
    assert set(tensors) == names
    d_out = D_IN if kind == "sae" else D_OUT
    assert tensors["w_enc"].shape == (D_IN, WIDTH) and tensors["w_dec"].shape == (WIDTH, d_out)

    imported = export.import_released(release, str(tmp_path / "b"), site, d_in=D_IN)
    exported, back = SaeEntry.load(folder), SaeEntry.load(imported)
    assert back.config["source"] == "released" and back.target_site == exported.target_site
    assert back.config["kind"] == exported.config["kind"]
    x = np.random.default_rng(3).normal(size=(64, D_IN)).astype(np.float32) * 3
    f_np, y_np = _numpy_release(tensors, x)
    assert 0 < np.count_nonzero(f_np) < f_np.size  # some latents fire, not all
    results = []
    for entry in (exported, back):
        f = np.asarray(metrics.encode_released(entry.params, x))
        y = np.asarray(metrics.decode_released(entry.params, f, x))
        np.testing.assert_allclose(f, f_np, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5)
        results.append((f, y))
    np.testing.assert_array_equal(results[0][0], results[1][0])  # identical, bit for bit
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_hook_points_folder_names_and_labels_are_gemma_scope_2s():
    assert gs2_format.hf_hook_point("resid_post/12") == "model.layers.12.output"
    assert gs2_format.hf_hook_point("attn_z/3") == "model.layers.3.self_attn.o_proj.input"
    assert gs2_format.hf_hook_point("mlp_out/17") == (
        "model.layers.17.post_feedforward_layernorm.output"
    )
    assert gs2_format.hf_hook_point("mlp_in/5") == "model.layers.5.pre_feedforward_layernorm.output"
    for site in ("resid_post/12", "attn_z/3", "mlp_out/17", "mlp_in/5"):
        assert gs2_format.site_of_hook(gs2_format.hf_hook_point(site)) == site
    with pytest.raises(ValueError, match=r"model.layers.3.mlp.output' is unknown; valid: \["):
        gs2_format.site_of_hook("model.layers.3.mlp.output")
    assert gs2_format.folder_name("resid_post/12", 2**14, "l0_medium") == (
        "resid_post/layer_12_width_16k_l0_medium"
    )
    assert gs2_format.folder_name("attn_z/11", 2**14, "l0_small") == (
        "attn_out/layer_11_width_16k_l0_small"
    )
    assert gs2_format.folder_name(
        "mlp_in/3", 2**18, "l0_big", target_site="mlp_out/3", affine=True
    ) == ("transcoder/layer_3_width_262k_l0_big_affine")
    with pytest.raises(ValueError, match="releases SAEs of"):
        gs2_format.folder_name("mlp_in/3", 2**14, "l0_big")
    # The Gemma Scope 2 study's target L0s {128, 48, 16} get the labels; the demo's do not.
    members = [{"sweep_value": v, "seed": 0} for v in (128.0, 48.0, 16.0)]
    job = {"site": "mlp_in/3", "target_site": "mlp_out/3", "sweep_field": "target_l0"}
    assert gs2_release.release_tags(job, "jumprelu", members, False) == [
        "l0_big",
        "l0_medium",
        "l0_small",
    ]
    members = [{"sweep_value": v, "seed": 0} for v in (32.0, 16.0, 8.0)]
    assert gs2_release.release_tags(job, "jumprelu", members, False) == [
        "l0_32",
        "l0_16",
        "l0_8",
    ]
    assert gs2_release.release_tags({**job, "site": "mlp_in/3", "target_site": None}, "jumprelu",
                                    members, False) is None  # fmt: skip
    assert gs2_format.release_tag("/x/transcoder_all/layer_3_width_16k_l0_small_affine") == (
        "l0_small"
    )


def _write_folder(folder, tensors, config):
    os.makedirs(folder)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              os.path.join(folder, "params.safetensors"))  # fmt: skip
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def _good(rng, d_in=D_IN, d_out=D_OUT, affine=True):
    tensors = {
        "w_enc": rng.normal(size=(d_in, WIDTH)),
        "w_dec": rng.normal(size=(WIDTH, d_out)),
        "b_enc": rng.normal(size=WIDTH),
        "b_dec": rng.normal(size=d_out),
        "threshold": rng.uniform(size=WIDTH),
    }
    if affine:
        tensors["affine_skip_connection"] = rng.normal(size=(d_in, d_out))
    config = {
        "architecture": "jump_relu",
        "model_name": "google/gemma-3-270m-pt",
        "hf_hook_point_in": "model.layers.2.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.2.post_feedforward_layernorm.output",
        "affine_connection": affine,
        "width": WIDTH,
        "l0": 12,
    }
    return tensors, config


def test_bad_folders_are_refused_naming_the_file_and_what_is_valid(tmp_path):
    rng = np.random.default_rng(0)
    tensors, config = _good(rng)
    cases = [
        ("missing", lambda t, c: t.pop("threshold"), r"params.safetensors: missing tensor\(s\) "
         r"\['threshold'\]; a release holds \['w_enc', 'w_dec', 'b_enc', 'b_dec', 'threshold', "
         r"'affine_skip_connection'\]"),
        ("shape", lambda t, c: t.update(b_dec=np.zeros(D_OUT + 1)), r"params.safetensors: b_dec "
         r"has shape \(7,\), expected \(6,\) \(from w_enc \(8, 16\): d_in=8, d_sae=16, d_out=6\)"),
        ("arch", lambda t, c: c.update(architecture="topk"), r"config.json: architecture 'topk' "
         r"is not supported; valid: 'jump_relu'"),
        ("hook", lambda t, c: c.update(hf_hook_point_in="blocks.2.hook_resid_post"),
         r"config.json: hf_hook_point_in: hook point 'blocks.2.hook_resid_post' is unknown; "
         r"valid: \['model.layers.L.output'"),
        ("affine", lambda t, c: c.update(affine_connection=False),
         "affine_connection is False but params.safetensors has affine_skip_connection"),
        ("extra", lambda t, c: t.update(W_enc=np.zeros(2)), r"unexpected tensor\(s\) \['W_enc'\]"),
    ]  # fmt: skip
    for name, damage, message in cases:
        t, c = dict(tensors), dict(config)
        damage(t, c)
        folder = str(tmp_path / name / "layer_2_width_16_l0_small_affine")
        _write_folder(folder, t, c)
        with pytest.raises(ValueError, match=message):
            export.import_released(folder, str(tmp_path / "w"), "mlp_in/2", d_in=D_IN)
        assert not (tmp_path / "w").exists()  # nothing written
    folder = str(tmp_path / "nocfg")
    _write_folder(folder, tensors, config)
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(FileNotFoundError, match="nocfg/config.json: no such file"):
        export.import_released(folder, str(tmp_path / "w"), "mlp_in/2", d_in=D_IN)
    # A folder of another site than the one named.
    folder = str(tmp_path / "ok" / "layer_2_width_16_l0_small_affine")
    _write_folder(folder, tensors, config)
    with pytest.raises(ValueError, match="hook of mlp_in/2, but the import names site mlp_in/3"):
        export.import_released(folder, str(tmp_path / "w"), "mlp_in/3", d_in=D_IN)


def test_bfloat16_tensors_read_as_float32(tmp_path):
    # A hand-made safetensors file with BF16 tensors (numpy has no bfloat16 to write them with):
    # values exactly representable in bfloat16 must come back exactly.
    rng = np.random.default_rng(1)
    tensors, config = _good(rng, affine=False)
    exact = {k: (np.asarray(v, np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
             for k, v in tensors.items()}  # fmt: skip
    header, blobs, offset = {}, [], 0
    for name, value in exact.items():
        blob = (value.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(blob)]}  # fmt: skip
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    folder = tmp_path / "layer_2_width_16_l0_small"
    folder.mkdir()
    (folder / "params.safetensors").write_bytes(
        struct.pack("<Q", len(text)) + text + b"".join(blobs)
    )
    (folder / "config.json").write_text(json.dumps(config))
    params, info = gs2_format.read_release(str(folder))
    assert info.site == "mlp_in/2" and info.target_site == "mlp_out/2" and not info.affine
    assert (info.d_in, info.width, info.d_out, info.tag) == (D_IN, WIDTH, D_OUT, "l0_small")
    np.testing.assert_array_equal(params["W_enc"], exact["w_enc"])
    np.testing.assert_array_equal(params["threshold"], exact["threshold"])
