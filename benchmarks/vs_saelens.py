"""Training speed against SAELens on one machine: JumpReLU, same shapes, same data, alternating.

Each round times, one after the other on the same host:

- **SAELens**: its `SAETrainer.fit()` on a `JumpReLUTrainingSAE` (benchmarks/peer_saelens_speed.py,
  run in SAELens's own virtualenv made by benchmarks/saelens_env.py; never a gemmascope
  dependency), with PyTorch on every core;
- **ours, trainer**: `train.train_sweep` over an `activations.ArraySource` of the same array (one
  SAE, the same knobs), the whole trainer (batch gathering, logging, firing counters);
- **ours, bare step**: the trainer's compiled step alone, called back to back on one batch.

Trainer times on both sides are differences between a long and a short run (`--steps` more
steps), so start-up, compilation and the final checkpoint cancel: what remains is each trainer's
cost per step in steady state. The table reports the median over rounds, tokens/s and the
ratios. Dense compute does not depend on L0 on either side; `--threshold_init` sets the initial
JumpReLU threshold on both (0.001 fires on about half the latents at init, `--realistic_l0`
picks the threshold that fires on about 1% of the width, Gemma Scope's L0 regime).
`--sparse_capacity C` adds our trainer and bare step with the sparse path (docs/sae.md#sparse-path,
C support slots per token) to every round, beside the dense ones: at a realistic L0 that is the
step's compute that depends on L0 (SAELens's does not).

Usage:
    PYTHONPATH=. python benchmarks/vs_saelens.py      # d_in 256, width 4096, batch 4096
    PYTHONPATH=. python benchmarks/vs_saelens.py --d_in 512 --width 16384 --batch 4096 --steps 4
    PYTHONPATH=. python benchmarks/vs_saelens.py --realistic_l0 --sparse_capacity 80
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import saelens_env
from benchmarks.speed_job import bare_step_seconds, speed_job
from gemmascope import activations, train

_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_saelens_speed.py")
_LR = 7e-5
_BANDWIDTH = 1e-3
_COEFF = 1e-3
_WARM_STEPS = 2


def _data(d_in: int, n_tokens: int) -> np.ndarray:
    """Gaussian rows with E||x||² = 1 (normalised activations; no scaling on either side)."""
    rows = np.random.default_rng(0).normal(size=(n_tokens, d_in)).astype(np.float32)
    return rows / np.sqrt(d_in, dtype=np.float32)


def _threshold_for_fraction(d_in: int, fraction: float) -> float:
    """The θ above which a latent fires on `fraction` of these rows at init.

    At init π = x W_enc with unit-norm encoder columns, so each π is ~N(0, 1/d_in).
    """
    return statistics.NormalDist().inv_cdf(1.0 - fraction) / float(np.sqrt(d_in))


def _job(args, steps: int, name: str, capacity: int = 0):
    cfg = speed_job(
        name, d_in=args.d_in, width=args.width, batch=args.batch, steps=steps, sweep_values=[_COEFF]
    )
    cfg.sae.update(
        lr=_LR,
        lr_warmup_steps=0,
        sparsity_warmup_steps=0,
        bandwidth=_BANDWIDTH,
        threshold_init=args.threshold_init,
        sparse_capacity=capacity,
    )
    return cfg


def _ours_trainer_seconds(args, source, workdir, steps: int, capacity: int = 0) -> float:
    """Wall seconds of one train_sweep job of `steps` steps (its compiled step cached)."""
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    result = train.train_sweep(_job(args, steps, "speed", capacity), source, workdir)
    seconds = time.perf_counter() - start
    assert result.steps == steps
    return seconds


def _ours_bare_seconds_per_step(args, source, steps: int, capacity: int = 0) -> float:
    """Seconds per call of the trainer's compiled step alone (same JobShape, so same program)."""
    return bare_step_seconds(_job(args, steps, "bare", capacity), args.d_in, source, steps)


def _peer_seconds(args, train_path: str, tmp: str, python: str) -> list[float]:
    spec = {
        "train": train_path,
        "width": args.width,
        "batch_size": args.batch,
        "threshold_init": args.threshold_init,
        "bandwidth": _BANDWIDTH,
        "sparsity_coeff": _COEFF,
        "lr": _LR,
        "threads": os.cpu_count(),
        "seed": 0,
        "steps": [_WARM_STEPS, _WARM_STEPS + args.steps],
    }
    spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "peer.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    subprocess.run([python, _PEER, spec_path, out_path], check=True, capture_output=True)
    with open(out_path) as f:
        return json.load(f)["seconds"]


def main():
    """Parses the flags, runs the rounds and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d_in", type=int, default=256)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8, help="steps in each timed difference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threshold_init", type=float, default=1e-3)
    parser.add_argument(
        "--realistic_l0", action="store_true", help="θ_init firing on ~1%% of latents at init"
    )
    parser.add_argument(
        "--sparse_capacity", type=int, default=0, help="also time our sparse path (C slots)"
    )
    args = parser.parse_args()
    if args.realistic_l0:
        args.threshold_init = _threshold_for_fraction(args.d_in, 0.01)
    python = saelens_env.python_path()
    rows = _data(args.d_in, max(8 * args.batch, 32768))
    source = activations.ArraySource(rows, seed=0)
    times = {"saelens": [], "trainer": [], "bare": []}
    capacity = args.sparse_capacity
    if capacity:
        times.update(trainer_sparse=[], bare_sparse=[])
    with tempfile.TemporaryDirectory() as tmp:
        train_path = os.path.join(tmp, "train.npy")
        np.save(train_path, rows)
        workdir = os.path.join(tmp, "work")
        # Ours dense, then (with --sparse_capacity) ours on the sparse path: (row suffix, C).
        variants = [("", 0)] + ([("_sparse", capacity)] if capacity else [])
        for _, c in variants:
            _ours_trainer_seconds(args, source, workdir, 1, c)  # compile once
        for round_index in range(args.rounds):
            short, long = _peer_seconds(args, train_path, tmp, python)
            times["saelens"].append((long - short) / args.steps)
            for suffix, c in variants:
                short = _ours_trainer_seconds(args, source, workdir, _WARM_STEPS, c)
                long = _ours_trainer_seconds(args, source, workdir, _WARM_STEPS + args.steps, c)
                times["trainer" + suffix].append((long - short) / args.steps)
                times["bare" + suffix].append(
                    _ours_bare_seconds_per_step(args, source, args.steps, c)
                )
            print(
                f"round {round_index}: "
                + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms/step" for k, v in times.items()),
                flush=True,
            )
    median = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\nJumpReLU, d_in {args.d_in}, width {args.width}, batch {args.batch}, "
        f"threshold_init {args.threshold_init:.4g}; {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), sae-lens {saelens_env.SAELENS_VERSION}; "
        f"median of {args.rounds} rounds, {args.steps} steps each"
    )
    print("| what | ms/step | tokens/s | SAELens time / this |")
    print("| --- | --- | --- | --- |")
    for name, label in (
        ("saelens", "SAELens SAETrainer.fit"),
        ("trainer", "ours: train.train_sweep"),
        ("bare", "ours: the compiled step alone"),
        ("trainer_sparse", f"ours: train.train_sweep, sparse path (C = {capacity})"),
        ("bare_sparse", f"ours: the compiled step alone, sparse path (C = {capacity})"),
    ):
        if name not in median:
            continue
        seconds = median[name]
        print(
            f"| {label} | {seconds * 1e3:.0f} | {args.batch / seconds:,.0f} | "
            f"{median['saelens'] / seconds:.2f} |"
        )
    print(f"trainer / bare step: {median['trainer'] / median['bare']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
