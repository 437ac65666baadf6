"""The sharded sweep trainer: S SAEs per pass over the data, on a (data x model) mesh.

A job is one (site, width, architecture) with S sweep settings; the S SAEs are one pytree with a
leading sweep axis and one jitted, state-donating step updates them all from the same batch.
Checkpoints (orbax) make a job resumable after preemption. See docs/training.md.

Synopsis:
    from gemmascope import train
    job_cfg = train.default_config("jumprelu")
    job_cfg.update(name="res-L3-w1024-jumprelu", width=1024, sweep_values=[1e-4, 1e-3])
    result = train.train_sweep(job_cfg, source, workdir)
"""

# Job config and budgets.
from gemmascope.train.config import default_config, itstime, resolve_budget, sweep_members

# The loop.
from gemmascope.train.loop import NonFiniteLossError, TrainResult, train_sweep

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "default_config",
    "itstime",
    "resolve_budget",
    "sweep_members",
    "train_sweep",
]
