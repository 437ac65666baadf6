"""Model-parallel capture benchmark: Capturer tokens/s and params per device, model_parallel 1..8.

    PYTHONPATH=. python benchmarks/model_parallel.py [--devices 8] [--rounds 3]

Forces `--devices` host CPU devices (before jax is imported), builds a random Gemma 2 (d_model
256, 8 heads / 4 KV heads of 32, d_mlp 1024, vocab 4096, 4 layers) and captures every site of
every layer (resid_post, mlp_out, attn_z) from the same token batches with
`Capturer(model_parallel=m)` for each m dividing the device count, side by side: rounds alternate
between the settings and each keeps its best round. Prints a Markdown table with tokens/s, the
ratio to model_parallel=1, the parameter bytes one device really holds (its addressable shards)
and the largest difference from the model_parallel=1 activations.

On CPU the "devices" share the host's cores, so sharding buys no compute, only costs collectives:
the ratio measures GSPMD's overhead here, not the speed-up or memory relief on TPUs/GPUs, where
the reason to shard is that the model does not fit one device (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    """Parses the flags, runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4, help="forward passes per round")
    args = parser.parse_args()
    if "jax" in sys.modules:
        raise RuntimeError("jax was imported before the device count could be forced")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np

    from gemmascope import model
    from gemmascope.activations.capture import Capturer

    cfg = model.presets.tiny(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=64,
    )
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.02).astype(np.float32), shapes)
    sites = model.sites.resolve(cfg, ["*/*"])
    tokens = rng.integers(3, cfg.vocab_size, size=(args.batches, args.batch, args.seq_len))
    tokens[:, :, 0] = cfg.bos_token_id
    tokens = tokens.astype(np.int32)

    settings = [m for m in (1, 2, 4, 8) if m <= args.devices and args.devices % m == 0]
    capturers = {m: Capturer(cfg, params, sites, "float32", args.batch, m) for m in settings}
    reference = capturers[1].forward(tokens[0])
    max_diff, held = {}, {}
    for m, capturer in capturers.items():  # compile, check, and count what one device holds
        out = capturer.forward(tokens[0])
        max_diff[m] = max(float(np.max(np.abs(out[s] - reference[s]))) for s in sites)
        held[m] = sum(
            leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(capturer._params)
        )

    def run(capturer):
        handles = [capturer.dispatch(batch) for batch in tokens]
        for handle in handles:
            capturer.fetch(handle)

    best = dict.fromkeys(settings, float("inf"))
    for _ in range(args.rounds):
        for m, capturer in capturers.items():
            start = time.perf_counter()
            run(capturer)
            best[m] = min(best[m], time.perf_counter() - start)
    n_tokens = tokens.size
    total_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    print(
        f"{args.devices} CPU devices on {os.cpu_count()} cores; {total_bytes / 2**20:.1f} MiB of "
        f"params; {len(sites)} sites; {args.batches} batches of {args.batch} x {args.seq_len} "
        f"tokens per round; best of {args.rounds} rounds\n"
    )
    print(
        "| model_parallel | mesh (data x model) | tokens/s | vs model_parallel=1 "
        "| params per device | max abs diff vs 1 |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for m in settings:
        rate = n_tokens / best[m]
        print(
            f"| {m} | {args.devices // m} x {m} | {rate:,.0f} | {best[1] / best[m]:.2f} | "
            f"{held[m] / 2**20:.2f} MiB ({held[m] / total_bytes:.3f}) | {max_diff[m]:.1e} |"
        )


if __name__ == "__main__":
    main()
