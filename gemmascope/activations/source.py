"""The activation-source contract the trainer reads batches through, as a `typing.Protocol`.

Every source (ArraySource, CacheSource, StreamingSource, or one of your own) has these members
(docs/internals.md, "activations"); `check_source` says which are missing before training starts:

    src.d_in; src.n_tokens; src.norm_scale                     # batches are already x / C
    rows = src.hold_out(n_tokens)                              # before iter_batches: held-out rows
    batches = src.iter_batches(batch_size, sharding)           # a generator of global jax.Arrays
    state = src.state(); src.restore(state)                    # exact resume

Held-out rows (`hold_out`): n rows of the same activations, (n, d_in) float32 and already x / C,
identical on every process, that the source's stream never yields once they are held out. Each
source takes them from the end of what it would train on: ArraySource the array's last rows,
CacheSource the cache's last rows (its stream then ends at the last whole chunk before them),
StreamingSource the kept tokens of the corpus's last sequences (no process streams those
sequences). Holding out the same n again returns the same rows; another n is an error.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class ActivationSource(Protocol):
    """What the trainer uses of an activation source.

    Attributes:
        d_in: the activation width.
        n_tokens: rows in one epoch, or None for a stream without a fixed size.
        norm_scale: the scalar C; batches hold x / C (docs/recipe.md#normalisation).
    """

    d_in: int
    n_tokens: int | None
    norm_scale: float

    def iter_batches(
        self, batch_size: int, sharding: jax.sharding.Sharding
    ) -> Generator[jax.Array, None, None]:
        """Yields global fp32 (batch_size, d_in) arrays laid out per `sharding`, forever.

        The trainer closes the generator when it stops; one generator per source at a time.
        """

    def hold_out(self, n_tokens: int) -> np.ndarray:
        """Reserves `n_tokens` rows the stream will never yield and returns them.

        Call before `iter_batches` (and before `restore`: the stream's positions are those of
        the rows that remain). Returns (n_tokens, d_in) float32, already x / C, the same on every
        process; again with the same n, the same rows.
        """

    def state(self) -> Any:
        """A small pytree of numpy ints: the position of the next batch (checkpointed)."""

    def restore(self, state: Any) -> None:
        """Continues from a `state()`; the next `iter_batches` starts there."""


_MEMBERS = ("d_in", "n_tokens", "norm_scale", "hold_out", "iter_batches", "state", "restore")


def check_hold_out(n_tokens, available: int, held_out: np.ndarray | None) -> int:
    """Validates a `hold_out` request; returns n_tokens as an int.

    Args:
        n_tokens: the rows asked for.
        available: the rows the source could hold out while leaving some to train on.
        held_out: the rows held out before, or None.

    Raises:
        ValueError: n_tokens is not a positive integer, leaves nothing to train on, or differs
            from an earlier hold-out.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise ValueError(f"hold_out: n_tokens must be a positive integer, got {n_tokens!r}")
    if held_out is not None and len(held_out) != n_tokens:
        raise ValueError(
            f"hold_out: {len(held_out)} rows are already held out; a source holds out once "
            f"(asked for {n_tokens})"
        )
    if n_tokens > available:
        raise ValueError(
            f"hold_out: {n_tokens} held-out rows would leave nothing to train on (at most "
            f"{available} can be held out); lower job_cfg.batch_size or turn held-out metrics off "
            "(job_cfg.heldout_every_tokens = 0)"
        )
    return int(n_tokens)


def check_source(source: Any) -> ActivationSource:
    """Returns `source` if it has every member of `ActivationSource`, else raises TypeError.

    The message names the missing members.
    """
    if isinstance(source, ActivationSource):
        return source
    missing = sorted(set(_MEMBERS) - set(dir(source)))
    raise TypeError(
        f"{type(source).__name__} is not an activation source: it lacks {missing} "
        "(gemmascope.activations.ActivationSource; docs/internals.md, 'activations')"
    )
