"""Activation pipeline I/O benchmark: three ratios measured side by side in one run.

    PYTHONPATH=. python benchmarks/activations_io.py [--rows 131072] [--width 1024] [--dir /tmp/x]

1. cache write: the cache's storage path (zarr3 sharded arrays written shard by shard through
   tensorstore, one shard in flight, as build_cache does) against a raw sequential write of the
   same bytes to the same disk (one file per shard, fsync'd like tensorstore's file driver);
2. shuffled read: CacheSource.iter_batches (windowed chunk shuffle, fp32 normalisation, global
   jax.Array assembly) against a raw sequential read of the same shard files;
3. capture: build_cache tokens/s (forward for all sites + filtering + writing every site) against
   the model's plain jitted forward pass on the same sequences (logits only, nothing stored).

Prints a Markdown table. Page cache is warm for both reads (same conditions for both sides).
Each side is timed in alternating rounds and the best round is kept (3 rounds for I/O, 2 for
capture), which makes the ratios usable on a shared machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import tempfile
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope import activations, data, model
from gemmascope.activations import storage


def _best_of(repeats, *fns):
    """The best (smallest) time of each fn over `repeats` alternating rounds.

    On a shared machine the minimum is the least disturbed measurement, for both sides alike.
    """
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def bench_write(root, x, shard_rows, chunk_rows):
    """Best-of-3 seconds of writing `x` as a cache array and as raw shard files."""
    path = os.path.join(root, "write_cache")
    arr = storage.create_array(path, len(x), x.shape[1], "float32", shard_rows, chunk_rows)

    def cache_write():
        in_flight = None
        for lo in range(0, len(x), shard_rows):
            future = arr[lo : lo + shard_rows].write(x[lo : lo + shard_rows])
            if in_flight is not None:
                in_flight.result()
            in_flight = future
        in_flight.result()

    raw_dir = os.path.join(root, "write_raw")
    os.makedirs(raw_dir)

    def raw_write():
        for i, lo in enumerate(range(0, len(x), shard_rows)):
            with open(os.path.join(raw_dir, str(i)), "wb") as f:
                f.write(x[lo : lo + shard_rows].tobytes())
                f.flush()
                os.fsync(f.fileno())

    raw, cache = _best_of(3, raw_write, cache_write)
    return path, raw_dir, raw, cache


def bench_read(path, raw_dir, n_rows, width, shard_rows, chunk_rows, batch_size, window_tokens):
    """Seconds of a shuffled CacheSource read against a raw sequential read of the same bytes."""
    # A minimal meta.json so CacheSource opens the array written above.
    meta = {
        "format": storage.FORMAT,
        "site": "resid_post/0",
        "complete": True,
        "n_tokens": n_rows,
        "d_in": width,
        "dtype": "float32",
        "shard_rows": shard_rows,
        "chunk_rows": chunk_rows,
        "norm_scale": 1.0,
    }
    storage.write_json(path, storage.META, meta)
    files = sorted(os.listdir(raw_dir), key=int)

    def raw_read():
        for name in files:
            np.fromfile(os.path.join(raw_dir, name), np.float32)

    src = activations.CacheSource(path, seed=0, window_tokens=window_tokens)
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P("data", None))
    it = src.iter_batches(batch_size, sharding)
    next(it).block_until_ready()  # compiles the on-device normalisation outside the timing
    n_batches = n_rows // batch_size - 1

    def shuffled_read():
        for _ in range(n_batches):
            next(it).block_until_ready()

    raw_read()  # warm the page cache for both sides
    raw, shuffled = _best_of(3, raw_read, shuffled_read)
    return raw, shuffled, n_batches * batch_size


def _tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    text = data.embedded_corpus_path().read_text()
    counts = collections.Counter(re.findall(r"\w+|[^\w\s]", text))
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word, _ in counts.most_common(2048 - len(vocab)):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def bench_capture(root, n_sequences, seq_len, batch_size):
    """Seconds of capturing every site against a plain forward pass of the same batches."""
    import ml_collections

    cfg = model.presets.tiny(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        sliding_window=64,
    )
    folder = os.path.join(root, "model")
    params = model.init_params(cfg, jax.random.key(0))
    model.save_hf(cfg, params, folder)
    _tokenizer().save_pretrained(folder)
    config = ml_collections.ConfigDict()
    config.model = {"path": folder, "dtype": "float32"}
    config.data = data.default_config()
    config.data.update(seq_len=seq_len, max_sequences=n_sequences)
    config.sites = ["*/*"]
    config.cache = activations.default_config()
    config.cache.update(batch_size=batch_size, shard_rows=8192, chunk_rows=512, progress=False)
    seqs = data.sequences(config.data, model.load_tokenizer(folder), "train")
    forward = jax.jit(lambda p, t: model.forward(cfg, p, t)[0])
    forward(params, seqs[:batch_size]).block_until_ready()  # compile outside the timing

    def plain():
        for lo in range(0, len(seqs) - batch_size + 1, batch_size):
            forward(params, seqs[lo : lo + batch_size]).block_until_ready()

    warm = os.path.join(root, "capture_warmup")
    config.data.max_sequences = batch_size
    activations.build_cache(config, warm)  # compile the capture outside the timing
    config.data.max_sequences = n_sequences
    runs = iter(range(100))
    plain_s, capture_s = _best_of(
        2, plain, lambda: activations.build_cache(config, os.path.join(root, f"cap{next(runs)}"))
    )
    n_sites = len(model.sites.resolve(cfg, ["*/*"]))
    return plain_s, capture_s, len(seqs) * seq_len, n_sites


def main():
    """Parses the flags, runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 17)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--shard-rows", type=int, default=16384)
    parser.add_argument("--chunk-rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--window-tokens", type=int, default=1 << 15)
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dir", default=None, help="scratch directory on the disk to measure")
    args = parser.parse_args()
    root = tempfile.mkdtemp(dir=args.dir)
    try:
        x = np.random.default_rng(0).normal(size=(args.rows, args.width)).astype(np.float32)
        mib = x.nbytes / 2**20
        path, raw_dir, raw_w, cache_w = bench_write(root, x, args.shard_rows, args.chunk_rows)
        raw_r, shuf_r, read_rows = bench_read(
            path,
            raw_dir,
            args.rows,
            args.width,
            args.shard_rows,
            args.chunk_rows,
            args.batch_size,
            args.window_tokens,
        )
        plain_s, capture_s, tokens, n_sites = bench_capture(
            root, args.sequences, args.seq_len, batch_size=8
        )
        read_mib = read_rows * args.width * 4 / 2**20
        print(
            f"data: {args.rows} rows x {args.width} fp32 = {mib:.0f} MiB; "
            f"jax devices: {jax.device_count()} {jax.devices()[0].platform}"
        )
        print("| measurement | ours | baseline | ratio (ours / baseline) |")
        print("| --- | --- | --- | --- |")
        print(
            f"| cache write vs raw sequential write | {mib / cache_w:.0f} MiB/s | "
            f"{mib / raw_w:.0f} MiB/s | {raw_w / cache_w:.2f} |"
        )
        print(
            f"| shuffled read (CacheSource) vs raw sequential read | {read_mib / shuf_r:.0f} "
            f"MiB/s | {mib / raw_r:.0f} MiB/s | {(read_mib / shuf_r) / (mib / raw_r):.2f} |"
        )
        print(
            f"| capture all {n_sites} sites + write vs plain forward | "
            f"{tokens / capture_s:.0f} tok/s | {tokens / plain_s:.0f} tok/s | "
            f"{plain_s / capture_s:.2f} |"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
