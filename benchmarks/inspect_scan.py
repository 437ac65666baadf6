r"""Benchmark: the inspect pass over a sweep, and what its streaming statistics cost.

Measured side by side in one run (compilation excluded: each variant runs once to warm up, then
``--repeats`` timed runs, best kept):

- ``sweep``: ``inspect.inspect_saes`` on every SAE together: per site, one LM pass per batch
  shared by the site's SAEs (what the stage does).
- ``one by one``: ``inspect_saes`` called once per SAE (an LM pass per SAE), what a per-SAE
  dashboard loop does.
- ``encode only`` / ``encode + statistics``: one SAE's jitted step on captured activations,
  without and with the per-latent statistics (``stats.update``: top-k with windows, the firing
  sample, the histogram), to price the statistics against the encoding they follow.

Usage::

    PYTHONPATH=. python benchmarks/inspect_scan.py                    # CPU-sized defaults
    PYTHONPATH=. python benchmarks/inspect_scan.py --d_model=512 --layers=8 --vocab=8192 \\
        --seq_len=256 --sequences=32 --width=16384 --members=6       # accelerator-sized
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from random_sweep import random_params, random_sae

from gemmascope import inspect as gs_inspect
from gemmascope import model
from gemmascope.inspect import latents, stats


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(best wall s, its process CPU s) over ``repeats`` runs after one warm-up run."""
    fn()
    best = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        run = (time.perf_counter() - wall, time.process_time() - cpu)
        best = run if best is None or run[0] < best[0] else best
    return best


def _step_variants(saes, model_cfg, params, tokens, cfg, repeats: int) -> list[tuple]:
    """One SAE's jitted step on captured activations: encoding alone vs encoding + statistics."""
    entry = saes[0]
    site = entry.config["site"]
    acts = jax.jit(lambda p, t: model.collect_sites(model_cfg, p, t, [site])[site])(
        params, jnp.asarray(tokens[: cfg.batch_size])
    )
    keep = jnp.ones(acts.shape[:2], bool)
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), ("data", "model"))
    prepared = latents.prepare(entry, cfg, mesh)
    shape = stats.StatsShape.from_config(cfg)
    ids = jnp.asarray(prepared.latent_ids)

    @jax.jit
    def encode_only(p, a):
        return jnp.sum(latents.encode(p, a, k=None))

    @functools.partial(jax.jit, donate_argnums=(0,))
    def with_stats(state, p, a):
        f = latents.encode(p, a, k=None)
        return stats.update(state, f, keep, jnp.int32(0), ids, shape=shape)

    box = {"state": jax.device_put(stats.init_state(len(ids), shape))}

    def run_stats():
        box["state"] = with_stats(box["state"], prepared.params, acts)
        jax.block_until_ready(box["state"])

    encode = _timed(lambda: encode_only(prepared.params, acts).block_until_ready(), repeats)
    return [
        ("encode only (1 SAE, 1 batch)", *encode),
        ("encode + statistics", *_timed(run_stats, repeats)),
    ]


def main() -> None:
    """Runs the variants and prints a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--members", type=int, default=4, help="SAEs per site")
    parser.add_argument("--sites", default="resid_post/2,mlp_out/4")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    model_cfg = model.presets.tiny(
        num_hidden_layers=args.layers,
        hidden_size=args.d_model,
        intermediate_size=4 * args.d_model,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=args.d_model // 4,
        query_pre_attn_scalar=args.d_model // 4,
        vocab_size=args.vocab,
    )
    params = random_params(model_cfg, 0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, args.vocab, size=(args.sequences, args.seq_len), dtype=np.int32)
    tokens[:, 0] = model_cfg.bos_token_id
    sites = args.sites.split(",")
    saes = [
        random_sae(rng, site, args.d_model, args.width, 0.02 * (1 + m))
        for site in sites
        for m in range(args.members)
    ]
    cfg = gs_inspect.default_config()
    cfg.batch_size = args.batch

    def sweep():
        gs_inspect.inspect_saes(model_cfg, params, tokens, saes, cfg)

    def one_by_one():
        for entry in saes:
            gs_inspect.inspect_saes(model_cfg, params, tokens, [entry], cfg)

    rows = [("sweep (LM pass per site)", *_timed(sweep, args.repeats))]
    rows.append(("one by one (LM pass per SAE)", *_timed(one_by_one, args.repeats)))
    steps = _step_variants(saes, model_cfg, params, tokens, cfg, max(args.repeats, 5))
    print(
        f"{len(saes)} SAEs of width {args.width} on {len(sites)} sites, {args.sequences} x "
        f"{args.seq_len} tokens (batch {args.batch}), d_model {args.d_model}, "
        f"{args.layers} layers, vocab {args.vocab}; {jax.default_backend()} x "
        f"{jax.device_count()}\n"
    )
    print("| variant | wall s | cpu s | cpu vs first row |\n| --- | --- | --- | --- |")
    for group in (rows, steps):
        for name, wall, cpu in group:
            print(f"| {name} | {wall:.3f} | {cpu:.3f} | {cpu / group[0][2]:.2f} |")


if __name__ == "__main__":
    main()
