"""export_run on a faked finished training job, and import_released of a Gemma Scope file.

The acceptance oracle: encodings of raw activations through the exported params.npz equal C x the
architecture's own training-time encodings of the normalised activations
(docs/recipe.md#normalisation).
"""

import json
import os

import fake_training_run
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import export, model, sae
from gemmascope.eval import metrics

D, WIDTH, C = 16, 32, 7.5
SITE = "resid_post/1"


def fake_run(workdir, arch_name, sweep_values, seeds=(0,), overrides=None):
    return fake_training_run.fake_run(
        workdir,
        arch_name,
        sweep_values,
        d_in=D,
        width=WIDTH,
        site=SITE,
        norm_scale=C,
        seeds=seeds,
        overrides=overrides,
    )


@pytest.mark.parametrize(
    "arch_name,sweep_values", [("jumprelu", [6e-4, 1e-3]), ("gated", [1e-2]), ("batchtopk", [4, 8])]
)
def test_exported_npz_encodes_raw_inputs_as_c_times_training_encodings(
    tmp_path, arch_name, sweep_values
):
    name, cfg, field, members = fake_run(str(tmp_path), arch_name, sweep_values)
    folders = export.export_run(str(tmp_path), name)
    assert len(folders) == len(sweep_values)
    arch = sae.ARCHITECTURES[arch_name]
    x_raw = np.random.default_rng(1).normal(size=(64, D)).astype(np.float32) * C / np.sqrt(D)
    for folder, value, params in zip(folders, sweep_values, members, strict=True):
        tag = export.sweep_tag(field, value)
        assert folder == export.sae_dir(str(tmp_path), SITE, WIDTH, arch_name, tag)
        npz = export.load_npz(os.path.join(folder, "params.npz"), d_in=D, width=WIDTH)
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        assert config["site"] == SITE and config["layer"] == 1 and config["kind"] == "resid_post"
        assert config["sweep_value"] == value and config["norm_scale"] == C
        assert config["tokens_trained"] == 4096 and config["architecture"] == arch_name
        member_cfg = cfg.copy_and_resolve_references()
        member_cfg[field] = value
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        f_train = np.asarray(arch.encode(jparams, jnp.asarray(x_raw / C), member_cfg))
        x_hat_train = np.asarray(arch.decode(jparams, jnp.asarray(f_train), member_cfg))
        raw = {k: jnp.asarray(v) for k, v in npz.items()}
        f_raw = np.asarray(metrics.encode_released(raw, jnp.asarray(x_raw)))
        assert 0 < np.mean(f_train > 0) < 1  # some latents fire, some do not
        np.testing.assert_array_equal(f_raw > 0, f_train > 0)
        np.testing.assert_allclose(f_raw, C * f_train, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(metrics.decode_released(raw, jnp.asarray(f_raw))),
            C * x_hat_train,
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.parametrize("unit_norm_decoder", [True, False])
def test_topk_exports_with_a_per_token_k_rule(tmp_path, unit_norm_decoder):
    """TopK's k rule, with a unit-norm decoder and with a free one (short_run's).

    A free decoder's row norms must not move into the encoder, where they would change which k
    latents are the largest.
    """
    overrides = dict(unit_norm_decoder=unit_norm_decoder, decoder_init_norm=1.0)
    name, cfg, _, members = fake_run(str(tmp_path), "topk", [3], overrides=overrides)
    (folder,) = export.export_run(str(tmp_path), name)
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["encoder"] == {"type": "topk", "k": 3}
    npz = {
        k: jnp.asarray(v) for k, v in export.load_npz(os.path.join(folder, "params.npz")).items()
    }
    x_raw = np.random.default_rng(2).normal(size=(16, D)).astype(np.float32) * C
    cfg.k = 3
    arch = sae.ARCHITECTURES["topk"]
    f_train = np.asarray(
        arch.encode({k: jnp.asarray(v) for k, v in members[0].items()}, jnp.asarray(x_raw / C), cfg)
    )
    f_raw = np.asarray(metrics.topk_encode_released(npz, jnp.asarray(x_raw), 3, 3))
    np.testing.assert_allclose(f_raw, C * f_train, rtol=1e-4, atol=1e-5)
    assert np.all(np.sum(f_raw > 0, -1) <= 3)
    x_hat_train = arch.decode(
        {k: jnp.asarray(v) for k, v in members[0].items()}, jnp.asarray(f_train), cfg
    )
    np.testing.assert_allclose(
        np.asarray(metrics.decode_released(npz, jnp.asarray(f_raw))),
        C * np.asarray(x_hat_train),
        rtol=1e-4,
        atol=1e-4,
    )


def test_several_seeds_get_distinct_folders(tmp_path):
    name, *_ = fake_run(str(tmp_path), "jumprelu", [1e-3], seeds=(0, 1))
    folders = export.export_run(str(tmp_path), name)
    assert [os.path.basename(f) for f in folders] == [
        "jumprelu_lambda_1e-03_seed0",
        "jumprelu_lambda_1e-03_seed1",
    ]


def test_export_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="train job 'nope' to completion"):
        export.export_run(str(tmp_path), "nope")
    name, *_ = fake_run(str(tmp_path), "jumprelu", [1e-3, 2e-3])
    params_path = os.path.join(tmp_path, "runs", name, "final_params.npz")
    with np.load(params_path) as npz:
        truncated = {k: npz[k][:1] for k in npz.files}
    np.savez(params_path, **truncated)
    with pytest.raises(ValueError, match="leading sweep axis of 2"):
        export.export_run(str(tmp_path), name)
    # job.json is the trainer's: a file without its members is refused, not guessed at.
    job_path = os.path.join(tmp_path, "runs", name, "job.json")
    with open(job_path) as f:
        job = json.load(f)
    del job["members"]
    with open(job_path, "w") as f:
        json.dump(job, f)
    with pytest.raises(ValueError, match=r"missing field\(s\) \['members'\]"):
        export.export_run(str(tmp_path), name)


@pytest.mark.parametrize("arch_name", ["batchtopk", "matryoshka"])
def test_a_threshold_never_estimated_is_refused_not_exported_as_a_relu(tmp_path, arch_name):
    name, *_ = fake_run(str(tmp_path), arch_name, [4, 8])
    run_dir = os.path.join(tmp_path, "runs", name)
    with np.load(os.path.join(run_dir, "final_params.npz")) as npz:
        params = {k: npz[k] for k in npz.files}
    params["running_threshold"][1] = -1.0  # member 1 stopped before threshold_start_step
    np.savez(os.path.join(run_dir, "final_params.npz"), **params)
    with open(os.path.join(run_dir, "job.json")) as f:
        job = json.load(f)
    job["steps"] = 300
    with open(os.path.join(run_dir, "job.json"), "w") as f:
        json.dump(job, f)
    message = (
        rf"job '{name}' trained 300 steps, .*sae.threshold_start_step = 1000 on, so member\(s\) "
        r"\[1\] never got one .*plain ReLU"
    )
    with pytest.raises(ValueError, match=message):
        export.export_run(str(tmp_path), name)
    assert not os.path.exists(os.path.join(tmp_path, "saes"))  # nothing half-exported


def test_import_released_places_a_checked_copy(tmp_path):
    cfg = model.presets.tiny()
    rng = np.random.default_rng(0)
    d, m = cfg.hidden_size, 48
    released = tmp_path / "gemma-scope" / "layer_1" / "width_16k" / "average_l0_71"
    released.mkdir(parents=True)
    params = {
        "W_enc": rng.normal(size=(d, m)),
        "W_dec": rng.normal(size=(m, d)),
        "b_enc": rng.normal(size=m),
        "b_dec": rng.normal(size=d),
        "threshold": rng.uniform(size=m),
    }
    np.savez(released / "params.npz", **params)
    workdir = tmp_path / "work"
    folder = export.import_released(
        str(released / "params.npz"), str(workdir), SITE, model_cfg=cfg, model="google/gemma-2-2b"
    )
    assert folder == export.sae_dir(str(workdir), SITE, m, "gemmascope", "average_l0_71")
    loaded = export.load_npz(os.path.join(folder, "params.npz"), model_cfg=cfg, site=SITE)
    np.testing.assert_array_equal(loaded["W_enc"], params["W_enc"].astype(np.float32))
    [(found, config)] = export.list_saes(str(workdir))
    assert found == folder and config["source"] == "released" and config["d_in"] == d
    # The wrong site width is refused before anything is written.
    with pytest.raises(ValueError, match="d_in is 64 .* site needs 32"):
        export.import_released(
            str(released / "params.npz"),
            str(tmp_path / "w2"),
            "attn_z/1",
            model_cfg=model.presets.tiny(head_dim=8, query_pre_attn_scalar=8),
        )
    assert not (tmp_path / "w2").exists()
