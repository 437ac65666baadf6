"""A tiny sweep job shared by the in-process tests and the subprocess ones (SIGTERM, 2 hosts).

Run as a script it trains `tiny_job` in its own process:

    python tests/train/job_runner.py WORKDIR [--slow-after N MARKER] [--process I --port P]

`--slow-after N MARKER` touches MARKER once N batches were drawn and then slows the source down, so
the parent can send SIGTERM mid-run. `--process I --port P` joins a 2-process
`jax.distributed` job on localhost (each process with 4 forced CPU devices); both options together
let the parent preempt one process of the two. The script prints
one JSON line: {"preempted", "steps", "process"}.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

D_IN, N_TOKENS = 16, 2048


def tiny_job(
    name="tiny",
    total_steps=24,
    sweep_values=(1e-4, 3e-3),
    mesh=(("data", 2), ("model", 4)),
    ckpt_steps=8,
):
    """A job config small enough to compile and run in seconds (width 32, batch 64)."""
    from gemmascope import train

    cfg = train.default_config("jumprelu")
    cfg.update(
        name=name,
        site="resid_post/0",
        model="synthetic",
        width=32,
        sweep_values=list(sweep_values),
        batch_size=64,
        total_tokens=64 * total_steps,
        log_every_tokens=64 * 4,
        ckpt_every_tokens=64 * ckpt_steps,
        dead_window_tokens=64 * 4,
        mesh=[list(axis) for axis in mesh],
        progress_bar=False,
    )
    # Short warmups so a few dozen steps move every parameter.
    cfg.sae.update(lr=1e-2, lr_warmup_steps=4, sparsity_warmup_steps=8, threshold_param="raw")
    return cfg


def tiny_activations(seed=0):
    """Synthetic (N_TOKENS, D_IN) activations: sparse non-negative codes of a random dictionary."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(48, D_IN)).astype(np.float32)
    codes = rng.exponential(size=(N_TOKENS, 48)) * (rng.random((N_TOKENS, 48)) < 0.1)
    return (codes @ atoms).astype(np.float32)


class SlowAfter:
    """Wraps a source: after `n` batches, touch `marker` and sleep per batch (for SIGTERM tests)."""

    def __init__(self, source, n, marker):
        self._source, self._n, self._marker = source, n, Path(marker)
        self.d_in, self.n_tokens, self.norm_scale = source.d_in, source.n_tokens, source.norm_scale

    def hold_out(self, n_tokens):
        return self._source.hold_out(n_tokens)

    def state(self):
        return self._source.state()

    def restore(self, state):
        self._source.restore(state)

    def iter_batches(self, batch_size, sharding):
        for i, batch in enumerate(self._source.iter_batches(batch_size, sharding)):
            if i == self._n:
                self._marker.touch()
            if i >= self._n:
                time.sleep(0.5)  # a wide window for the parent's SIGTERM, even on a busy host
            yield batch


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--slow-after", nargs=2, default=None)
    parser.add_argument("--process", type=int, default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.process is not None:
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if args.process is not None:
        jax.distributed.initialize(
            f"localhost:{args.port}", num_processes=2, process_id=args.process
        )
    from gemmascope import activations, train

    source = activations.ArraySource(tiny_activations(), seed=1)
    if args.slow_after is not None:
        source = SlowAfter(source, int(args.slow_after[0]), args.slow_after[1])
    job_cfg = tiny_job()
    job_cfg.tensorboard = False  # saves each child process the seconds of importing torch
    result = train.train_sweep(job_cfg, source, args.workdir)
    summary = {"preempted": result.preempted, "steps": result.steps, "process": jax.process_index()}
    print(json.dumps(summary))
    if args.process is not None:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
