"""The resumable state shared by every activation source.

    class MySource(PositionState):      # sets self._position = 0 in __init__
        ...
    saved = src.state()                 # {"position": np.int64}, checkpointed by the trainer
    src.restore(saved)                  # the next iter_batches() continues from there

Every source (ArraySource, CacheSource, StreamingSource) yields a deterministic stream of batches,
so its whole resumable state is the stream position of the next batch's first token.
"""

from __future__ import annotations

import numpy as np


class PositionState:
    """Mixin: `state()` / `restore()` over the integer attribute `_position`."""

    _position: int

    def state(self) -> dict[str, np.ndarray]:
        """The position of the next batch, as a small pytree of numpy ints."""
        return {"position": np.asarray(self._position, np.int64)}

    def restore(self, state) -> None:
        """Continues from a `state()`; the next `iter_batches` starts there."""
        try:
            position = int(np.asarray(state["position"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"state must be a dict {{'position': int}} from state(), got {state!r}"
            ) from None
        if position < 0:
            raise ValueError(f"state position must be >= 0, got {position}")
        self._position = position
