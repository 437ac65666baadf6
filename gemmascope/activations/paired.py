"""`PairedSource`: (input, target) batches of two sites from the same tokens, for transcoders.

A transcoder reads one site (`mlp_in/L`) and reconstructs another (`mlp_out/L`) of the same
token. Every single-site source's order is a function of its seed and its rows' layout only
(`ShuffleOrder` over the same rows, chunks and windows; the streaming source's order over the
same sequences), so two sources of the same kind over two sites of the same tokens, opened with
the same seed and options, yield the same tokens batch after batch. `PairedSource` zips them:

    src = PairedSource(ArraySource(x, seed=0), ArraySource(y, seed=0))
    src = open_paired_source(workdir, "mlp_in/3", "mlp_out/3", seed=0)     # from the cache
    for x, y in src.iter_batches(4096, sharding): ...   # x / C_in and y / C_out, same rows
    state = src.state(); src.restore(state)             # exact resume, both streams
    x_held, y_held = src.hold_out(4096)                 # the same held-out tokens of both

It has the members of `ActivationSource` with `iter_batches` yielding pairs and `hold_out`
returning a pair, plus `d_out` and `target_norm_scale` (C_out; `norm_scale` is C_in): the
trainer trains a transcoder on it, and export folds both scalars (docs/transcoders.md).

The construction checks that both sides have the same `stream_key` (kind, seed, rows and
layout), which is what makes their orders equal. Two `StreamingSource`s each run the model, so a
paired stream costs two forward passes per window (the cache reads each site once).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from gemmascope.activations.source import check_source


class PairedSource:
    """Zips an input source and a target source whose streams visit the same tokens.

    Attributes:
      d_in: the input site's width.
      d_out: the target site's width.
      n_tokens: rows in one epoch (equal on both sides).
      norm_scale: C_in; inputs are x / C_in.
      target_norm_scale: C_out; targets are y / C_out.
      inputs: the input source.
      targets: the target source.
    """

    def __init__(self, inputs, targets):
        """Pairs two sources; raises ValueError unless their streams visit the same tokens.

        Args:
          inputs: the source of the transcoder's input site (e.g. `mlp_in/3`).
          targets: the source of the site it reconstructs (e.g. `mlp_out/3`), of the same kind,
            over the same tokens, opened with the same seed and options.

        Raises:
          TypeError: either is not an `ActivationSource`.
          ValueError: their `stream_key`s differ (another kind, seed, size or layout), so they
            would not yield the same tokens.
        """
        check_source(inputs)
        check_source(targets)
        key_in, key_out = stream_key(inputs), stream_key(targets)
        if key_in != key_out:
            raise ValueError(
                "PairedSource: the input and target sources would not yield the same tokens: "
                f"their stream keys (kind, seed, rows, layout) differ: {key_in} vs {key_out}. "
                "Open both over the same tokens (two sites of one cache, or arrays of equal "
                "length) with the same seed and options."
            )
        self.inputs, self.targets = inputs, targets
        self.d_in, self.d_out = int(inputs.d_in), int(targets.d_in)
        self.norm_scale = float(inputs.norm_scale)
        self.target_norm_scale = float(targets.norm_scale)

    @property
    def n_tokens(self) -> int | None:
        """Rows in one epoch (the input side's; both are equal)."""
        return self.inputs.n_tokens

    def hold_out(self, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """(input rows, target rows) of the same held-out tokens; see `ActivationSource`."""
        held = (self.inputs.hold_out(n_tokens), self.targets.hold_out(n_tokens))
        if stream_key(self.inputs) != stream_key(self.targets):  # pragma: no cover - invariant
            raise RuntimeError("PairedSource: holding out changed the two streams differently")
        return held

    def iter_batches(
        self, batch_size: int, sharding: jax.sharding.Sharding
    ) -> Iterator[tuple[jax.Array, jax.Array]]:
        """Yields (input (B, d_in), target (B, d_out)) global fp32 arrays per `sharding`."""
        inputs = self.inputs.iter_batches(batch_size, sharding)
        targets = self.targets.iter_batches(batch_size, sharding)
        try:
            while True:
                yield next(inputs), next(targets)
        finally:
            inputs.close()
            targets.close()

    def state(self) -> Any:
        """Both streams' positions (they advance together)."""
        return {"inputs": self.inputs.state(), "targets": self.targets.state()}

    def restore(self, state: Any) -> None:
        """Continues both streams from a `state()`."""
        try:
            inputs, targets = state["inputs"], state["targets"]
        except (KeyError, TypeError):
            raise ValueError(
                f"state must be a PairedSource.state() dict {{'inputs', 'targets'}}, got {state!r}"
            ) from None
        self.inputs.restore(inputs)
        self.targets.restore(targets)


def stream_key(source) -> tuple:
    """What fixes a source's order of tokens: equal keys, equal token streams.

    A source that defines `stream_key()` answers for itself; otherwise its type, `n_tokens` and
    its `state()` (unknown sources pair only with their own kind of the same size).
    """
    own = getattr(source, "stream_key", None)
    if callable(own):
        return tuple(own())
    return (type(source).__name__, source.n_tokens)


def open_paired_source(workdir: str, site: str, target_site: str, seed: int = 0, **kwargs):
    """A `PairedSource` over two sites of the cache in `workdir` (kwargs go to both sides).

    Raises:
      storage.CacheError: a site has no cache.
      ValueError: the two caches do not hold the same tokens in the same layout.
    """
    from gemmascope.activations.reader import open_source

    return PairedSource(
        open_source(workdir, site, seed=seed, **kwargs),
        open_source(workdir, target_site, seed=seed, **kwargs),
    )
