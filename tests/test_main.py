"""The command line: plan through the CLI, bad flags and a workdir holding another study."""

import json
import os
import subprocess
import sys

import pytest

from gemmascope import study
from gemmascope.study import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*flags):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "gemmascope", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_plan_through_the_cli():
    result = run_cli(
        "--config=experiments/gemma2_27b.py:arch=jumprelu+gated", "--mode=plan", "--plan_jobs"
    )
    assert result.returncode == 0, result.stderr
    assert "Plan for study 'gemma2_27b_pt': 6 jobs, 36 SAEs" in result.stdout
    assert (
        "resid_post-L22-w131072-gated" in result.stdout
        and "402.3 TiB over 3 sites" in result.stdout
    )
    # The weights are not on this machine: plan mode says so and still plans (from the preset).
    assert "model.path = 'gemma-2-27b': no such folder" in result.stdout


def test_plan_from_another_directory(tmp_path):
    # The experiment file imports experiments/common.py; absl's config_flags loads it by path,
    # and that must work whatever the current directory is.
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    config = os.path.join(REPO, "experiments", "gemma2_2b.py")
    result = subprocess.run(
        [sys.executable, "-m", "gemmascope", f"--config={config}:runlocal", "--mode=plan"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Plan for study 'gemma2_2b_pt_runlocal': 4 jobs, 12 SAEs" in result.stdout


def test_bad_override_through_the_cli():
    result = run_cli(
        "--config=experiments/gemma2_27b.py", "--mode=plan", "--config.train.batch_sz=3"
    )
    assert result.returncode != 0
    assert 'Did you mean "batch_size" instead of "batch_sz"?' in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_mode_is_a_flag_error():
    from gemmascope.study import main

    with pytest.raises(SystemExit, match="flag --mode=fly: value should be one of <plan|cache"):
        main.parse_flags(["main", "--config=experiments/gemma2_27b.py", "--mode=fly"])


def test_workdir_holding_another_study(tmp_path):
    _, config = study.load_config_file("experiments/gemma2_27b.py")
    stages.check_workdir_config(config, str(tmp_path))
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["name"] == "gemma2_27b_pt" and stored["train"]["batch_size"] == 4096
    assert stages.check_workdir_config(config, str(tmp_path)) == []  # the same study: accepted
    config.unlock()
    config.eval.n_sequences = 7  # evaluation settings may change
    config.cache.model_parallel = 8  # and how the LM is spread over devices
    assert stages.check_workdir_config(config, str(tmp_path)) == []

    # Once a job has trained, every study field is consumed: another value is refused.
    (tmp_path / "runs" / "resid_post-L10-w131072-jumprelu").mkdir(parents=True)
    (tmp_path / "runs" / "resid_post-L10-w131072-jumprelu" / "metrics.jsonl").write_text("")
    result = run_cli(
        "--config=experiments/gemma2_27b.py", f"--workdir={tmp_path}", "--mode=train",
        "--config.train.batch_size=8", "--config.model.dtype=float32",
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path} holds a different study" in result.stderr
    assert "model.dtype: workdir has 'bfloat16', this run has 'float32'" in result.stderr
    assert "train.batch_size: workdir has 4096, this run has 8 (used by its train stage)" in (
        result.stderr
    )


def test_run_rejects_bad_mode_and_missing_workdir():
    _, config = study.load_config_file("experiments/gemma2_27b.py")
    with pytest.raises(study.ConfigError, match="--mode=fly: unknown mode; valid modes: plan"):
        stages.run(config, "/tmp/x", "fly")
    with pytest.raises(study.ConfigError, match="--workdir is required for --mode=train"):
        stages.run(config, None, "train")
    with pytest.raises(
        study.ConfigError, match="--jobs 'nope-\\*' matches no job; valid jobs: resid_post-L10"
    ):
        stages.run(config, None, "plan", ["nope-*"])
    with pytest.raises(study.ConfigError, match="s3://bucket/study: unsupported URL scheme"):
        stages.run(config, "s3://bucket/study", "train")


def test_import_released_saes_and_evaluate_them(tmp_path):
    # A "released" SAE that reconstructs exactly (W_enc = [I, -I], W_dec = [I; -I], threshold 0:
    # x_hat = relu(x) - relu(-x) = x) must evaluate to FVU 0 and delta LM loss exactly 0.
    import numpy as np
    import pandas as pd

    _, config = study.load_config_file(os.path.join(REPO, "experiments/tiny_demo.py:runlocal"))
    d = study.model_config(config.model).hidden_size
    eye = np.eye(d, dtype=np.float32)
    release = tmp_path / "release" / "layer_0" / f"width_{2 * d}" / "average_l0_64"
    release.mkdir(parents=True)
    np.savez(
        release / "params.npz",
        W_enc=np.concatenate([eye, -eye], 1), W_dec=np.concatenate([eye, -eye], 0),
        b_enc=np.zeros(2 * d, np.float32), b_dec=np.zeros(d, np.float32),
        threshold=np.zeros(2 * d, np.float32),
    )  # fmt: skip
    workdir = tmp_path / "study"
    bad = [
        (["no-site"], "expected PATH@SITE"),
        ([f"{release}/params.npz@resid_post/99"], "Unknown site 'resid_post/99'"),
        ([f"{tmp_path}/missing.npz@resid_post/0"], "missing.npz does not exist"),
    ]
    for released, message in bad:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            stages.run(config, str(workdir), "eval", released=released)
        assert not (workdir / "saes").exists()  # nothing written before every entry is checked

    stages.run(config, str(workdir), "eval", released=[f"{release}/params.npz@resid_post/0"])
    table = pd.read_csv(workdir / "eval" / "saes.csv")
    assert table.sae.tolist() == [f"resid_post/layer_0/width_{2 * d}/gemmascope_average_l0_64"]
    row = table.iloc[0]
    assert row.source == "released" and row.site == "resid_post/0"
    assert row.delta_loss == 0.0 and row.kl_div == 0.0 and row.fvu == 0.0


def test_import_released_through_the_cli_flag():
    from gemmascope.study import main

    main.parse_flags(
        ["main", "--config=experiments/gemma2_27b.py", "--import_released=/a/params.npz@attn_z/3"]
    )
    assert main._IMPORT_RELEASED.value == ["/a/params.npz@attn_z/3"]
    assert stages.parse_released("gs://b/x@y/params.npz@mlp_out/2") == (
        "gs://b/x@y/params.npz",
        "mlp_out/2",
    )


def test_import_gemma_scope_2_folders_and_evaluate_them(tmp_path):
    # Hand-written Gemma Scope 2 folders (safetensors + config.json, as the release has them):
    # an SAE that reconstructs exactly (W_enc = [I, -I], W_dec = [I; -I], threshold 0) must
    # evaluate to FVU 0 and delta LM loss 0; a skip-transcoder whose output is 0 with exactly
    # 3 latents on per token (w_enc 0, b_enc 1 on three latents, -1 elsewhere) must be as bad as
    # zero-ablating mlp_out/1 (loss_recovered 0) with L0 exactly 3.
    import numpy as np
    import pandas as pd
    from safetensors.numpy import save_file

    _, config = study.load_config_file(os.path.join(REPO, "experiments/tiny_demo.py:runlocal"))
    d = study.model_config(config.model).hidden_size
    eye, zeros = np.eye(d, dtype=np.float32), np.zeros
    release = tmp_path / "gemma-scope-2-tiny-pt"
    sae_dir = release / "resid_post" / "layer_0_width_256_l0_medium"
    tc_dir = release / "transcoder_all" / "layer_1_width_16_l0_small_affine"
    b_enc = np.where(np.arange(16) < 3, 1.0, -1.0).astype(np.float32)
    folders = {
        sae_dir: (
            dict(w_enc=np.concatenate([eye, -eye], 1), w_dec=np.concatenate([eye, -eye], 0),
                 b_enc=zeros(2 * d, np.float32), b_dec=zeros(d, np.float32),
                 threshold=zeros(2 * d, np.float32)),
            {"hf_hook_point_in": "model.layers.0.output"},
        ),
        tc_dir: (
            dict(w_enc=zeros((d, 16), np.float32), w_dec=zeros((16, d), np.float32),
                 b_enc=b_enc, b_dec=zeros(d, np.float32), threshold=np.full(16, 0.5, np.float32),
                 affine_skip_connection=zeros((d, d), np.float32)),
            {"hf_hook_point_in": "model.layers.1.pre_feedforward_layernorm.output",
             "hf_hook_point_out": "model.layers.1.post_feedforward_layernorm.output",
             "affine_connection": True},
        ),
    }  # fmt: skip
    assert 2 * d == 256
    for folder, (tensors, hooks) in folders.items():
        folder.mkdir(parents=True)
        save_file(tensors, str(folder / "params.safetensors"))
        cfg = {"architecture": "jump_relu", "model_name": "tiny", "width": 16, **hooks}
        (folder / "config.json").write_text(json.dumps(cfg))
    workdir = tmp_path / "study"
    with pytest.raises(ValueError, match="hook of mlp_in/1, not mlp_out/1; give @mlp_in/1"):
        stages.run(config, str(workdir), "eval", released=[f"{tc_dir}@mlp_out/1"])
    assert not (workdir / "saes").exists()
    released = [f"{sae_dir}@resid_post/0", f"{tc_dir}/params.safetensors@mlp_in/1"]
    stages.run(config, str(workdir), "eval", released=released)
    table = pd.read_csv(workdir / "eval" / "saes.csv").set_index("sae")
    sae_row = table.loc["resid_post/layer_0/width_256/gemmascope2_l0_medium"]
    assert sae_row.fvu == 0.0 and sae_row.delta_loss == 0.0 and not sae_row.transcoder
    tc_row = table.loc["transcoder_affine/layer_1/width_16/gemmascope2_l0_small"]
    assert tc_row.transcoder and tc_row.target_site == "mlp_out/1" and tc_row.site == "mlp_in/1"
    assert tc_row.source == "released" and tc_row.l0 == 3.0
    assert abs(tc_row.loss_recovered) < 1e-5 and tc_row.delta_loss > 0


def test_a_transcoder_group_caches_trains_and_exports_through_the_stages(tmp_path):
    # The stages on one skip-transcoder job of the runlocal demo: the cache stage caches its
    # input and target, the train stage pairs the two caches (job.json's C_in and C_out are
    # those caches' scalars), export writes its folder and its Gemma Scope 2 folder. Then the
    # same job streamed from the LM (config.source = "stream"), checked against this cache.
    _, config = study.load_config_file(os.path.join(REPO, "experiments/tiny_demo.py:runlocal"))
    with config.unlocked():
        config.data.max_sequences = 16
        config.sites = ("resid_post/0", "mlp_in/1", "mlp_out/1")
        config.jobs.groups = {"tc": dict(sites=("mlp_in/1",), widths=(64,), total_tokens=512,
                                         transcoders=("affine",), archs=("jumprelu",))}  # fmt: skip
    workdir = tmp_path / "study"
    for mode in ("cache", "train", "export"):
        stages.run(config, str(workdir), mode, ["transcoder_affine-*"])
    meta = {s: json.loads((workdir / "activations" / s / "meta.json").read_text())
            for s in ("mlp_in/1", "mlp_out/1")}  # fmt: skip
    assert not (workdir / "activations" / "resid_post").exists()  # only the selected job's sites
    job = json.loads(
        (workdir / "runs" / "transcoder_affine-L1-w64-jumprelu" / "job.json").read_text()
    )
    assert (job["site"], job["target_site"], job["d_out"]) == ("mlp_in/1", "mlp_out/1", 128)
    assert job["norm_scale"] == meta["mlp_in/1"]["norm_scale"]
    assert job["target_norm_scale"] == meta["mlp_out/1"]["norm_scale"]
    assert job["norm_scale"] != job["target_norm_scale"]
    release = workdir / "gemma_scope_2" / "transcoder"
    assert sorted(p.name for p in release.iterdir()) == [
        f"layer_1_width_64_l0_{v}_affine" for v in (16, 32, 8)
    ]
    assert len(list((workdir / "saes" / "transcoder_affine" / "layer_1").glob("*/*"))) == 3
    _check_streamed_transcoder(config, workdir, tmp_path / "streamed")


def _check_streamed_transcoder(config, cached, streamed):
    """The train stage on two streams of the LM: it trains, on the cached pairs of its tokens.

    Oracle: the cache of the same study. Every streamed (input, target) row, in raw units, is
    the (mlp_in, mlp_out) pair of one cached token.
    """
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from gemmascope.study import jobs

    stream_config = config.copy_and_resolve_references()
    stream_config.source = "stream"
    stages.run(stream_config, str(streamed), "train", ["transcoder_affine-*"])
    assert not (streamed / "activations").exists()
    run = streamed / "runs" / "transcoder_affine-L1-w64-jumprelu"
    job_json = json.loads((run / "job.json").read_text())
    assert (job_json["target_site"], job_json["d_out"]) == ("mlp_out/1", 128)
    assert job_json["tokens_trained"] == 512
    with np.load(run / "final_params.npz", allow_pickle=False) as params:
        assert all(np.isfinite(params[name]).all() for name in params.files)
        assert np.abs(params["W_skip"]).max() > 1e-3  # the skip term (zero at init) trained

    (job,) = jobs.expand(config, study.model_config(config.model))
    cache_source, stream_source = (
        stages._job_source(stages._source_opener(cfg, str(workdir)), job)
        for cfg, workdir in ((config, cached), (stream_config, streamed))
    )
    assert job_json["norm_scale"] == stream_source.norm_scale
    assert job_json["target_norm_scale"] == stream_source.target_norm_scale
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data", None))

    def raw_pairs(source, n_tokens):
        """The source's first n_tokens (input, target) rows in raw units (x·C_in, y·C_out)."""
        xs, ys = [], []
        for x, y in source.iter_batches(64, sharding):
            xs.append(np.asarray(x) * source.norm_scale)
            ys.append(np.asarray(y) * source.target_norm_scale)
            if 64 * len(xs) >= n_tokens:
                break
        return np.concatenate(xs)[:n_tokens], np.concatenate(ys)[:n_tokens]

    every_x, every_y = raw_pairs(cache_source, cache_source.n_tokens)  # one epoch
    stream_x, stream_y = raw_pairs(stream_source, 256)
    assert len(np.unique(stream_x[:, 0])) > 200  # 256 different tokens, not one repeated row
    token = np.argmin(np.sum((stream_x[:, None] - every_x[None]) ** 2, axis=-1), axis=1)
    np.testing.assert_allclose(stream_x, every_x[token], rtol=1e-4, atol=1e-4)
    # mlp_out is a function of mlp_in: a target from another token than its input would differ.
    np.testing.assert_allclose(stream_y, every_y[token], rtol=1e-4, atol=1e-4)
