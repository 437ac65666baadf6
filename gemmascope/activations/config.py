"""The `config.cache` section of a study config: how activations are captured, stored and read.

    cfg = activations.default_config()
    cfg.dtype = "bfloat16"; cfg.shard_rows = 8192

Sizes are in rows (tokens). With the defaults and Gemma 2 2B (d_model 2304, fp32) a chunk is
4.5 MiB, a good size for one ranged read from an object store, and a shard (one file or object)
is 144 MiB; the writer holds one shard per site in memory while filling it.
"""

from __future__ import annotations

import ml_collections

from gemmascope.activations import storage


def default_config() -> ml_collections.ConfigDict:
    """The cache config, with every field documented."""
    cfg = ml_collections.ConfigDict()
    # Storage dtype of activations: "float32" (Gemma Scope) or "bfloat16" (half the disk).
    cfg.dtype = "float32"
    # Rows per shard (one file/object, written whole and atomically; the unit of resume).
    cfg.shard_rows = 16384
    # Rows per inner chunk (the unit a reader fetches and the shuffle moves as a block).
    cfg.chunk_rows = 512
    # Drop BOS, EOS and pad positions (Gemma Scope collects only ordinary tokens).
    cfg.drop_special = True
    # Tokens sampled (whole chunks spread over the cache) to estimate the normalisation scalar C.
    cfg.norm_sample_tokens = 1 << 17
    # Sequences per jitted forward pass (padded to a multiple of the data axis: the local
    # device count / model_parallel).
    cfg.batch_size = 8
    # Local devices on the LM's "model" mesh axis when capturing or streaming: the params are
    # sharded that many ways (heads, KV heads, MLP units, vocabulary; a dimension it does not
    # divide stays replicated) and batches split over the remaining devices. Must divide the
    # process's local device count. 1 = params replicated, pure data parallelism. Needed when
    # the model does not fit one device (docs/scaling.md: Gemma 2 9B/27B).
    cfg.model_parallel = 1
    # Which split of config.data to cache ("train"; "eval" for held-out activations).
    cfg.split = "train"
    # Show a tqdm progress bar (tokens/s) on process 0.
    cfg.progress = True
    # Tokens shuffled together when reading: CacheSource(window_tokens=...) and the
    # StreamingSource buffer (>= Gemma Scope's 1e6-token buckets for the cache reader).
    cfg.shuffle_window_tokens = 1 << 20
    return cfg


def check_config(cfg) -> None:
    """Raises ValueError naming the bad field of a cache config."""
    if cfg.dtype not in storage.DTYPES:
        raise ValueError(f"cache.dtype must be one of {storage.DTYPES}, got {cfg.dtype!r}")
    for name in ("shard_rows", "chunk_rows", "norm_sample_tokens", "batch_size", "model_parallel"):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"cache.{name} must be a positive integer, got {value!r}")
    if cfg.shard_rows % cfg.chunk_rows:
        raise ValueError(
            f"cache.shard_rows ({cfg.shard_rows}) must be a multiple of cache.chunk_rows "
            f"({cfg.chunk_rows})"
        )
    if cfg.split not in ("train", "eval"):
        raise ValueError(f"cache.split must be 'train' or 'eval', got {cfg.split!r}")
