"""Capturing activations: which token positions become cache rows, and the jitted forward pass.

    layout = TokenLayout.build(sequences, special_ids, drop_special=True, exclude=prefix_mask)
    layout.n_tokens; layout.row_start[s]       # first cache row of sequence s
    layout.metadata(lo, hi)                    # int32 (rows, 3): token id, position, sequence id
    capture = Capturer(model_cfg, params, sites, storage_dtype="float32", batch_size=8,
                       model_parallel=4)      # params sharded 4 ways, batch over the rest
    acts = capture.forward(sequences[lo:hi])   # {site: (B, T, d_site)} host arrays

Rows are the kept tokens of the sequences, sequence by sequence, position by position. The
layout is a function of the token ids alone (BOS, EOS and pad are dropped unless
`drop_special=False`; `exclude` drops more positions, e.g. the chat user prefix, and is itself
computed from the ids by `data.user_prefix_mask`), so every process can compute every row's place
before any forward pass;
this is what lets several processes write disjoint rows of one array, and makes the row order
independent of how many processes wrote it.

The forward pass runs on a (data, model) mesh of this process's local devices
(`model.params.lm_mesh`): the params are sharded over "model" by `model.param_shardings` (heads,
KV heads, MLP hidden units and vocabulary; a dimension the axis does not divide stays replicated)
and the token rows over "data"; GSPMD partitions the jitted forward. Each process still runs its
own model copy on its own sequences. `model_parallel=1` is plain data parallelism.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gemmascope import mesh as mesh_lib
from gemmascope import model
from gemmascope.model import params as lm_params


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
        """Number of kept (cached) positions over all sequences."""
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

    @functools.partial(jax.jit, out_shardings=mesh_lib.named_sharding(mesh, ("batch", "seq", None)))
    def run(params, tokens):
        acts = model.collect_sites(model_cfg, params, tokens, capture=list(sites))
        return {site: acts[site].astype(dtype) for site in sites}

    return run


class Capturer:
    """One jitted forward pass per batch of sequences, returning every site's activations.

    The params are sharded over the "model" axis of a (data, model) mesh of this process's
    local devices and each batch is split over "data", so every process runs its own model on
    its own sequences.

    Attributes:
      mesh: the (data, model) mesh the model runs on.
      batch_size: sequences per forward pass (the requested size rounded up to a multiple of
        the data axis, so that every batch has one compiled shape).
    """

    def __init__(
        self,
        model_cfg,
        params,
        sites,
        storage_dtype: str,
        batch_size: int,
        model_parallel: int = 1,
        mesh: Mesh | None = None,
    ):
        """Places the params and compiles lazily.

        Args:
          model_cfg: the model's `GemmaConfig` (Gemma 2 or 3).
          params: its params, anywhere (host, one device, or already on `mesh`: loading with
            `model.load_hf(..., mesh=lm_params.lm_mesh(m))` avoids any replicated copy).
          sites: concrete sites to capture.
          storage_dtype: dtype of the returned activations.
          batch_size: sequences per forward pass.
          model_parallel: devices on the model axis (`cache.model_parallel`); ignored when
            `mesh` is given.
          mesh: a (data, model) mesh to use instead of `lm_mesh(model_parallel)`.

        Raises:
          ValueError: a bad batch size, or a `model_parallel` that is not a positive divisor
            of the local device count (the message lists the valid values).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"cache.batch_size must be a positive integer, got {batch_size!r}")
        self.model_cfg = model_cfg
        self.sites = list(sites)
        if mesh is None:
            mesh = lm_params.lm_mesh(model_parallel, field="cache.model_parallel")
        self.mesh = mesh
        self.batch_size = mesh_lib.batch_for_mesh(batch_size, mesh)
        self._token_sharding = mesh_lib.named_sharding(mesh, ("batch", "seq"))
        self._params = lm_params.place_params(model_cfg, params, mesh)
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
