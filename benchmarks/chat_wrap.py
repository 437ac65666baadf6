"""Chat-wrapping benchmark (data.chat_wrap): two ratios measured side by side in one run.

    PYTHONPATH=. python benchmarks/chat_wrap.py [--rows 8192] [--seq_len 1024] [--rounds 3]

1. packing: `data.sequences` of the embedded corpus with the shipped tokenizer, chat-wrapped
   against plain (the extra cost is tokenizing the model prefix with every document);
2. masking: `data.user_prefix_mask` (finding the user-prefix runs from the token ids) against the
   special-token mask every cache already computes (`np.isin` of BOS/EOS/pad), on synthetic packed
   rows (--rows x --seq_len tokens, documents of 50 to 1,000 tokens).

Each side is timed in alternating rounds and the best round is kept, so the ratios are usable on
a shared machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gemmascope import assets, data, model


def _best_of(rounds, *fns):
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def _synthetic_rows(cfg, tokenizer, rows, seq_len, seed=0):
    """Packed rows of wrapped random documents, built like data.sequences packs them."""
    rng = np.random.default_rng(seed)
    prefix = data.user_prefix_ids(cfg, tokenizer)
    eos = tokenizer.eos_token_id
    need, stream = rows * (seq_len - 1), []
    while len(stream) < need:
        body = rng.integers(10, 2000, rng.integers(50, 1000)).tolist()
        stream += prefix + body + [eos]
    body = np.asarray(stream[:need], np.int32).reshape(rows, seq_len - 1)
    return np.concatenate([np.full((rows, 1), tokenizer.bos_token_id, np.int32), body], axis=1)


def main():
    """Parses the flags, runs the measurements and prints the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tokenizer = model.load_tokenizer(assets.TINY_MODEL_DIR)
    plain = data.default_config()
    plain.seq_len, plain.eval_fraction = 128, 0.0
    wrapped = plain.copy_and_resolve_references()
    wrapped.chat_wrap = True

    n_plain = data.sequences(plain, tokenizer).size
    n_wrapped = data.sequences(wrapped, tokenizer).size
    pack_plain, pack_wrapped = _best_of(
        args.rounds,
        lambda: data.sequences(plain, tokenizer),
        lambda: data.sequences(wrapped, tokenizer),
    )

    seqs = _synthetic_rows(wrapped, tokenizer, args.rows, args.seq_len)
    special = (0, tokenizer.eos_token_id, tokenizer.bos_token_id)
    n_masked = int(data.user_prefix_mask(wrapped, tokenizer, seqs).sum())
    isin, prefix_mask = _best_of(
        args.rounds,
        lambda: np.isin(seqs, special),
        lambda: data.user_prefix_mask(wrapped, tokenizer, seqs),
    )

    print("| measurement | baseline | chat-wrapped | ratio |")
    print("| --- | --- | --- | --- |")
    print(
        f"| data.sequences, embedded corpus ({n_plain:,} / {n_wrapped:,} tokens) | "
        f"{pack_plain:.2f} s | {pack_wrapped:.2f} s | {pack_wrapped / pack_plain:.2f} |"
    )
    print(
        f"| mask of {seqs.size:,} tokens ({n_masked:,} user-prefix): np.isin specials vs "
        f"user_prefix_mask | {isin * 1e3:.0f} ms | {prefix_mask * 1e3:.0f} ms | "
        f"{prefix_mask / isin:.2f} |"
    )


if __name__ == "__main__":
    main()
