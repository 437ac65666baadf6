"""End-to-end tests of `train.train_sweep` against independent oracles.

Oracles: the same job on one device (sharding must not change the numbers), S separate
single-SAE runs (stacking must not either), an uninterrupted run (preemption + resume), one
process with 8 devices (two processes with 4 each), and hand-built inputs for the error paths.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from job_runner import tiny_activations, tiny_job

import gemmascope.mesh
from gemmascope import activations, train
from gemmascope.train import step as step_lib

RUNNER = Path(__file__).with_name("job_runner.py")
REPO = Path(__file__).resolve().parents[2]


def _source():
    return activations.ArraySource(tiny_activations(), seed=1)


def _load_npz(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny job, uninterrupted, in this process on a (2, 4) mesh of the 8 CPU devices."""
    workdir = tmp_path_factory.mktemp("reference")
    return train.train_sweep(tiny_job(), _source(), workdir)


def _run_child(args, extra_env=None, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(extra_env or {}))
    return subprocess.Popen(
        [sys.executable, str(RUNNER), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


def test_reference_run_writes_the_exporter_contract(reference):
    run_dir = reference.run_dir
    assert reference.steps == 24 and reference.tokens_trained == 24 * 64
    assert not reference.preempted
    params = _load_npz(run_dir / "final_params.npz")
    assert set(params) == set(reference.params)
    assert params["W_enc"].shape == (2, 16, 32) and params["W_dec"].shape == (2, 32, 16)
    for name, value in params.items():
        np.testing.assert_array_equal(value, reference.params[name])
    job = json.loads((run_dir / "job.json").read_text())
    assert job["d_in"] == 16 and job["tokens_trained"] == 24 * 64
    assert job["norm_scale"] == pytest.approx(_source().norm_scale)
    assert (job["site"], job["model"], job["arch"]) == ("resid_post/0", "synthetic", "jumprelu")
    assert job["sweep_field"] == "sparsity_coeff" and job["sweep_values"] == [1e-4, 3e-3]
    assert job["sae"]["matmul_precision"] == "highest"  # recorded: full fp32 unless configured
    # Decoder rows stay unit norm, and the two members really trained differently.
    np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=-1), 1.0, rtol=1e-5)
    assert not np.allclose(params["threshold"][0], params["threshold"][1])
    # One metrics line per logged step, every member in each.
    history = reference.history
    assert [h["step"] for h in history] == [4, 8, 12, 16, 20, 24]
    for key in ("recon_loss", "sparsity_loss", "l0", "fvu", "frac_dead", "lr", "sparsity_coeff"):
        assert all(len(h[key]) == 2 for h in history), key
    assert history[-1]["sparsity_coeff"] == pytest.approx([1e-4, 3e-3])
    assert history[-1]["lr"] == pytest.approx([1e-2, 1e-2])
    assert list((run_dir / "tensorboard").iterdir())


def test_one_device_matches_the_sharded_mesh(reference, tmp_path):
    cfg = tiny_job(mesh=(("data", 1), ("model", 1)))
    single = train.train_sweep(cfg, _source(), tmp_path, devices=jax.devices()[:1])
    for name, value in reference.params.items():
        np.testing.assert_allclose(single.params[name], value, rtol=2e-5, atol=2e-6, err_msg=name)


def test_blocks_of_tokens_match_the_whole_batch(reference, tmp_path):
    cfg = tiny_job()
    cfg.block_tokens = 16  # 4 strided blocks of each batch, on the (2, 4) mesh
    mesh = gemmascope.mesh.make_mesh(cfg.mesh)
    assert train.loop.job_shape(cfg, 16, mesh).block_tokens == 16
    assert train.loop.job_shape(tiny_job(), 16, mesh).block_tokens == 0  # the reference's
    blocked = train.train_sweep(cfg, _source(), tmp_path)
    for name, value in reference.params.items():
        np.testing.assert_allclose(blocked.params[name], value, rtol=2e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("members_per_pass", [0, 1])
def test_latent_axis_is_sharded_on_model(tmp_path, members_per_pass):
    cfg = tiny_job()
    sae_cfg = train.loop.resolve_sae_config(cfg, train.config.get_architecture("jumprelu"))
    shape = step_lib.JobShape(
        arch="jumprelu",
        sae_cfg=sae_cfg,
        d_in=16,
        width=32,
        n_members=2,
        batch_size=64,
        dead_window=4,
        sweep_dtype="float32",
        mesh=gemmascope.mesh.make_mesh(cfg.mesh),
        members_per_pass=members_per_pass,
    )
    fns = step_lib.compiled_functions(shape)
    state = fns.init(np.array([0, 1], np.int32), np.array([1e-4, 1e-3], np.float32))
    batch = next(_source().iter_batches(64, fns.batch_sharding))
    state, _ = fns.train_step(state, batch)
    expected = {
        "W_enc": (2, 16, 8),
        "W_dec": (2, 8, 16),
        "b_enc": (2, 8),
        "threshold": (2, 8),
        "b_dec": (2, 16),
    }
    for name, shape in expected.items():
        shards = state["params"][name].addressable_shards
        assert len(shards) == 8 and {s.data.shape for s in shards} == {shape}, name
    adam = [leaf for leaf in jax.tree.leaves(state["opt"]) if leaf.shape == (2, 16, 32)]
    assert adam and all(s.data.shape == (2, 16, 8) for a in adam for s in a.addressable_shards)
    assert {s.data.shape for s in state["last_fired"].addressable_shards} == {(2, 8)}
    assert {s.data.shape for s in batch.addressable_shards} == {(32, 16)}


@pytest.mark.parametrize("members_per_pass", [0, 1])  # all vmapped at once / one by one
def test_stacked_sweep_equals_separate_runs(tmp_path, members_per_pass):
    values = [1e-4, 1e-3, 3e-3, 1e-2]
    stacked_cfg = tiny_job("stacked", 6, values, ckpt_steps=6)
    stacked_cfg.members_per_pass = members_per_pass
    stacked = train.train_sweep(stacked_cfg, _source(), tmp_path)
    for member, value in enumerate(values):
        alone_cfg = tiny_job(f"alone{member}", 6, [value], ckpt_steps=6)
        alone = train.train_sweep(alone_cfg, _source(), tmp_path)
        for name, stacked_value in stacked.params.items():
            np.testing.assert_allclose(
                alone.params[name][0],
                stacked_value[member],
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"member {member} {name}",
            )


def test_jobs_of_one_shape_share_one_compilation(tmp_path):
    before = len(step_lib._CACHE)
    train.train_sweep(tiny_job("a", 4, [1e-3, 2e-3], ckpt_steps=4), _source(), tmp_path)
    after_first = len(step_lib._CACHE)
    train.train_sweep(tiny_job("b", 4, [5e-3, 7e-3], ckpt_steps=4), _source(), tmp_path)
    assert len(step_lib._CACHE) == after_first <= before + 1


def test_sigterm_then_rerun_equals_uninterrupted(reference, tmp_path):
    marker = tmp_path / "reached"
    child = _run_child([str(tmp_path), "--slow-after", "6", str(marker)])
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert child.poll() is None, child.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "child never reached batch 6"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    first = _finish(child)
    assert first["preempted"] and 6 <= first["steps"] < 24
    run_dir = tmp_path / "runs" / "tiny"
    assert not (run_dir / "final_params.npz").exists()
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == first["steps"]

    # The same call again (here in-process: same devices, same compiled program as `reference`).
    second = train.train_sweep(tiny_job(), _source(), tmp_path)
    assert not second.preempted and second.steps == 24
    resumed = _load_npz(run_dir / "final_params.npz")
    for name, value in reference.params.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)  # bitwise on CPU
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [h["step"] for h in reference.history]
    assert [h["loss"] for h in history] == [h["loss"] for h in reference.history]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "service", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["service", "gather"]
)
def test_two_processes_stop_together_on_one_sigterm_and_resume(reference, tmp_path, service):
    # Two processes of four devices; SIGTERM reaches process 1 only. JAX's preemption service
    # makes both save and stop at the same step, without a per-step collective (without the
    # service, the flags are gathered at log and checkpoint steps only); the checkpoint's global
    # arrays then resume in this one process of eight devices.
    env = {"JAX_ENABLE_PREEMPTION_SERVICE": str(service).lower()}
    port = _free_port()
    markers = [tmp_path / f"reached{i}" for i in (0, 1)]
    children = [
        _run_child(
            [str(tmp_path), "--process", str(i), "--port", str(port)]
            + ["--slow-after", "6", str(markers[i])],
            extra_env=env,
        )
        for i in (0, 1)
    ]
    deadline = time.monotonic() + 180
    while not markers[1].exists():
        assert all(c.poll() is None for c in children), children[1].communicate()[1][-4000:]
        assert time.monotonic() < deadline, "process 1 never reached batch 6"
        time.sleep(0.05)
    children[1].send_signal(signal.SIGTERM)
    outputs = [_finish(child) for child in children]
    assert sorted(o["process"] for o in outputs) == [0, 1]
    assert all(o["preempted"] for o in outputs)
    stopped = outputs[0]["steps"]
    assert outputs[1]["steps"] == stopped and 6 <= stopped < 24
    if not service:
        assert stopped % 4 == 0  # a log step (every 4): the only steps the flags are gathered at
    run_dir = tmp_path / "runs" / "tiny"
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == stopped and not (run_dir / "final_params.npz").exists()

    resumed = train.train_sweep(tiny_job(), _source(), tmp_path)
    assert not resumed.preempted and resumed.steps == 24
    for name, value in reference.params.items():
        np.testing.assert_allclose(resumed.params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in reference.history]


def test_nonfinite_loss_names_member_and_step_and_keeps_last_good_checkpoint(tmp_path):
    # Member 1's λ·L0 overflows float32 once λ warms up (step index 1); member 0 stays finite.
    cfg = tiny_job("nan", 40, [1e-3, 3e38])
    cfg.ckpt_every_tokens = cfg.log_every_tokens = 64
    with pytest.raises(train.NonFiniteLossError, match=r"sweep member 1 \(sparsity_coeff=3e\+38"):
        train.train_sweep(cfg, _source(), tmp_path)
    checkpoints = tmp_path / "runs" / "nan" / "checkpoints"
    saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert saved, "no good checkpoint was kept"
    with pytest.raises(train.NonFiniteLossError, match=r"at step (\d+)") as error:
        train.train_sweep(cfg, _source(), tmp_path)  # resumes from the last good one, fails again
    bad_step = int(error.value.args[0].split("at step ")[1].split(";")[0])
    assert saved == [1] and bad_step == 1
    assert not (tmp_path / "runs" / "nan" / "final_params.npz").exists()


def test_dead_fraction_and_token_warmups(tmp_path):
    cfg = tiny_job("dead", 8, [1e-3], ckpt_steps=8)
    cfg.update(log_every_tokens=64, dead_window_tokens=64 * 3)
    cfg.update(sparsity_warmup_tokens=64 * 4, lr_warmup_tokens=0)
    cfg.sae.update(threshold_init=1e3, lr=1e-6)  # nothing can fire
    history = train.train_sweep(cfg, _source(), tmp_path).history
    assert [h["l0"][0] for h in history] == [0.0] * 8
    # Dead once no firing for 3 steps (the window counts from the start of training).
    assert [h["frac_dead"][0] for h in history] == [0, 0, 1, 1, 1, 1, 1, 1]
    # λ_t = λ·min(1, t/4) at step index t (docs/recipe.md#optimiser, warmup given in tokens); lr
    # constant.
    expected = [1e-3 * min(1.0, t / 4) for t in range(8)]
    assert [h["sparsity_coeff"][0] for h in history] == pytest.approx(expected)
    assert [h["lr"][0] for h in history] == pytest.approx([1e-6] * 8)


def test_frequency_penalty_is_logged_as_its_own_loss_term(tmp_path):
    """JumpReLU's frequency penalty is ``freq_penalty`` in metrics.jsonl, one of the loss terms.

    In the coefficient form sparsity_loss = λ·Σ_i p_i and, in the quadratic form, freq_penalty =
    λ·Σ_i p_i²/ω, so by Cauchy-Schwarz and p_i <= 1:
    sparsity_loss·L0/(M·ω) <= freq_penalty <= sparsity_loss/ω.
    """
    cfg = tiny_job("freq", 4, [1e-2, 3e-2], mesh=(("data", 1), ("model", 1)), ckpt_steps=4)
    cfg.update(log_every_tokens=64)
    cfg.sae.update(freq_penalty_scale=0.05, freq_penalty_form="quadratic", sparsity_warmup_steps=0)
    result = train.train_sweep(cfg, _source(), tmp_path, devices=jax.devices()[:1])
    for h in result.history:
        for m in range(2):
            terms = h["recon_loss"][m] + h["sparsity_loss"][m] + h["aux_loss"][m]
            assert h["freq_penalty"][m] > 0
            assert h["loss"][m] == pytest.approx(terms + h["freq_penalty"][m], rel=1e-5)
            low = h["sparsity_loss"][m] * h["l0"][m] / (32 * 0.05)
            assert low * (1 - 1e-5) <= h["freq_penalty"][m] <= h["sparsity_loss"][m] / 0.05
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [len(json.loads(line)["freq_penalty"]) for line in lines] == [2] * 4


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(width=30), r"width=30 is not divisible by the mesh's model axis \(4 devices\)"),
        (dict(d_in=17), r"source's d_in is 16 but job_cfg.d_in is 17"),
        (dict(arch="nope"), r"unknown SAE architecture 'nope'; valid architectures: \["),
        (dict(batch_size=63), r"batch_size=63 is not divisible"),
        (dict(total_tokens=-5), r"total_tokens must be a positive number of tokens"),
    ],
)
def test_bad_job_configs_are_clear_errors(tmp_path, change, error):
    cfg = tiny_job()
    cfg.update(change)
    with pytest.raises(ValueError, match=error):
        train.train_sweep(cfg, _source(), tmp_path)


def test_unknown_schedule_field_and_value_are_clear_errors(tmp_path):
    cfg = tiny_job()
    cfg.sae.lr_schedule = "linear"
    with pytest.raises(ValueError, match=r"\['lr_schedule'\] that the 'jumprelu' architecture"):
        train.train_sweep(cfg, _source(), tmp_path)
    cfg = tiny_job()
    cfg.sparsity_warmup_tokens = -1
    with pytest.raises(ValueError, match="sparsity_warmup_tokens must be >= 0"):
        train.train_sweep(cfg, _source(), tmp_path)
    cfg = tiny_job()
    cfg.sae.lr_warmup_steps = -1
    with pytest.raises(ValueError, match="'lr_warmup_steps' must be >= 0, got -1"):
        train.train_sweep(cfg, _source(), tmp_path)


def test_resume_with_other_sweep_values_is_refused(tmp_path):
    train.train_sweep(tiny_job("r", 2, [1e-3]), _source(), tmp_path)
    with pytest.raises(ValueError, match=r"trained sparsity_coeff=\[0.001.*gives \[0.5\]"):
        train.train_sweep(tiny_job("r", 4, [0.5]), _source(), tmp_path)


def test_k_sweep_sets_k_max_and_each_member_keeps_its_own_k(tmp_path):
    cfg = tiny_job("topk", 2, [4, 12], ckpt_steps=2)
    cfg.arch, cfg.sae = "topk", train.default_config("topk").sae
    cfg.log_every_tokens = 64
    result = train.train_sweep(cfg, _source(), tmp_path)
    assert result.members[0]["sweep_field"] == "k"
    l0 = result.history[0]["l0"]
    assert l0[0] == 4.0 and 4.0 < l0[1] <= 12.0  # ReLU may zero a few of the top 12
    job = json.loads((tmp_path / "runs" / "topk" / "job.json").read_text())
    assert job["sae"]["k_max"] == 32  # max(sweep values, cfg.k): every member's k fits
    assert job["sae"]["dead_tokens"] == cfg.dead_window_tokens  # AuxK's window is the job's
    cfg.sweep_values = [4, 40]
    with pytest.raises(ValueError, match=r"k = 40 must be an integer in \[1, 32\]"):
        train.train_sweep(cfg, _source(), tmp_path)


def test_resume_with_a_source_of_another_width_is_refused(tmp_path):
    train.train_sweep(tiny_job("w", 2, [1e-3], ckpt_steps=2), _source(), tmp_path)
    wider = activations.ArraySource(np.ones((256, 24), np.float32))
    with pytest.raises(
        ValueError, match=r"does not fit this job: .*'W_enc': \(1, 16, 32\).*'W_enc': \(1, 24, 32\)"
    ):
        train.train_sweep(tiny_job("w", 4, [1e-3]), wider, tmp_path)


def test_a_source_lacking_members_is_a_clear_error(tmp_path):
    class NotASource:
        d_in, n_tokens, norm_scale = 16, 2048, 1.0

        def iter_batches(self, batch_size, sharding):
            yield from ()

    with pytest.raises(
        TypeError,
        match=r"NotASource is not an activation source: it lacks \['hold_out', 'restore', 'state",
    ):
        train.train_sweep(tiny_job(), NotASource(), tmp_path)
    assert isinstance(_source(), activations.ActivationSource)
