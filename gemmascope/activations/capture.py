"""Capturing activations: which token positions become cache rows, and the jitted forward pass.

    layout = TokenLayout.build(sequences, special_ids, drop_special=True, exclude=prefix_mask)
    layout.n_tokens; layout.row_start[s]       # first cache row of sequence s
    layout.metadata(lo, hi)                    # int32 (rows, 3): token id, position, sequence id
    capture = Capturer(model_cfg, params, sites, storage_dtype="float32", batch_size=8)
    rows = capture(sequences[lo:hi])           # {site: (kept rows of those sequences, d_site)}

Rows are the kept tokens of the sequences, sequence by sequence, position by position. The
layout is a function of the token ids alone (BOS, EOS and pad are dropped unless
`drop_special=False`; `exclude` drops more positions, e.g. the chat user prefix, and is itself
computed from the ids by `data.user_prefix_mask`), so every process can compute every row's place
before any forward pass;
this is what lets several processes write disjoint rows of one array, and makes the row order
independent of how many processes wrote it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope import model


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where each kept token of each sequence lives in the cache.

    Attributes:
      sequences: int32 (N, T) token ids.
      keep: bool (N, T), True for positions that become rows.
      row_start: int64 (N + 1,), row_start[s] is the first row of sequence s; [-1] = n_tokens.
    """

    sequences: np.ndarray
    keep: np.ndarray
    row_start: np.ndarray

    @classmethod
    def build(
        cls,
        sequences: np.ndarray,
        special_ids,
        drop_special: bool,
        exclude: np.ndarray | None = None,
    ) -> TokenLayout:
        """The layout of int (N, T) sequences.

        Args:
          sequences: token ids.
          special_ids: ids dropped when `drop_special` (the model's BOS, EOS and pad).
          drop_special: whether to drop them.
          exclude: optional bool (N, T), True at further positions to drop whatever
            `drop_special` says (the chat user prefix: `data.user_prefix_mask`).

        Raises:
          ValueError: on an empty or non-2-D array, an `exclude` of another shape, or when no
            position is left.
        """
        sequences = np.asarray(sequences)
        if sequences.ndim != 2 or sequences.shape[0] < 1 or sequences.shape[1] < 1:
            raise ValueError(f"sequences must be a non-empty (N, T) array, got {sequences.shape}")
        if drop_special:
            keep = ~np.isin(sequences, np.asarray(list(special_ids), sequences.dtype))
        else:
            keep = np.ones(sequences.shape, bool)
        if exclude is not None:
            exclude = np.asarray(exclude)
            if exclude.shape != sequences.shape or exclude.dtype != bool:
                raise ValueError(
                    f"exclude must be a bool array of the sequences' shape {sequences.shape}, "
                    f"got {exclude.dtype} {exclude.shape}"
                )
            keep &= ~exclude
        row_start = np.concatenate([[0], np.cumsum(keep.sum(axis=1, dtype=np.int64))])
        if row_start[-1] == 0:
            raise ValueError(
                "no tokens left to cache: every position is a special or excluded token"
            )
        return cls(sequences, keep, row_start)

    @property
    def n_tokens(self) -> int:
        return int(self.row_start[-1])

    def sequences_for_rows(self, lo: int, hi: int) -> tuple[int, int]:
        """The range [s0, s1) of sequences holding rows [lo, hi) (hi > lo)."""
        s0 = int(np.searchsorted(self.row_start, lo, side="right")) - 1
        s1 = int(np.searchsorted(self.row_start, hi, side="left"))
        return s0, s1

    def metadata(self, s0: int, s1: int) -> np.ndarray:
        """int32 (rows, 3) = (token id, position, sequence id) of the kept tokens of [s0, s1)."""
        seq_ids, positions = np.nonzero(self.keep[s0:s1])
        token_ids = self.sequences[s0:s1][seq_ids, positions]
        return np.stack([token_ids, positions, seq_ids + s0], axis=1).astype(np.int32)


@functools.lru_cache(maxsize=16)
def _jitted_capture(model_cfg, sites: tuple[str, ...], storage_dtype: str, mesh: Mesh):
    """The jitted capture function, shared by every Capturer with the same statics."""
    dtype = jnp.dtype(storage_dtype)

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P("data", None, None)))
    def run(params, tokens):
        acts = model.collect_sites(model_cfg, params, tokens, capture=list(sites))
        return {site: acts[site].astype(dtype) for site in sites}

    return run


class Capturer:
    """One jitted forward pass per batch of sequences, returning the kept rows of every site.

    The batch is split over this process's local devices (data parallel; params replicated),
    so every process runs its own model on its own sequences.
    """

    def __init__(self, model_cfg, params, sites, storage_dtype: str, batch_size: int):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"cache.batch_size must be a positive integer, got {batch_size!r}")
        self.model_cfg = model_cfg
        self.sites = list(sites)
        devices = jax.local_devices()
        # Pad each forward batch to a multiple of the local device count: one compiled shape.
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        mesh = Mesh(np.array(devices), ("data",))
        self._token_sharding = NamedSharding(mesh, P("data", None))
        self._params = jax.device_put(params, NamedSharding(mesh, P()))
        self._run = _jitted_capture(model_cfg, tuple(self.sites), str(storage_dtype), mesh)

    def dispatch(self, tokens: np.ndarray):
        """Starts the forward pass for int32 tokens (B, T) and returns a handle for `fetch`."""
        n = len(tokens)
        padded = np.zeros((self.batch_size, tokens.shape[1]), np.int32)
        padded[:n] = tokens
        padded[n:] = tokens[0]
        return n, self._run(self._params, jax.device_put(padded, self._token_sharding))

    def fetch(self, handle) -> dict[str, np.ndarray]:
        """{site: (B, T, d_site)} host activations in the storage dtype of a `dispatch`."""
        n, out = handle
        return {site: value[:n] for site, value in jax.device_get(out).items()}

    def forward(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """`fetch(dispatch(tokens))`."""
        return self.fetch(self.dispatch(tokens))
