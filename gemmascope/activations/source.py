"""The activation-source contract the trainer reads batches through, as a `typing.Protocol`.

Every source (ArraySource, CacheSource, StreamingSource, or one of your own) has these members
(docs/internals.md, "activations"); `check_source` says which are missing before training starts:

    src.d_in; src.n_tokens; src.norm_scale                     # batches are already x / C
    batches = src.iter_batches(batch_size, sharding)           # a generator of global jax.Arrays
    state = src.state(); src.restore(state)                    # exact resume
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol, runtime_checkable

import jax


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

    def state(self) -> Any:
        """A small pytree of numpy ints: the position of the next batch (checkpointed)."""

    def restore(self, state: Any) -> None:
        """Continues from a `state()`; the next `iter_batches` starts there."""


_MEMBERS = ("d_in", "n_tokens", "norm_scale", "iter_batches", "state", "restore")


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
