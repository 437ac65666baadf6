"""Benchmark of the sweep trainer: stacking speed-up, step overhead, tokens/s, per-job overhead.

Measures, side by side in one run (ratios, not absolute promises):

(a) a stacked sweep of S SAEs (one job) against S sequential single-SAE jobs on the same data,
    end to end through `train.train_sweep` with the compiled step already cached;
(b) the jitted sweep step against the same dense matrix products alone (encoder, decoder and the
    three backward products, vmapped over the sweep): the overhead of everything else (STE,
    optimizer, decoder projection and renormalisation, metrics, firing counters);
(c) tokens/s of a JumpReLU job at a 2B-like shape (d_in = 2304, Gemma 2 2B residual width);
(d) the fixed per-job overhead (run directory, checkpoint manager, final checkpoint, job.json,
    final_params.npz) of a one-step job whose step is already compiled;
(e) the trainer loop's own cost per step: on a tiny job (width 32, batch 64) whose step is ~0.1 ms,
    the per-step time of train_sweep over 1,000 steps less its compiled step alone and one batch
    read: what the loop adds to any step.

Usage (plain CPU, one device):
    PYTHONPATH=. python benchmarks/train_sweep.py                   # defaults below, ~2 minutes
    PYTHONPATH=. python benchmarks/train_sweep.py --d-in 2304 --width 16384 --batch 4096  # GPU
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import gemmascope.mesh
from benchmarks.speed_job import bare_step_seconds, speed_job
from gemmascope import activations, train
from gemmascope.train import loop, step


def _job(name, d_in, width, batch, steps, values, checkpoint=False):
    return speed_job(
        name,
        d_in=d_in,
        width=width,
        batch=batch,
        steps=steps,
        sweep_values=values,
        checkpoint=checkpoint,
    )


def _source(d_in, n_tokens, seed=0):
    x = np.random.default_rng(seed).normal(size=(n_tokens, d_in)).astype(np.float32)
    return activations.ArraySource(x, seed=seed)


def _timed_job(cfg, source, workdir):
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    train.train_sweep(cfg, source, workdir)
    return time.perf_counter() - start


def stacking_speedup(d_in, width, batch, steps, n_members, workdir, members_per_pass):
    """(a): seconds of one stacked job of n_members vs n_members single jobs (warm jit caches)."""
    values = [1e-4 * 2**i for i in range(n_members)]
    source = _source(d_in, batch * 8)
    stacked = _job("stacked", d_in, width, batch, steps, values)
    stacked.members_per_pass = members_per_pass
    singles = [_job(f"single{i}", d_in, width, batch, steps, [v]) for i, v in enumerate(values)]
    warm = _job("warm_s", d_in, width, batch, 1, values)
    warm.members_per_pass = members_per_pass
    _timed_job(warm, source, workdir)  # compile both programs first
    _timed_job(_job("warm_1", d_in, width, batch, 1, values[:1]), source, workdir)
    t_stacked = _timed_job(stacked, source, workdir)
    t_singles = sum(_timed_job(cfg, source, workdir) for cfg in singles)
    return t_stacked, t_singles


def source_read_seconds(d_in, batch, repeats=10):
    """Seconds to draw one (batch, d_in) batch from an in-memory ArraySource (the shared read)."""
    source = _source(d_in, batch * 8)
    mesh = gemmascope.mesh.make_mesh([("data", -1), ("model", 1)])
    sharding = gemmascope.mesh.named_sharding(mesh, ("batch", "d_in"))
    batches = source.iter_batches(batch, sharding)
    jax.block_until_ready(next(batches))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(next(batches))
    return (time.perf_counter() - start) / repeats


def step_overhead(d_in, width, batch, n_members, repeats):
    """(b): seconds per sweep step vs the same five dense matmuls alone, both jitted."""
    cfg = _job("overhead", d_in, width, batch, 1, [1e-3] * n_members)
    # The trainer's own program for this job (members in sequence and blocks of tokens on CPU).
    shape = loop.job_shape(cfg, d_in, gemmascope.mesh.make_mesh(cfg.mesh))
    fns = step.compiled_functions(shape)
    state = fns.init(np.arange(n_members, dtype=np.int32), np.full(n_members, 1e-3, np.float32))
    batch_array = next(_source(d_in, batch).iter_batches(batch, fns.batch_sharding))

    @jax.jit
    def matmuls(x, w_enc, w_dec):
        def one(w_enc, w_dec):
            pre = x @ w_enc  # encoder (B, M)
            x_hat = pre @ w_dec  # decoder (B, d)
            d_pre = x_hat @ w_dec.T  # backward through the decoder (B, M)
            g_dec = pre.T @ x_hat  # decoder gradient (M, d)
            g_enc = x.T @ d_pre  # encoder gradient (d, M)
            return g_enc.sum() + g_dec.sum()

        # Member by member, unbatched: the fastest way to do these products on XLA:CPU.
        return [one(w_enc[i], w_dec[i]) for i in range(w_enc.shape[0])]

    key = jax.random.key(0)
    w_enc = jax.random.normal(key, (n_members, d_in, width), jnp.float32)
    w_dec = jax.random.normal(key, (n_members, width, d_in), jnp.float32)
    jax.block_until_ready(matmuls(batch_array, w_enc, w_dec))
    state, _ = fns.train_step(state, batch_array)  # compile (the step donates its state)
    jax.block_until_ready(state)
    # Interleaved, best of `repeats` each: a busy machine slows both alike.
    best, t_matmul = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = fns.train_step(state, batch_array)
        jax.block_until_ready(metrics)
        best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(matmuls(batch_array, w_enc, w_dec))
        t_matmul = min(t_matmul, time.perf_counter() - start)
    return best, t_matmul


def tokens_per_second(d_in, width, batch, steps, n_members, workdir):
    """(c): tokens/s of a JumpReLU job (compile excluded by a warm-up job of one step)."""
    source = _source(d_in, batch * 4)
    values = [1e-3 * 2**i for i in range(n_members)]
    _timed_job(_job("warm_c", d_in, width, batch, 1, values), source, workdir)
    seconds = _timed_job(_job("tokens", d_in, width, batch, steps, values), source, workdir)
    return batch * steps / seconds


def per_job_overhead(workdir, repeats):
    """(d): wall seconds of a one-step tiny job with checkpointing, jit cache warm."""
    source = _source(16, 256)
    cfg = _job("tiny", 16, 32, 64, 1, [1e-3, 2e-3], checkpoint=True)
    _timed_job(cfg, source, workdir)
    t_full = min(_timed_job(cfg, source, workdir) for _ in range(repeats))
    return t_full


def loop_overhead_per_step(workdir, steps=1000):
    """(e): seconds per step of train_sweep beyond its compiled step and its batch read."""
    d_in, width, batch = 16, 32, 64
    source = _source(d_in, batch * 100)
    runs = {}
    for n in (2, 2, 2 + steps):  # the first compiles
        runs[n] = _timed_job(_job("loop", d_in, width, batch, n, [1e-3]), source, workdir)
    per_step = (runs[2 + steps] - runs[2]) / steps
    cfg = _job("loop", d_in, width, batch, 1, [1e-3])
    bare = bare_step_seconds(cfg, d_in, source, steps)
    sharding = gemmascope.mesh.named_sharding(
        gemmascope.mesh.make_mesh(cfg.mesh), ("batch", "d_in")
    )
    batches = source.iter_batches(batch, sharding)
    next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    read = (time.perf_counter() - start) / steps
    batches.close()
    return per_step, bare, read


def main():
    """Parses the flags, runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=2304, help="activation width (2B: 2304)")
    parser.add_argument("--width", type=int, default=4096, help="latents for (c)")
    parser.add_argument("--batch", type=int, default=1024, help="tokens per step for (c)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps for (c)")
    parser.add_argument("--sweep", type=int, default=8, help="S for (a) and (b)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench_train_")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")

    # (a) at a demo-sized shape (host and dispatch bound) and a compute-bound one.
    shapes = ((64, 256, 1024, 20), (256, 1024, 1024, 10))
    for (d, m, b, s), per_pass in itertools.product(shapes, (None, 0)):
        t_stacked, t_singles = stacking_speedup(d, m, b, s, args.sweep, workdir, per_pass)
        how = "members_per_pass=auto" if per_pass is None else "members_per_pass=0 (vmap)"
        print(
            f"(a) d_in={d} width={m} batch={b} steps={s}, {how}: stacked S={args.sweep} "
            f"{t_stacked:.2f} s, {args.sweep} single jobs {t_singles:.2f} s, "
            f"speed-up x{t_singles / t_stacked:.2f}; one batch read from memory "
            f"{source_read_seconds(d, b) * 1e3:.2f} ms vs {t_stacked / s * 1e3:.0f} ms per step"
        )
    t_step, t_mm = step_overhead(d, m, b, args.sweep, repeats=10)
    print(
        f"(b) same shape, S={args.sweep}, auto: step {t_step * 1e3:.1f} ms, dense matmuls alone "
        f"{t_mm * 1e3:.1f} ms, step/matmuls x{t_step / t_mm:.2f}"
    )
    tps = tokens_per_second(args.d_in, args.width, args.batch, args.steps, 1, workdir)
    flops = 5 * 2 * args.d_in * args.width * tps
    print(
        f"(c) JumpReLU d_in={args.d_in} width={args.width} batch={args.batch}, S=1: "
        f"{tps:,.0f} tokens/s ({flops / 1e9:.1f} GFLOP/s in the five matmuls)"
    )
    overhead = per_job_overhead(workdir, repeats=5)
    print(
        f"(d) fixed per-job overhead (1-step tiny job, warm jit, with checkpoint): {overhead:.2f} s"
    )
    per_step, bare, read = loop_overhead_per_step(workdir)
    print(
        f"(e) trainer loop per step (tiny job, 1,000 steps): {per_step * 1e3:.3f} ms = compiled "
        f"step {bare * 1e3:.3f} ms + batch read {read * 1e3:.3f} ms + loop "
        f"{(per_step - bare - read) * 1e3:.3f} ms"
    )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
