"""The job config the training-speed benchmarks time, and its compiled step timed alone.

No periodic log, checkpoint, held-out batch, progress bar or TensorBoard during the run (one log
and one checkpoint at its last step, which a timing by difference of two runs cancels), so the
time per step is the trainer's loop around its compiled step and the source.

Usage (from a benchmark run as ``PYTHONPATH=. python benchmarks/NAME.py``)::

    from benchmarks.speed_job import bare_step_seconds, speed_job
    cfg = speed_job("speed", d_in=256, width=4096, batch=4096, steps=10, sweep_values=[1e-3])
    seconds = bare_step_seconds(cfg, 256, rows, steps=10)   # the compiled step alone
"""

import time

import jax
import numpy as np

from gemmascope import mesh as mesh_lib
from gemmascope import train
from gemmascope.train import loop, step


def speed_job(
    name: str, *, d_in: int, width: int, batch: int, steps: int, sweep_values, checkpoint=False
):
    """``train.default_config("jumprelu")`` for a timed run of ``steps`` steps (docstring).

    ``checkpoint`` adds a periodic checkpoint due at the last step (the per-job overhead of
    benchmarks/train_sweep.py's (d) includes it).
    """
    cfg = train.default_config("jumprelu")
    cfg.update(
        name=name,
        width=width,
        sweep_values=list(sweep_values),
        batch_size=batch,
        total_tokens=batch * steps,
        log_every_tokens=batch * steps,
        ckpt_every_tokens=batch * (steps if checkpoint else 10**9),
        heldout_every_tokens=0,
        progress_bar=False,
        tensorboard=False,
        d_in=d_in,
    )
    return cfg


def bare_step_seconds(job, d_in: int, batch, steps: int) -> float:
    """Mean seconds per call of ``job``'s compiled step alone, on one batch.

    ``batch`` is a (B, d_in) array, or an activation source whose first batch is used (as the
    trainer reads it: normalised, laid out on the job's mesh).

    The program is the trainer's own (``loop.job_shape``: the same cached compilation
    ``train.train_sweep`` runs), its members seeded 0, 1, ... with the job's sweep values; one
    warm-up call, then ``steps`` calls back to back, the state donated from call to call.
    """
    fns = step.compiled_functions(loop.job_shape(job, d_in, mesh_lib.make_mesh(job.mesh)))
    members = len(job.sweep_values)
    seeds = np.arange(members, dtype=np.int32)
    state = fns.init(seeds, np.asarray(job.sweep_values, np.float32))
    if hasattr(batch, "iter_batches"):
        batch = next(batch.iter_batches(job.batch_size, fns.batch_sharding))
    batch = jax.device_put(batch, fns.batch_sharding)
    state, metrics = fns.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = fns.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps
