"""On-disk format of the activation cache: zarr3 arrays with the sharding codec, and meta.json.

    root = storage.cache_root(workdir)                  # workdir/activations (local or gs://)
    site_dir = storage.site_dir(workdir, "resid_post/3")  # workdir/activations/resid_post/3
    arr = storage.create_array(site_dir, n_rows, d, "float32", shard_rows, chunk_rows)
    arr = storage.open_array(site_dir)
    storage.write_json(site_dir, "meta.json", meta); storage.read_meta(site_dir)
    storage.written_shards(site_dir)                    # shard indices already on disk
    storage.shard_problems(site_dir, meta)              # {shard: what is wrong}, index reads only

One directory holds one zarr3 array (rows = tokens) and its `meta.json`. A zarr3 "shard" is one
object of `shard_rows` consecutive rows (one file locally, one object on GCS) made of inner chunks
of `chunk_rows` rows, the unit a reader fetches. Every shard is written whole in a single kvstore
write, which tensorstore makes atomic (temp file + rename locally, one object upload on GCS): a
shard's key exists if and only if all of its rows are written. The writer uses exactly that as
its progress record, so there is no separate progress file that could disagree with the data.

Integrity: each shard ends with its index (per inner chunk: uint64 offset, uint64 byte count)
and the index's crc32c. The inner chunks are uncompressed, so a whole shard's size follows from
the layout; `shard_problems` checks every shard's size, index checksum and chunk extents from one
small read at its end, which finds truncated, missing or overwritten-index shards cheaply. (The
chunk bytes themselves carry no checksum: a bit flip inside a chunk is not detectable.)

Paths are local paths or URLs tensorstore understands (`gs://bucket/prefix`, `file:///abs`);
all file access goes through tensorstore's kvstore so both behave the same.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from typing import Any

import google_crc32c
import numpy as np
import tensorstore as ts
from etils import epath

# The one path join of the workdir, for local paths and URLs alike (re-exported: storage.join).
from gemmascope.files import is_url, join

FORMAT = "gemmascope.activations/1"
META = "meta.json"
TOKENS = "tokens"  # directory of the per-token metadata array, beside the <kind>/ directories
TOKEN_COLUMNS = ("token_id", "position", "sequence_id")
DTYPES = ("float32", "bfloat16")


class CacheError(ValueError):
    """A cache cannot be used as asked (missing, corrupted, incomplete or mismatched)."""


def cache_root(workdir: str) -> str:
    """`workdir/activations`."""
    return join(workdir, "activations")


def site_dir(workdir: str, site: str) -> str:
    """`workdir/activations/<kind>/<layer>` (the workdir layout of docs/concepts.md)."""
    return join(cache_root(workdir), site)


def _kvstore(path: str) -> Any:
    """A tensorstore kvstore spec for a directory (trailing '/' so keys live inside it)."""
    if is_url(path):
        return path.rstrip("/") + "/"
    return {"driver": "file", "path": os.path.abspath(os.path.expanduser(path)) + "/"}


def _open_kv(path: str) -> ts.KvStore:
    return ts.KvStore.open(_kvstore(path)).result()


def read_bytes(path: str, key: str) -> bytes | None:
    """The value stored under `key` in directory `path`, or None if there is none."""
    result = _open_kv(path).read(key).result()
    return bytes(result.value) if result.state == "value" else None


def write_json(path: str, key: str, value: dict) -> None:
    """Writes `value` as JSON under `key`, atomically (the kvstore replaces the value whole)."""
    data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
    _open_kv(path).write(key, data).result()


def list_keys(path: str) -> list[str]:
    """All keys under directory `path` (recursively), as strings."""
    return [k.decode() for k in _open_kv(path).list().result()]


def read_meta(path: str) -> dict:
    """Reads and checks `meta.json` of a cache directory.

    Raises:
      CacheError: if meta.json is missing, not valid JSON, or not a gemmascope cache's meta.
    """
    raw = read_bytes(path, META)
    if raw is None:
        raise CacheError(
            f"no {META} in {path!r}: this is not an activation cache directory, or its writer "
            "never started (build it with activations.build_cache)"
        )
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(
            f"corrupted {META} in {path!r} ({e}); delete the directory to rebuild the cache"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CacheError(
            f"{META} in {path!r} is not a {FORMAT} cache description (format="
            f"{meta.get('format') if isinstance(meta, dict) else None!r}); delete the directory "
            "to rebuild the cache"
        )
    return meta


def _spec(path: str) -> dict:
    # A small cache pool keeps shard indices (a few KiB per shard) in memory, so reading a chunk
    # costs one ranged read instead of two; chunk data is cached by the reader itself (a large
    # pool only adds copies: measured 2x slower). More concurrent file reads help local disks.
    return {
        "driver": "zarr3",
        "kvstore": _kvstore(path),
        "context": {
            "cache_pool": {"total_bytes_limit": 1 << 20},
            "file_io_concurrency": {"limit": 16},
        },
        "recheck_cached_data": False,
        # A shard of zeros must still be written, since a shard's presence marks it done.
        "store_data_equal_to_fill_value": True,
    }


def create_array(
    path: str, n_rows: int, width: int, dtype: str, shard_rows: int, chunk_rows: int
) -> ts.TensorStore:
    """Creates (or opens, if it exists with the same metadata) a (n_rows, width) zarr3 array."""
    inner = [{"name": "bytes", "configuration": {"endian": "little"}}]
    metadata = {
        "shape": [n_rows, width],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_rows, width]}},
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [chunk_rows, width],
                    "codecs": inner,
                    "index_codecs": inner + [{"name": "crc32c"}],
                },
            }
        ],
        "fill_value": 0,
    }
    return ts.open({**_spec(path), "metadata": metadata}, create=True, open=True).result()


def open_array(path: str) -> ts.TensorStore:
    """Opens the zarr3 array in `path` for reading and writing.

    Raises:
      CacheError: if there is no readable array there.
    """
    try:
        return ts.open(_spec(path), open=True).result()
    except ValueError as e:
        raise CacheError(f"no readable zarr3 array in {path!r}: {e}") from None


def shard_key(shard: int) -> str:
    """The kvstore key of shard `shard` of a 2-D array with one shard column."""
    return f"c/{shard}/0"


def written_shards(path: str) -> set[int]:
    """Indices of the shards present in the array in `path` (each one complete)."""
    done = set()
    for key in list_keys(path):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "c" and parts[2] == "0" and parts[1].isdigit():
            done.add(int(parts[1]))
    return done


_MISSING_CHUNK = 2**64 - 1  # the index entry of a chunk that was never written
_NUMPY_DTYPES = {"float32": "float32", "bfloat16": "uint16", "int32": "int32"}  # for itemsize


def _read_tail(path: str, key: str, n_bytes: int) -> tuple[int, bytes] | None:
    """(size of the file `key` in folder `path`, its last `n_bytes`), or None if it is absent."""
    target = join(path, key)
    try:
        if is_url(target):
            with epath.Path(target).open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(size - n_bytes, 0))
                return size, f.read()
        with open(os.path.expanduser(target), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return size, os.pread(f.fileno(), n_bytes, max(size - n_bytes, 0))
    except FileNotFoundError:
        return None


def _shard_problem(path: str, meta: dict, shard: int) -> str | None:
    """What is wrong with one shard of a cache array laid out as `meta` says, or None."""
    n_rows, width = int(meta["n_tokens"]), int(meta["d_in"])
    shard_rows, chunk_rows = int(meta["shard_rows"]), int(meta["chunk_rows"])
    chunk_bytes = chunk_rows * width * np.dtype(_NUMPY_DTYPES[meta["dtype"]]).itemsize
    per_shard = shard_rows // chunk_rows
    rows = min(shard_rows, n_rows - shard * shard_rows)
    present = -(-rows // chunk_rows)
    index_bytes = per_shard * 16
    expected = present * chunk_bytes + index_bytes + 4
    tail = _read_tail(path, shard_key(shard), index_bytes + 4)
    if tail is None:
        return "missing"
    size, raw = tail
    if size != expected:
        return f"{size} bytes, expected {expected}: truncated or overwritten"
    index, checksum = raw[:index_bytes], int.from_bytes(raw[index_bytes:], "little")
    if google_crc32c.value(index) != checksum:
        return "its index checksum (crc32c) does not match"
    entries = np.frombuffer(index, "<u8").reshape(per_shard, 2)
    written = entries[:, 0] != np.uint64(_MISSING_CHUNK)
    if written.sum() != present or np.any(entries[written, 1] != chunk_bytes):
        return "its index does not list the chunks its rows need"
    if np.any(entries[written].sum(axis=1) > size - index_bytes - 4):
        return "its index points past the end of the file"
    return None


def shard_problems(path: str, meta: dict, shards=None) -> dict[int, str]:
    """{shard index: what is wrong} for the damaged shards of the cache array in `path`.

    Args:
      path: a cache directory (a site or the token metadata).
      meta: its meta.json (n_tokens, d_in, dtype, shard_rows, chunk_rows).
      shards: the shards to check (default: every shard present).

    Each shard costs one read of its index (a few hundred bytes at its end), issued 16 at a time.
    """
    if shards is None:
        shards = written_shards(path)
    shards = sorted(shards)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        found = pool.map(lambda s: _shard_problem(path, meta, s), shards)
        return {s: problem for s, problem in zip(shards, found, strict=True) if problem}


def delete_shards(path: str, shards) -> None:
    """Deletes shards of the array in `path` (their rows are then computed again)."""
    store = _open_kv(path)
    for future in [store.write(shard_key(s), None) for s in shards]:  # None deletes the key
        future.result()
