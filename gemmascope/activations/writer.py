"""`build_cache`: corpus -> model forward -> one sharded zarr3 array per site, resumable.

    from gemmascope import activations
    dirs = activations.build_cache(config, workdir)   # {site: workdir/activations/<kind>/<layer>}

`config` is a study config with sections `model` (path, dtype), `data` (`data.default_config()`),
`sites` (globs) and `cache` (`activations.default_config()`). The writer

1. tokenizes and packs `config.data`'s split and computes every kept token's row (TokenLayout):
   BOS/EOS/pad are dropped (`cache.drop_special`) and so, with `data.chat_wrap`, are the chat
   user-prefix tokens (`data.user_prefix_mask`, a function of the token ids);
2. checks every target directory (the per-token metadata array and each site) before writing
   anything: an existing cache must have the same fingerprint, else a CacheError names what
   differs; a directory with data but no (or a corrupt) meta.json is refused, never overwritten;
3. gives each JAX process a contiguous range of shards; the process runs the model (its params
   sharded over `cache.model_parallel` of its local devices, loaded straight into their shards,
   batches over the rest: `Capturer`) on the
   sequences covering the shards it still lacks and writes each shard whole (atomic), so the
   shards present on disk are the progress record. SIGKILL at any moment and rerun: the missing
   shards are recomputed from the same deterministic inputs, bit for bit;
4. when all shards exist, process 0 estimates each site's normalisation scalar C on a sample of
   chunks and marks meta.json complete. Readers refuse incomplete caches.

With `verify=True` (`--mode=cache`) step 2 also checks every written shard of every array,
finished ones included (its size, index checksum and chunk extents: `storage.shard_problems`);
an array with damaged shards is marked incomplete, those shards are deleted, and step 3 computes
them again from the same inputs, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from gemmascope import data, model
from gemmascope.activations import storage
from gemmascope.activations.array_source import estimate_norm_scale
from gemmascope.activations.capture import Capturer, TokenLayout
from gemmascope.activations.config import check_config, default_config
from gemmascope.model import params as lm_params

MODEL_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_SAMPLED_HASH_BYTES = 1 << 20


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _file_identity(path: Path) -> dict:
    """Size and sha256 of a file; for large files, of its first and last MiB (cheap but telling)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= 64 * _SAMPLED_HASH_BYTES:
            digest.update(f.read())
            how = "full"
        else:
            digest.update(f.read(_SAMPLED_HASH_BYTES))
            f.seek(size - _SAMPLED_HASH_BYTES)
            digest.update(f.read())
            how = "first and last MiB"
    return {"bytes": size, "sha256": digest.hexdigest(), "hashed": how}


def model_identity(folder: str, dtype: str) -> dict:
    """What determines a model's activations: its config, weights files and compute dtype."""
    folder_path = Path(folder)
    files = sorted(folder_path.glob("*.safetensors")) + [folder_path / "config.json"]
    return {"dtype": dtype, "files": {f.name: _file_identity(f) for f in files if f.is_file()}}


def _fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _differences(stored, requested, prefix="") -> list[str]:
    """Human-readable paths where two identity dicts differ."""
    if isinstance(stored, dict) and isinstance(requested, dict):
        out = []
        for key in sorted(set(stored) | set(requested)):
            out += _differences(stored.get(key), requested.get(key), f"{prefix}{key}.")
        return out
    if stored != requested:
        return [f"{prefix.rstrip('.')}: cache has {stored!r}, now asked for {requested!r}"]
    return []


class _Target:
    """One array to write: the per-token metadata or one site."""

    def __init__(self, path: str, site: str | None, width: int, dtype: str, identity: dict):
        self.path, self.site, self.width, self.dtype = path, site, width, dtype
        self.identity = identity
        self.fingerprint = _fingerprint(identity)
        self.complete = False
        self.damaged: dict[int, str] = {}
        self.array = None

    def inspect(self) -> None:
        """Checks the directory; sets `complete`. Raises CacheError on any conflict."""
        if storage.read_bytes(self.path, storage.META) is None:
            if storage.list_keys(self.path):
                raise storage.CacheError(
                    f"{self.path!r} holds data but no {storage.META}; refusing to overwrite it. "
                    "Delete the directory (or use another workdir) to rebuild."
                )
            return
        meta = storage.read_meta(self.path)
        if meta.get("fingerprint") != self.fingerprint:
            diffs = _differences(meta.get("identity", {}), self.identity)
            raise storage.CacheError(
                f"the cache in {self.path!r} was made from a different model, corpus or config; "
                f"refusing to write into it. Differences: {'; '.join(diffs) or 'fingerprint'}. "
                "Use another workdir or delete the directory."
            )
        self.complete = bool(meta.get("complete"))
        self.meta_on_disk = meta

    def verify(self) -> None:
        """Checks every written shard (storage.shard_problems); damage makes it incomplete."""
        if storage.read_bytes(self.path, storage.META) is None:
            return
        meta = self.meta_on_disk
        if self.complete:  # every shard must be there
            n_shards = -(-int(meta["n_tokens"]) // int(meta["shard_rows"]))
            self.damaged = storage.shard_problems(self.path, meta, range(n_shards))
        else:
            self.damaged = storage.shard_problems(self.path, meta)
        if self.damaged:
            self.complete = False

    def repair(self) -> None:
        """Marks the array incomplete and deletes its damaged shards (computed again next)."""
        name = self.site or "token metadata"
        for shard, problem in sorted(self.damaged.items()):
            logging.warning(
                "cache %s (%s): shard %d is damaged (%s); computing it again",
                name,
                self.path,
                shard,
                problem,
            )
        storage.write_json(self.path, storage.META, self.meta(complete=False))
        storage.delete_shards(self.path, [s for s, p in self.damaged.items() if p != "missing"])

    def meta(self, complete: bool, norm_scale: float | None = None) -> dict:
        layout = self.identity["layout"]
        meta = {
            "format": storage.FORMAT,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            "complete": complete,
            "site": self.site,
            "n_tokens": layout["n_tokens"],
            "d_in": self.width,
            "dtype": self.dtype,
            "shard_rows": layout["shard_rows"],
            "chunk_rows": layout["chunk_rows"],
            "model": self.identity["model"],
            "corpus": self.identity["corpus"],
        }
        if self.site is None:
            meta["columns"] = list(storage.TOKEN_COLUMNS)
        else:
            meta["norm_scale"] = norm_scale
        return meta


def _targets(config, cache_cfg, model_cfg, model_path, sites, layout, seqs, user_prefix, workdir):
    common = {
        "model": model_identity(model_path, config.model.get("dtype", "float32") or "float32"),
        "corpus": data.identity(config.data),
        "sequences": {
            "split": cache_cfg.split,
            "count": int(seqs.shape[0]),
            "seq_len": int(seqs.shape[1]),
            "sha256": hashlib.sha256(np.ascontiguousarray(seqs, np.int32).tobytes()).hexdigest(),
        },
        "drop_special": bool(cache_cfg.drop_special),
        # Token ids of the chat user prefix left out of the rows (data.chat_wrap); [] = none.
        "excluded_user_prefix_ids": [int(i) for i in user_prefix],
        "layout": {
            "n_tokens": layout.n_tokens,
            "shard_rows": cache_cfg.shard_rows,
            "chunk_rows": cache_cfg.chunk_rows,
        },
    }
    root = storage.cache_root(workdir)
    tokens_identity = {**common, "array": "tokens", "dtype": "int32"}
    targets = [_Target(storage.join(root, storage.TOKENS), None, 3, "int32", tokens_identity)]
    for site in sites:
        width = model.sites.dim(model_cfg, site)
        identity = {
            **common,
            "array": site,
            "dtype": cache_cfg.dtype,
            "d_in": width,
            "norm_sample_tokens": cache_cfg.norm_sample_tokens,
        }
        targets.append(
            _Target(storage.site_dir(workdir, site), site, width, cache_cfg.dtype, identity)
        )
    return targets


def _runs(shards: list[int]) -> list[tuple[int, int]]:
    """Maximal runs [a, b) of consecutive integers in a sorted list."""
    runs = []
    for s in shards:
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))
    return runs


def _batches(layout, capturer, need_sites, s0, s1, batch_size):
    """Yields {target key: rows} per batch of sequences in [s0, s1), in row order.

    The next batch's forward pass is dispatched before this one's rows are fetched and
    filtered, so the accelerator works while the host copies, filters and writes.
    """
    starts = list(range(s0, s1, batch_size))
    handles = {}

    def dispatch(i):
        if need_sites and i < len(starts):
            lo = starts[i]
            tokens = layout.sequences[lo : min(lo + batch_size, s1)].astype(np.int32)
            handles[i] = capturer.dispatch(tokens)

    dispatch(0)
    for i, lo in enumerate(starts):
        dispatch(i + 1)
        hi = min(lo + batch_size, s1)
        out = {None: layout.metadata(lo, hi)}
        if need_sites:
            acts = capturer.fetch(handles.pop(i))
            keep = layout.keep[lo:hi]
            out.update({site: a[keep] for site, a in acts.items()})
        yield out


def _write_run(run, targets, missing, layout, capturer, batch_size, shard_rows, progress):
    """Computes shards [a, b) and writes each (to the targets lacking it) as soon as it is full."""
    a, b = run
    lo, hi = a * shard_rows, min(b * shard_rows, layout.n_tokens)
    s0, s1 = layout.sequences_for_rows(lo, hi)
    need_sites = any(t.site is not None and missing[t.path] & set(range(a, b)) for t in targets)
    # Site arrays that already hold every shard of this run need no forward pass at all.
    targets = [t for t in targets if t.site is None or need_sites]
    buffers = {t.site: [] for t in targets}
    buffered, start = 0, int(layout.row_start[s0])  # rows buffered, first buffered row
    shard = a
    in_flight = []
    for batch in _batches(layout, capturer, need_sites, s0, s1, batch_size):
        for key in buffers:
            buffers[key].append(batch[key])
        buffered += len(batch[None])
        progress.update(len(batch[None]))
        while shard < b and start + buffered >= min((shard + 1) * shard_rows, layout.n_tokens):
            shard_lo, shard_hi = shard * shard_rows, min((shard + 1) * shard_rows, layout.n_tokens)
            for f in in_flight:  # at most one shard being written while the next is computed
                f.result()
            in_flight = []
            for t in targets:
                rows = np.concatenate(buffers[t.site])
                buffers[t.site] = [rows[shard_hi - start :]]
                if shard in missing[t.path]:
                    values = rows[shard_lo - start : shard_hi - start]
                    in_flight.append(t.array[shard_lo:shard_hi].write(values))
            buffered -= shard_hi - start
            start = shard_hi
            shard += 1
    for f in in_flight:
        f.result()


def load_inputs(config):
    """(model_cfg, model folder, tokenizer, resolved sites, dtype name) from a study config."""
    if "model" not in config or "data" not in config or "sites" not in config:
        raise ValueError("the config needs sections model, data and sites (and optionally cache)")
    dtype = config.model.get("dtype", "float32") or "float32"
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(MODEL_DTYPES)}, got {dtype!r}")
    path = config.model.get("path")
    if not path:
        raise ValueError("model.path is required (an HF Gemma folder or 'embedded')")
    folder = model.resolve_path(path)
    model_cfg = model.read_config(folder)
    sites = model.sites.resolve(model_cfg, list(config.sites))
    if not sites:
        raise ValueError(f"config.sites {list(config.sites)!r} matches no site of the model")
    tokenizer = model.load_tokenizer(folder)
    return model_cfg, folder, tokenizer, sites, dtype


def build_cache(config, workdir: str, verify: bool = False) -> dict[str, str]:
    """Writes (or finishes) the activation cache of every site in `config.sites`.

    Args:
      config: study config with `model`, `data`, `sites` and optional `cache` sections.
      workdir: local path or gs:// URL; arrays go under `workdir/activations/`.
      verify: also check every written shard, of finished arrays too (`storage.shard_problems`,
        one small read per shard); damaged or missing shards are deleted and computed again,
        the array being marked incomplete meanwhile (`python -m gemmascope --mode=cache`).

    Returns:
      {site: site directory}.

    Raises:
      ValueError: on bad config values or unknown sites (listing the valid ones).
      storage.CacheError: if an existing directory belongs to a different cache or is damaged;
        nothing is written in that case.
    """
    cache_cfg = config.get("cache") or default_config()
    check_config(cache_cfg)
    # Before anything is written: a model_parallel the local devices cannot take is refused.
    mesh = lm_params.lm_mesh(cache_cfg.model_parallel, field="cache.model_parallel")
    model_cfg, folder, tokenizer, sites, dtype = load_inputs(config)
    seqs = data.sequences(config.data, tokenizer, cache_cfg.split)
    user_prefix = data.user_prefix_ids(config.data, tokenizer)
    layout = TokenLayout.build(
        seqs,
        model_cfg.special_token_ids,
        cache_cfg.drop_special,
        exclude=data.user_prefix_mask(config.data, tokenizer, seqs),
    )
    targets = _targets(
        config, cache_cfg, model_cfg, folder, sites, layout, seqs, user_prefix, workdir
    )
    for t in targets:  # every check before any write: a refused build changes nothing
        t.inspect()
        if verify:
            t.verify()
    todo = [t for t in targets if not t.complete]
    result = {t.site: t.path for t in targets if t.site is not None}
    if not todo:
        return result

    shard_rows = cache_cfg.shard_rows
    # Every process inspects before anyone writes; meta.json goes first so that a directory
    # with data always has its meta.json.
    _sync("gemmascope.activations.inspected")
    if jax.process_index() == 0:
        for t in todo:
            if t.damaged:
                t.repair()
            elif storage.read_bytes(t.path, storage.META) is None:
                storage.write_json(t.path, storage.META, t.meta(complete=False))
            storage.create_array(
                t.path, layout.n_tokens, t.width, t.dtype, shard_rows, cache_cfg.chunk_rows
            )
    _sync("gemmascope.activations.created")
    for t in todo:
        t.array = storage.open_array(t.path)

    n_shards = -(-layout.n_tokens // shard_rows)
    p, n_proc = jax.process_index(), jax.process_count()
    mine = set(range(p * n_shards // n_proc, (p + 1) * n_shards // n_proc))
    missing = {t.path: mine - storage.written_shards(t.path) for t in todo}
    pending = sorted(set().union(*missing.values()))
    capturer = None
    if any(missing[t.path] for t in todo if t.site is not None):
        # Each tensor goes straight into its shards on the (data, model) mesh.
        _, params = model.load_hf(folder, dtype=MODEL_DTYPES[dtype], mesh=mesh)
        todo_sites = [t.site for t in todo if t.site is not None]
        capturer = Capturer(
            model_cfg, params, todo_sites, cache_cfg.dtype, cache_cfg.batch_size, mesh=mesh
        )
    total = sum(min((s + 1) * shard_rows, layout.n_tokens) - s * shard_rows for s in pending)
    with tqdm(
        total=total,
        unit="tok",
        unit_scale=True,
        desc="caching activations",
        disable=not cache_cfg.progress or p != 0,
    ) as progress:
        for run in _runs(pending):
            _write_run(
                run, todo, missing, layout, capturer, cache_cfg.batch_size, shard_rows, progress
            )
    _sync("gemmascope.activations.written")
    if p == 0:
        _finalize(todo, n_shards, cache_cfg)
    _sync("gemmascope.activations.finalized")
    return result


def _norm_sample_rows(n_tokens: int, chunk_rows: int, sample_tokens: int) -> np.ndarray:
    """Rows of whole chunks spread evenly over the cache, about `sample_tokens` of them."""
    n_chunks = -(-n_tokens // chunk_rows)
    take = min(n_chunks, -(-sample_tokens // chunk_rows))
    chunks = np.unique(np.linspace(0, n_chunks - 1, take).round().astype(np.int64))
    rows = (chunks[:, None] * chunk_rows + np.arange(chunk_rows)).ravel()
    return rows[rows < n_tokens]


def _finalize(todo, n_shards: int, cache_cfg) -> None:
    for t in todo:
        lacking = sorted(set(range(n_shards)) - storage.written_shards(t.path))
        if lacking:
            raise storage.CacheError(
                f"{t.path!r} still lacks shards {lacking[:10]}{'...' if len(lacking) > 10 else ''}"
                " after every process finished; rerun build_cache to complete it"
            )
        norm_scale = None
        if t.site is not None:
            rows = _norm_sample_rows(
                t.identity["layout"]["n_tokens"], cache_cfg.chunk_rows, cache_cfg.norm_sample_tokens
            )
            sample = t.array[rows].read().result()
            norm_scale = estimate_norm_scale(sample)
            logging.info(
                "cache %s: norm_scale C = %.6g from %d tokens", t.site, norm_scale, len(rows)
            )
        storage.write_json(t.path, storage.META, t.meta(complete=True, norm_scale=norm_scale))
