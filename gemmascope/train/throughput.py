"""What a sweep job's MFU is measured against: the plan's FLOPs per step and the devices' peak.

    flops = step_flops(shape)                  # gemmascope.plan's formula (6 x params x tokens)
    peak = peak_flops(mesh.devices.flat)       # FLOP/s of all devices, None where unknown (CPU)
    mfu = flops * steps / seconds / peak

The formula and the peaks are the cost model's (gemmascope/plan/estimate.py, plan/accelerators.py),
so a run's measured MFU is comparable with the `config.plan.mfu` its plan assumed. `gemmascope.plan`
comes after `train` in the package order (it imports `study.jobs`, which imports `train`), so it is
imported when these are called, not when `gemmascope.train` is imported.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax


def step_flops(shape) -> float:
    """Training FLOPs of one step of the job of `shape` (a `step.JobShape`).

    A transcoder's `sae_cfg.d_out` and `skip_connection` count its decoder and W_skip.
    """
    from gemmascope.plan import estimate

    cfg = shape.sae_cfg
    return estimate.sae_step_flops(
        shape.d_in,
        shape.width,
        shape.batch_size,
        shape.n_members,
        shape.arch,
        d_out=cfg.get("d_out"),
        skip=bool(cfg.get("skip_connection")),
    )


def peak_flops(devices: Iterable[jax.Device]) -> float | None:
    """Peak FLOP/s of `devices` together; None when any is not a known accelerator (e.g. CPU)."""
    from gemmascope.plan import accelerators

    chips = [accelerators.for_device(device) for device in devices]
    if not chips or any(chip is None for chip in chips):
        return None
    return sum(chip.device_peak_flops for chip in chips)
