"""`CacheSource`: shuffled, normalised, sharded batches read from an activation cache.

    src = activations.open_source(workdir, "resid_post/3", seed=0)   # or CacheSource(site_dir)
    for batch in src.iter_batches(4096, NamedSharding(mesh, P("data", None))):
        ...                                   # global fp32 jax.Array (4096, d_in), already x / C
    state = src.state(); src.restore(state)   # exact resume
    rows = src.hold_out(4096)                 # the cache's last rows; the stream stops before them

Order: global batch i holds stream positions [i*B, (i+1)*B) of a `ShuffleOrder` whose blocks are
the cache's chunks and whose windows hold `window_tokens` tokens (default 2^20, i.e. at least
Gemma Scope's 1e6-token buckets, but drawn from chunks all over the cache). Within a batch, rows
are laid out in cache order; a batch is a set of tokens, so the layout changes nothing for
training, but it means each process's slice of the batch (its devices' rows) comes from a
contiguous part of the window's chunks: each process reads only about 1/P of the data.

Reads go through a per-process LRU of whole chunks sized to one window, so every chunk is read
from storage about once per epoch (local caches straight from the shard files, other URLs
through tensorstore: chunk_reading.py). A background thread prepares `prefetch` batches ahead.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator

import jax
import numpy as np

from gemmascope.activations import chunk_reading, storage
from gemmascope.activations import global_batch as global_batch_lib
from gemmascope.activations.shuffle import ShuffleOrder, check_seed
from gemmascope.activations.source import check_hold_out
from gemmascope.activations.source_position import PositionState


class _ChunkCache:
    """An LRU of whole chunks of a (rows, d) array, fetched together on a miss."""

    def __init__(self, chunk_reader, chunk_rows: int, width: int, capacity: int):
        self._reader, self._chunk_rows, self._width = chunk_reader, chunk_rows, width
        self._capacity = capacity
        self._chunks: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The values of `rows` (int64, sorted ascending), in the storage dtype."""
        r = self._chunk_rows
        chunk_of = rows // r
        needed, starts = np.unique(chunk_of, return_index=True)
        fetched = self._reader.read([c for c in needed.tolist() if c not in self._chunks])
        out = None
        bounds = np.append(starts, len(rows))
        for i, c in enumerate(needed.tolist()):
            values = fetched[c] if c in fetched else self._chunks[c]
            if out is None:
                out = np.empty((len(rows), self._width), values.dtype)
            self._chunks[c] = values
            self._chunks.move_to_end(c)
            lo, hi = bounds[i], bounds[i + 1]
            np.take(values, rows[lo:hi] - c * r, axis=0, out=out[lo:hi])
        while len(self._chunks) > self._capacity:
            self._chunks.popitem(last=False)
        return out


class CacheSource(PositionState):
    """An `ActivationSource` over one site of a cache.

    Attributes:
      d_in: feature width.
      n_tokens: rows in one epoch: the cache's, less the held-out rows and the rest of their
        first chunk (`hold_out`).
      norm_scale: the scalar C from meta.json; batches hold x / C.
      site: the site name.
      meta: the cache's meta.json.
    """

    def __init__(
        self,
        site_dir: str,
        seed: int = 0,
        window_tokens: int = 1 << 20,
        prefetch: int = 2,
        d_in: int | None = None,
    ):
        """Opens a complete site cache.

        Args:
          site_dir: `workdir/activations/<kind>/<layer>` (local path or gs:// URL).
          seed: non-negative integer fixing the shuffle.
          window_tokens: tokens mixed together (memory: one window of rows per process).
          prefetch: batches prepared ahead in a background thread (0 = none).
          d_in: if given, the width the caller expects; a different cache width is an error.

        Raises:
          storage.CacheError: missing/corrupted meta.json, an incomplete cache, a token-metadata
            directory instead of a site, an array disagreeing with its meta.json, or a d_in
            mismatch.
        """
        meta = storage.read_meta(site_dir)
        if meta.get("site") is None:
            raise storage.CacheError(
                f"{site_dir!r} is the per-token metadata array, not a site cache; open "
                "workdir/activations/<kind>/<layer>"
            )
        if not meta.get("complete"):
            raise storage.CacheError(
                f"the cache in {site_dir!r} is incomplete (its writer was interrupted); run "
                "build_cache again with the same config to finish it"
            )
        if d_in is not None and int(d_in) != meta["d_in"]:
            raise storage.CacheError(
                f"the cache in {site_dir!r} ({meta['site']}) has d_in={meta['d_in']}, but "
                f"d_in={d_in} was asked for; is this the right site and model?"
            )
        array = storage.open_array(site_dir)
        expected = (meta["n_tokens"], meta["d_in"])
        if tuple(array.shape) != expected or array.dtype.name != meta["dtype"]:
            raise storage.CacheError(
                f"the array in {site_dir!r} is {tuple(array.shape)} {array.dtype.name} but "
                f"meta.json says {expected} {meta['dtype']}; the cache is damaged, rebuild it"
            )
        self.meta = meta
        self.site = meta["site"]
        self.d_in, self.n_tokens = int(meta["d_in"]), int(meta["n_tokens"])
        self.norm_scale = float(meta["norm_scale"])
        self._seed, self._window_tokens = check_seed(seed), window_tokens
        self._order = ShuffleOrder(self.n_tokens, self._seed, meta["chunk_rows"], window_tokens)
        reader = chunk_reading.chunk_reader(site_dir, array, meta["chunk_rows"], meta["shard_rows"])
        self._chunks = _ChunkCache(
            reader, meta["chunk_rows"], self.d_in, self._order.blocks_per_window + 64
        )
        self._prefetch = int(prefetch)
        self._position = 0
        self._held_out: np.ndarray | None = None

    def hold_out(self, n_tokens: int) -> np.ndarray:
        """The cache's last `n_tokens` rows (fp32, x / C).

        The stream then shuffles whole chunks only, up to the chunk the held-out rows start in
        (the rows of that chunk before them are neither trained on nor held out).
        """
        total, chunk = int(self.meta["n_tokens"]), int(self.meta["chunk_rows"])
        n_tokens = check_hold_out(n_tokens, total - chunk, self._held_out)
        if self._held_out is None:
            rows = self._chunks.rows(np.arange(total - n_tokens, total, dtype=np.int64))
            self._held_out = rows.astype(np.float32) / np.float32(self.norm_scale)
            self.n_tokens = (total - n_tokens) // chunk * chunk
            self._order = ShuffleOrder(self.n_tokens, self._seed, chunk, self._window_tokens)
        return self._held_out.copy()

    def stream_key(self) -> tuple:
        """What fixes this stream's token order (`paired.PairedSource` pairs equal keys).

        The seed, window and rows of the stream, and the cache's identity less what is the
        site's own (so two sites of one cache build share it).
        """
        own = ("array", "dtype", "d_in", "norm_sample_tokens")
        shared = {k: v for k, v in (self.meta.get("identity") or {}).items() if k not in own}
        return (
            "CacheSource",
            self._seed,
            self._window_tokens,
            int(self.meta["chunk_rows"]),
            int(self.meta["n_tokens"]),
            self.n_tokens,
            json.dumps(shared, sort_keys=True, default=str),
        )

    def iter_batches(self, batch_size: int, sharding: jax.sharding.Sharding) -> Iterator[jax.Array]:
        """Yields global fp32 (batch_size, d_in) arrays laid out per `sharding`, forever.

        Only one iterator per source should be active at a time.
        """
        batch_size = global_batch_lib.check_batch_sharding(batch_size, self.d_in, sharding)

        # Rows travel in the storage dtype (half the bytes for bf16); the devices convert them
        # to fp32 and divide by C, sparing the host that feeds them a pass over every batch.
        # (XLA may divide via a reciprocal: results can differ from numpy's x / C by 1 ulp.)
        scale = np.float32(self.norm_scale)
        normalise = jax.jit(lambda x: x.astype(np.float32) / scale)
        read_rows = self._chunks.rows

        def produce(position):
            while True:
                rows = np.sort(self._order.rows(position, position + batch_size))
                batch = global_batch_lib.global_batch(rows, self.d_in, sharding, read_rows)
                position += batch_size
                yield position, normalise(batch)

        for position, batch in global_batch_lib.prefetch(produce(self._position), self._prefetch):
            self._position = position
            yield batch


def open_source(workdir: str, site: str, seed: int = 0, **kwargs) -> CacheSource:
    """`CacheSource` for `site` in `workdir/activations/` (kwargs go to CacheSource).

    Raises:
      ValueError: for a malformed site name.
      storage.CacheError: if that site has no cache in the workdir.
    """
    from gemmascope.model import sites

    sites.parse(site)
    path = storage.site_dir(workdir, site)
    if storage.read_bytes(path, storage.META) is None:
        raise storage.CacheError(
            f"no activation cache for site {site!r} in {storage.cache_root(workdir)!r}; build it "
            "with activations.build_cache (config.sites must include it)"
        )
    return CacheSource(path, seed=seed, **kwargs)
