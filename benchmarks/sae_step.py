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

With ``--block_tokens n`` (default 256; 0 skips them) it also times each step with its gradient
taken over blocks of n tokens (``make_train_step(..., block_tokens=n)``, what the trainer does on
CPU: docs/sae.md#token-blocks) and the five products done block by block (``matmuls/blocks``),
so each blocked step has its own floor beside the whole batch's.

Usage:
    PYTHONPATH=. python benchmarks/sae_step.py [--d_in 288 --width 2048 --batch 1024 --repeats 10]
        [--block_tokens 256]
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


def _dense_products_in_blocks(x, w_enc, w_dec, g, n_blocks):
    """The five products block by block, the weight gradients summed (a blocked step's floor)."""
    x_blocks = x.reshape(n_blocks, -1, x.shape[-1])
    g_blocks = g.reshape(n_blocks, -1, g.shape[-1])

    def block(sums, xg):
        x_b, g_b = xg
        pi = x_b @ w_enc
        x_hat = pi @ w_dec
        grad_f = g_b @ w_dec.T
        return (sums[0] + pi.T @ g_b, sums[1] + x_b.T @ grad_f), x_hat

    zeros = (jnp.zeros(w_dec.shape), jnp.zeros(w_enc.shape))
    (grad_w_dec, grad_w_enc), x_hat = jax.lax.scan(block, zeros, (x_blocks, g_blocks))
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
    parser.add_argument(
        "--block_tokens", type=int, default=256, help="also time steps in blocks of n (0: no)"
    )
    args = parser.parse_args()

    key = jax.random.key(0)
    x = jax.random.normal(key, (args.batch, args.d_in)) / jnp.sqrt(args.d_in)
    w_enc = jax.random.normal(key, (args.d_in, args.width)) / jnp.sqrt(args.d_in)
    w_dec = w_enc.T
    g = jax.random.normal(key, (args.batch, args.d_in))
    blocks = args.block_tokens
    candidates = {"matmuls": (jax.jit(_dense_products), (x, w_enc, w_dec, g))}
    if blocks:
        in_blocks = jax.jit(_dense_products_in_blocks, static_argnums=4)
        candidates["matmuls/blocks"] = (in_blocks, (x, w_enc, w_dec, g, args.batch // blocks))
    for name in ("jumprelu", "gated", "topk"):
        arch = sae.ARCHITECTURES[name]
        cfg = arch.default_config()
        params = arch.init(key, args.d_in, args.width, cfg)
        opt_state = sae.optimizer(cfg).init(params)
        step_args = (params, opt_state, x, jnp.int32(20_000), cfg[arch.SWEEP_FIELD])
        candidates[name] = (jax.jit(sae.make_train_step(name, cfg)), step_args)
        if blocks:
            step = jax.jit(sae.make_train_step(name, cfg, block_tokens=blocks))
            candidates[f"{name}/blocks"] = (step, step_args)

    times = {name: [] for name in candidates}
    for _ in range(args.rounds):  # interleave so load changes hit every candidate alike
        for name, (fn, fn_args) in candidates.items():
            times[name].append(_time(fn, fn_args, args.repeats))

    flops = 2 * 5 * args.batch * args.d_in * args.width
    base = min(times["matmuls"])
    print(
        f"shape: d_in={args.d_in} width={args.width} batch={args.batch}; "
        f"{jax.devices()[0].platform}, {jax.device_count()} device(s)"
    )
    floor = min(times["matmuls/blocks"]) if blocks else base
    print(f"blocks: {blocks or 'none'} tokens (0: whole batch only)")
    print("| what | best ms | ratio to matmuls | ratio to matmuls/blocks | GFLOP/s (5 products) |")
    print("| --- | --- | --- | --- | --- |")
    for name, samples in times.items():
        best = min(samples)
        print(
            f"| {name} | {1e3 * best:.1f} | {best / base:.2f} | {best / floor:.2f} "
            f"| {flops / best / 1e9:.1f} |"
        )


if __name__ == "__main__":
    main()
