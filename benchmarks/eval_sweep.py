r"""Benchmark: evaluating a whole SAE sweep at once vs evaluating its SAEs one by one.

Three ways to get the same metric table, measured side by side in one run (compilation excluded:
each variant runs once to warm up, then ``--repeats`` timed runs, best kept):

- ``sweep``: ``evaluate_saes`` on every SAE together: one clean forward pass per batch shared by
  all SAEs of all sites, and each (site, width) group spliced batched over its stacked sweep axis
  (``splice_batch`` SAEs per vmapped forward pass).
- ``shared, sequential splices``: the same but ``splice_batch = 1`` (the clean pass is shared,
  splicing is not batched), to separate the two savings.
- ``one by one``: ``evaluate_saes`` called once per SAE (its own clean pass, zero-ablation pass
  and splice), what a per-SAE evaluation loop does.

Usage::

    PYTHONPATH=. python benchmarks/eval_sweep.py                       # CPU-sized defaults
    PYTHONPATH=. python benchmarks/eval_sweep.py --d_model=512 --layers=8 --vocab=8192 \\
        --seq_len=256 --sequences=32 --width=8192 --members=6          # accelerator-sized
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from random_sweep import random_params, random_sae

from gemmascope import eval as gs_eval
from gemmascope import model
from gemmascope.eval.sweep_eval import evaluate_saes


def _best_time(fn, repeats: int) -> tuple[float, float]:
    """Best wall seconds and best process CPU seconds (all threads) over ``repeats`` runs.

    CPU seconds are reported too because on a shared machine wall time depends on the load.
    """
    fn()  # compile and warm up
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main() -> None:
    """Parses the flags, runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--members", type=int, default=4, help="SAEs per site (sweep size)")
    parser.add_argument("--sites", default="resid_post/2,resid_post/4")
    parser.add_argument("--splice_batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    heads = max(1, args.d_model // 32)
    cfg = model.presets.tiny(
        hidden_size=args.d_model,
        intermediate_size=4 * args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=32,
        query_pre_attn_scalar=32,
        vocab_size=args.vocab,
        sliding_window=args.seq_len,
    )
    params = random_params(cfg, 0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, args.vocab, size=(args.sequences, args.seq_len)).astype(np.int32)
    tokens[:, 0] = cfg.bos_token_id
    sites = args.sites.split(",")
    saes = [
        random_sae(rng, site, args.d_model, args.width, 0.02 * (i + 1))
        for site in sites
        for i in range(args.members)
    ]

    eval_cfg = gs_eval.default_config()
    eval_cfg.batch_size = args.batch_size
    eval_cfg.splice_batch = args.splice_batch
    sequential_cfg = gs_eval.default_config()
    sequential_cfg.batch_size = args.batch_size
    sequential_cfg.splice_batch = 1

    sweep = _best_time(lambda: evaluate_saes(cfg, params, tokens, saes, eval_cfg), args.repeats)
    shared = _best_time(
        lambda: evaluate_saes(cfg, params, tokens, saes, sequential_cfg), args.repeats
    )

    def one_by_one():
        for entry in saes:
            evaluate_saes(cfg, params, tokens, [entry], eval_cfg)

    separate = _best_time(one_by_one, args.repeats)
    n = len(saes)
    n_tokens = args.sequences * args.seq_len
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; model d={args.d_model} "
        f"L={args.layers} V={args.vocab}; {n} SAEs (width {args.width}) at {len(sites)} sites; "
        f"{n_tokens} eval tokens, batch {args.batch_size}"
    )
    header = ("variant", "wall s", "wall/SAE", "vs sweep", "cpu s", "vs sweep")
    print("{:<36}{:>9}{:>10}{:>10}{:>9}{:>10}".format(*header))
    variants = (
        ("sweep (shared clean pass, batched)", sweep),
        ("shared clean pass, sequential", shared),
        ("one by one", separate),
    )
    for name, (wall, cpu) in variants:
        print(
            f"{name:<36}{wall:>9.3f}{wall / n:>10.3f}{wall / sweep[0]:>9.2f}x"
            f"{cpu:>9.2f}{cpu / sweep[1]:>9.2f}x"
        )


if __name__ == "__main__":
    main()
