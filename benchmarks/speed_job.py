"""The job config the training-speed benchmarks time: a JumpReLU sweep that only takes steps.

No periodic log, checkpoint, held-out batch, progress bar or TensorBoard during the run (one log
and one checkpoint at its last step, which a timing by difference of two runs cancels), so the
time per step is the trainer's loop around its compiled step and the source.

Usage (from a benchmark run as ``PYTHONPATH=. python benchmarks/NAME.py``)::

    from benchmarks.speed_job import speed_job
    cfg = speed_job("speed", d_in=256, width=4096, batch=4096, steps=10, sweep_values=[1e-3])
"""

from gemmascope import train


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
