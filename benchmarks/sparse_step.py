"""JumpReLU's training step, dense products against the sparse path, over L0/width (issue 14).

For each (d_in, width) and each L0 fraction, θ is set per latent so that the chosen fraction of
the width fires on the benchmark batch (θ_i = the (1 − fraction) quantile of π_i on that batch,
with the SAE's init weights), which is the low-L0 regime of a trained SAE without training one.
Four forms of the same ``sae.make_train_step`` (Gemma Scope's JumpReLU config: log θ,
ε = 1e-3, the coefficient form, step 20,000), jitted, are timed in alternating rounds in one
process: the dense step (``sparse_capacity = 0``) over the whole batch and in blocks of 256
tokens (the trainer's CPU default at these shapes), and the sparse step (``sparse_capacity`` =
the 97th percentile of the batch's per-token support, rounded up to a multiple of 16: about 3%
of the tokens are crowded and computed densely, under the B/16 limit, so the sparse branch runs)
with XLA's gathers and scatter-adds (``sparse_kernels = "xla"``) and with the CPU kernels
(``"cpu"``, the default on CPU). The table reports the best time of each and the faster dense
step's time over each sparse one (> 1: the sparse path is faster).

``--trainer`` times the whole trainer instead (``train.train_sweep`` over an
``activations.ArraySource``, one SAE, members_per_pass 1 as on CPU, each with its defaults:
the dense one in blocks of tokens, the sparse one whole with the CPU kernels), dense against
``sparse_capacity``: the initial θ (``threshold_init``, every latent alike) fires on the first
``--fractions`` value of the width at init (π ~ N(0, 1/d_in) with the tied unit-norm init), the
lr is Gemma Scope's 7e-5 without warmup, so θ and the L0 barely move during the run; the
capacity is 1.6x that mean L0 rounded up to 16. Times per step are the difference between a run
of 2 and of 2 + ``--steps`` steps (compilation, start-up and the final checkpoint cancel),
alternating dense and sparse each round.

Usage:
    PYTHONPATH=. python benchmarks/sparse_step.py --d_in 256 512 --width 4096 16384
        --fractions 0.005 0.01 0.02 0.05 --batch 4096 --rounds 2   (one line)
    PYTHONPATH=. python benchmarks/sparse_step.py --trainer --d_in 512 --width 16384
        --fractions 0.01 --steps 3 --rounds 1
"""

import argparse
import math
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.speed_job import speed_job
from gemmascope import activations, sae, train
from gemmascope.sae import jumprelu, sparse_support

_STEP = 20_000
_SLOTS_MULTIPLE = 16
_CAPACITY_QUANTILE = 0.97
_TRAINER_CAPACITY_FACTOR = 1.6
_WARM_STEPS = 2
# The dense step whole and in blocks of tokens (the trainer's CPU default at these shapes), the
# sparse path with XLA's gathers and scatter-adds and with the CPU kernels (sparse_cpu).
_DENSE_BLOCK = 256
_COLUMNS = ("dense", "blocks", "xla", "cpu")


def _time(fn, args, repeats):
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _shape_rows(d_in, width, fractions, batch, rounds, repeats):
    """One table row per fraction for this (d_in, width): measured in alternating rounds."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, d_in)) / jnp.sqrt(d_in)
    cfg = jumprelu.default_config()
    params = jumprelu.init(jax.random.key(1), d_in, width, cfg)
    pi = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    candidates = {}
    dense_steps = {
        "dense": jax.jit(sae.make_train_step("jumprelu", cfg)),
        "blocks": jax.jit(sae.make_train_step("jumprelu", cfg, block_tokens=_DENSE_BLOCK)),
    }
    for fraction in fractions:
        theta = jnp.maximum(jnp.quantile(pi, 1.0 - fraction, axis=0), 1e-6)
        member = {**params, "log_threshold": jnp.log(theta)}
        support = jnp.sum(sparse_support.support_mask(pi, theta, cfg.bandwidth), axis=-1)
        slots = float(jnp.quantile(support, _CAPACITY_QUANTILE))
        capacity = int(-(-math.ceil(slots) // _SLOTS_MULTIPLE) * _SLOTS_MULTIPLE)
        steps = dict(dense_steps)
        for kernels in ("xla", "cpu"):
            sparse_cfg = jumprelu.default_config()
            sparse_cfg.update(sparse_capacity=capacity, sparse_kernels=kernels)
            steps[kernels] = jax.jit(sae.make_train_step("jumprelu", sparse_cfg))
        opt_state = sae.optimizer(cfg).init(member)
        args = (member, opt_state, x, jnp.int32(_STEP), cfg.sparsity_coeff)
        for step in steps.values():
            jax.block_until_ready(step(*args))  # compile and warm up
        assert not sparse_support.overflows(pi, theta, cfg.bandwidth, capacity)
        stats = (float(jnp.mean(jnp.sum(pi > theta, axis=-1))), float(jnp.mean(support)), capacity)
        candidates[fraction] = (stats, {name: (step, args) for name, step in steps.items()})
    times = {(f, name): [] for f in fractions for name in _COLUMNS}
    for _ in range(rounds):  # alternate so load changes hit all alike
        for fraction, (_, fns) in candidates.items():
            for name, (fn, args) in fns.items():
                times[fraction, name].append(_time(fn, args, repeats))
    rows = []
    for fraction, (stats, _) in candidates.items():
        best = {name: min(times[fraction, name]) for name in _COLUMNS}
        faster_dense = min(best["dense"], best["blocks"])
        l0, mean_support, capacity = stats
        millis = " | ".join(f"{1e3 * best[name]:.0f}" for name in _COLUMNS)
        rows.append(
            f"| {d_in} | {width} | {100 * fraction:g}% | {l0:.1f} | {mean_support:.1f} | "
            f"{capacity} | {millis} | {faster_dense / best['xla']:.2f} | "
            f"{faster_dense / best['cpu']:.2f} |"
        )
    return rows


def _trainer_job(d_in, width, batch, steps, fraction, capacity):
    cfg = speed_job("speed", d_in=d_in, width=width, batch=batch, steps=steps, sweep_values=[1e-3])
    cfg.members_per_pass = 1
    theta = statistics.NormalDist().inv_cdf(1.0 - fraction) / math.sqrt(d_in)
    cfg.sae.update(
        lr=7e-5,
        lr_warmup_steps=0,
        sparsity_warmup_steps=0,
        threshold_init=theta,
        sparse_capacity=capacity,
    )
    return cfg


def _trainer_seconds(shape, steps, capacity, source, workdir):
    """Wall seconds of one train_sweep job of ``steps`` steps (its compiled step cached)."""
    d_in, width, batch, fraction = shape
    job = _trainer_job(d_in, width, batch, steps, fraction, capacity)
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    result = train.train_sweep(job, source, workdir)
    assert result.steps == steps
    return time.perf_counter() - start


def _trainer_table(args):
    """Dense and sparse whole-trainer ms per step, alternating, for each (d_in, width)."""
    fraction = args.fractions[0]
    print(
        "| d_in | width | L0/width at init | capacity | dense trainer ms/step | "
        "sparse trainer ms/step | dense / sparse |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for d_in in args.d_in:
        rows = np.random.default_rng(0).normal(size=(8 * args.batch, d_in)).astype(np.float32)
        source = activations.ArraySource(rows / np.sqrt(d_in, dtype=np.float32), seed=0)
        for width in args.width:
            capacity = int(
                -(-math.ceil(_TRAINER_CAPACITY_FACTOR * fraction * width) // _SLOTS_MULTIPLE)
                * _SLOTS_MULTIPLE
            )
            times = {0: [], capacity: []}
            with tempfile.TemporaryDirectory() as tmp:
                shape = (d_in, width, args.batch, fraction)
                for cap in times:
                    _trainer_seconds(shape, 1, cap, source, tmp)  # compile
                for _ in range(args.rounds):
                    for cap in times:
                        short = _trainer_seconds(shape, _WARM_STEPS, cap, source, tmp)
                        long = _trainer_seconds(shape, _WARM_STEPS + args.steps, cap, source, tmp)
                        times[cap].append((long - short) / args.steps)
            dense, sparse = statistics.median(times[0]), statistics.median(times[capacity])
            print(
                f"| {d_in} | {width} | {100 * fraction:g}% | {capacity} | {1e3 * dense:.0f} | "
                f"{1e3 * sparse:.0f} | {dense / sparse:.2f} |",
                flush=True,
            )


def main():
    """Parses the flags, runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d_in", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--width", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per round (best)")
    parser.add_argument("--trainer", action="store_true", help="time train.train_sweep instead")
    parser.add_argument("--steps", type=int, default=3, help="--trainer: steps per difference")
    args = parser.parse_args()
    print(f"batch {args.batch}; {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    if args.trainer:
        _trainer_table(args)
        return
    print(
        "| d_in | width | L0/width | mean L0 | mean support | capacity | dense ms | dense in "
        f"blocks of {_DENSE_BLOCK} ms | sparse, XLA ms | sparse, CPU kernels ms | "
        "faster dense / sparse XLA | faster dense / sparse CPU kernels |"
    )
    print("| --- " * 12 + "|")
    for d_in in args.d_in:
        for width in args.width:
            for row in _shape_rows(
                d_in, width, args.fractions, args.batch, args.rounds, args.repeats
            ):
                print(row, flush=True)


if __name__ == "__main__":
    main()
