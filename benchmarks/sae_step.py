"""One SAE training step against its dense matrix products alone: the overhead ratio.

For a Gemma 2 2B-like SAE shape scaled down to a CPU (d_in = 2304/8, width = 16384/8, batch =
4096/4 by default), times in one process, interleaved:

- ``matmuls``: the five dense products of a plain SAE step, nothing else: encoder x @ W_enc,
  decoder f @ W_dec, and the backward products dL/dW_dec = f^T g, dL/df = g W_dec^T,
  dL/dW_enc = x^T dL/dπ;
- ``sae.make_train_step(name, cfg)`` for jumprelu, gated and topk (loss, custom VJPs, decoder
  projection, Adam, renormalisation, buffers, metrics).

The ratio step / matmuls is the overhead of everything that is not a dense product. Gated runs
its decoder twice (the auxiliary term: two more products), so its floor is ~7/5, not 1.

Usage:
    PYTHONPATH=. python benchmarks/sae_step.py [--d_in 288 --width 2048 --batch 1024 --repeats 10]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from gemmascope import sae


def _dense_products(x, w_enc, w_dec, g):
    """The five dense products of one SAE step (forward and backward), nothing else."""
    pi = x @ w_enc
    x_hat = pi @ w_dec
    grad_w_dec = pi.T @ g
    grad_f = g @ w_dec.T
    grad_w_enc = x.T @ grad_f
    return x_hat, grad_w_dec, grad_w_enc


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile and warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    """Parses the flags, runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d_in", type=int, default=2304 // 8)
    parser.add_argument("--width", type=int, default=16384 // 8)
    parser.add_argument("--batch", type=int, default=4096 // 4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    args = parser.parse_args()

    key = jax.random.key(0)
    x = jax.random.normal(key, (args.batch, args.d_in)) / jnp.sqrt(args.d_in)
    w_enc = jax.random.normal(key, (args.d_in, args.width)) / jnp.sqrt(args.d_in)
    w_dec = w_enc.T
    g = jax.random.normal(key, (args.batch, args.d_in))
    matmuls = (jax.jit(_dense_products), (x, w_enc, w_dec, g))

    steps = {}
    for name in ("jumprelu", "gated", "topk"):
        arch = sae.ARCHITECTURES[name]
        cfg = arch.default_config()
        params = arch.init(key, args.d_in, args.width, cfg)
        opt_state = sae.optimizer(cfg).init(params)
        step = jax.jit(sae.make_train_step(name, cfg))
        steps[name] = (step, (params, opt_state, x, jnp.int32(20_000), cfg[arch.SWEEP_FIELD]))

    times = {name: [] for name in ("matmuls", *steps)}
    for _ in range(args.rounds):  # interleave so load changes hit every candidate alike
        times["matmuls"].append(_time(*matmuls, args.repeats))
        for name, (fn, fn_args) in steps.items():
            times[name].append(_time(fn, fn_args, args.repeats))

    flops = 2 * 5 * args.batch * args.d_in * args.width
    base = min(times["matmuls"])
    print(
        f"shape: d_in={args.d_in} width={args.width} batch={args.batch}; "
        f"{jax.devices()[0].platform}, {jax.device_count()} device(s)"
    )
    print("| what | best ms | ratio to matmuls | GFLOP/s (5 products) |")
    print("| --- | --- | --- | --- |")
    for name, samples in times.items():
        best = min(samples)
        print(f"| {name} | {1e3 * best:.1f} | {best / base:.2f} | {flops / best / 1e9:.1f} |")


if __name__ == "__main__":
    main()
