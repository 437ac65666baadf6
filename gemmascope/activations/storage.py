"""On-disk format of the activation cache: zarr3 arrays with the sharding codec, and meta.json.

    root = storage.cache_root(workdir)                  # workdir/activations (local or gs://)
    site_dir = storage.site_dir(workdir, "resid_post/3")  # workdir/activations/resid_post/3
    arr = storage.create_array(site_dir, n_rows, d, "float32", shard_rows, chunk_rows)
    arr = storage.open_array(site_dir)
    storage.write_json(site_dir, "meta.json", meta); storage.read_meta(site_dir)
    storage.written_shards(site_dir)                    # shard indices already on disk

One directory holds one zarr3 array (rows = tokens) and its `meta.json`. A zarr3 "shard" is one
object of `shard_rows` consecutive rows (one file locally, one object on GCS) made of inner chunks
of `chunk_rows` rows, the unit a reader fetches. Every shard is written whole in a single kvstore
write, which tensorstore makes atomic (temp file + rename locally, one object upload on GCS): a
shard's key exists if and only if all of its rows are written. The writer uses exactly that as
its progress record, so there is no separate progress file that could disagree with the data.

Paths are local paths or URLs tensorstore understands (`gs://bucket/prefix`, `file:///abs`);
all file access goes through tensorstore's kvstore so both behave the same.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorstore as ts

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
