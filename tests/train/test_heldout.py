"""Held-out metrics during training, and the speed figures of every record.

Oracle: each member's FVU, L0 and dead fraction recomputed in numpy from its final parameters on the
rows the source held out (the array's last batch_size rows, normalised by the C numpy estimates).
"""

import numpy as np
import pytest
from job_runner import tiny_activations, tiny_job

from gemmascope import activations, train
from gemmascope.plan import accelerators, estimate
from gemmascope.train import step, throughput


def _numpy_metrics(params, x):
    """JumpReLU (raw threshold) forward in float64: FVU, L0, fraction of latents never firing."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    pi = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = pi * (pi > p["threshold"])
    x_hat = f @ p["W_dec"] + p["b_dec"]
    fvu = np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(axis=0)) ** 2)
    return fvu, np.mean(np.sum(f != 0, axis=1)), np.mean(np.all(f == 0, axis=0))


def test_heldout_metrics_are_those_of_the_held_out_rows(tmp_path):
    cfg = tiny_job("heldout", total_steps=24)
    cfg.heldout_every_tokens = 64 * 8
    x = tiny_activations()
    result = train.train_sweep(cfg, activations.ArraySource(x, seed=1), tmp_path)

    history = {record["step"]: record for record in result.history}
    # Held-out steps are logged steps too; the other logged steps carry no held-out keys.
    assert sorted(history) == [4, 8, 12, 16, 20, 24]
    assert [s for s, r in history.items() if "heldout/fvu" in r] == [8, 16, 24]
    last = history[24]
    c = np.sqrt(np.mean(np.sum(np.asarray(x, np.float64) ** 2, axis=1)))
    held_out = (x[-64:].astype(np.float32) / np.float32(c)).astype(np.float64)
    for member in range(2):
        fvu, l0, dead = _numpy_metrics(result.member_params(member), held_out)
        assert last["heldout/fvu"][member] == pytest.approx(fvu, rel=1e-4)
        assert last["heldout/l0"][member] == pytest.approx(l0, abs=2 / 64)
        assert last["heldout/frac_dead"][member] == pytest.approx(dead, abs=1 / 32)
    # The two members differ (different sparsity), and held-out FVU is not the training batch's.
    assert last["heldout/l0"][0] != last["heldout/l0"][1]
    assert last["heldout/fvu"] != last["fvu"]
    # Speed figures: tokens/s and the ETA from the same interval; no MFU on CPU (no known peak).
    assert last["eta_sec"] == 0.0 and history[20]["eta_sec"] > 0 and "mfu" not in last
    assert history[20]["eta_sec"] == pytest.approx(4 * 64 / history[20]["tokens_per_sec"])


def test_heldout_off_holds_nothing_out(tmp_path):
    cfg = tiny_job("no_heldout", total_steps=4, ckpt_steps=4)
    cfg.heldout_every_tokens = 0
    source = activations.ArraySource(tiny_activations(), seed=1)
    history = train.train_sweep(cfg, source, tmp_path).history
    assert source.n_tokens == 2048 and not any("heldout/fvu" in r for r in history)
    cfg.heldout_every_tokens = -1
    with pytest.raises(ValueError, match=r"heldout_every_tokens must be a number of tokens >= 0"):
        train.train_sweep(cfg, source, tmp_path)


def test_mfu_uses_the_plans_flop_count_and_the_devices_peak():
    cfg = tiny_job()
    plan_job = estimate.plan_job(
        cfg, d_in=16, accelerator=accelerators.get("tpu_v3"), n_chips=4, mfu=0.5
    )
    shape = step.JobShape(
        arch="jumprelu",
        sae_cfg=train.default_config().sae,
        d_in=16,
        width=32,
        n_members=2,
        batch_size=64,
        dead_window=4,
        sweep_dtype="float32",
        mesh=None,
    )
    assert throughput.step_flops(shape) == plan_job.flops / plan_job.steps
    tpu_v3, cpu = type("D", (), {"device_kind": "TPU v3"}), type("D", (), {"device_kind": "cpu"})
    assert throughput.peak_flops([tpu_v3] * 8) == 4 * accelerators.get("tpu_v3").peak_flops
    assert throughput.peak_flops([tpu_v3, cpu]) is None
    assert accelerators.for_device(type("D", (), {"device_kind": "TPU v5 lite"})) is None
    h100 = type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})
    assert accelerators.for_device(h100).name == "h100"
