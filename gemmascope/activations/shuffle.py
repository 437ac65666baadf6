"""Deterministic token-level shuffling: an endless stream of rows, a fresh permutation per epoch.

Every source reads its tokens through a `ShuffleOrder`, which maps positions of an endless token
stream to row indices of the underlying array or cache:

    order = ShuffleOrder(n_tokens=10_000, seed=0, block_rows=512, window_tokens=2**20)
    rows = order.rows(start, stop)          # int64 rows for stream positions [start, stop)

Epoch `e` covers stream positions [e*n, (e+1)*n) and visits every row exactly once. Its order is
built in two levels so that it needs only one window of memory yet mixes globally:

1. the rows are cut into blocks of `block_rows` consecutive rows (the cache's chunk: the unit a
   reader fetches from disk), and the blocks are permuted with a seed derived from (seed, e);
2. consecutive groups of permuted blocks form windows of about `window_tokens` tokens, and the
   tokens of each window are permuted again with a seed derived from (seed, e, window).

A window therefore holds blocks drawn at random from the whole cache, not a contiguous slice of
it: mixing is at least as strong as Gemma Scope's shuffled buckets of 1e6 consecutive activations
(docs/recipe.md#training-data) whenever `window_tokens >= 1e6`, and equals a full uniform
permutation when one window covers everything. The mapping is a pure function of (seed, position),
so resuming is just remembering a position.
"""

from __future__ import annotations

import numpy as np


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_seed(seed) -> int:
    """Returns `seed` as an int, or raises ValueError unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


class ShuffleOrder:
    """Maps positions of an endless, per-epoch-permuted token stream to row indices.

    Attributes:
      n_tokens: rows in the underlying array (one epoch).
      block_rows: rows per block (blocks are permuted as units, then mixed within a window).
      blocks_per_window: blocks mixed together in one window.
    """

    def __init__(self, n_tokens: int, seed: int, block_rows: int, window_tokens: int):
        """Builds the order.

        Args:
          n_tokens: number of rows to shuffle (> 0).
          seed: non-negative integer; the same seed gives the same stream.
          block_rows: rows per block, the unit read from storage.
          window_tokens: tokens mixed together; rounded down to whole blocks (at least one).

        Raises:
          ValueError: on non-positive sizes or a negative seed.
        """
        self.n_tokens = _check_positive_int("n_tokens", n_tokens)
        self.seed = check_seed(seed)
        self.block_rows = _check_positive_int("block_rows", block_rows)
        window_tokens = _check_positive_int("window_tokens", window_tokens)
        self.n_blocks = -(-self.n_tokens // self.block_rows)
        self.blocks_per_window = max(1, min(window_tokens // self.block_rows, self.n_blocks))
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._window_cache: tuple[int, int, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The permuted block order of `epoch` and the stream offsets where its windows start."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            block_order = rng.permutation(self.n_blocks)
            block_lengths = np.full(self.n_blocks, self.block_rows, np.int64)
            block_lengths[-1] = self.n_tokens - (self.n_blocks - 1) * self.block_rows
            window_lengths = np.add.reduceat(
                block_lengths[block_order], np.arange(0, self.n_blocks, self.blocks_per_window)
            )
            window_starts = np.concatenate([[0], np.cumsum(window_lengths)])
            self._epoch_cache = (epoch, block_order, window_starts)
        return self._epoch_cache[1], self._epoch_cache[2]

    def _window(self, epoch: int, window: int) -> np.ndarray:
        """The rows of one window in stream order."""
        if self._window_cache is None or self._window_cache[:2] != (epoch, window):
            block_order, _ = self._epoch(epoch)
            k = self.blocks_per_window
            blocks = block_order[window * k : (window + 1) * k].astype(np.int64)
            rows = (blocks[:, None] * self.block_rows + np.arange(self.block_rows)).ravel()
            rows = rows[rows < self.n_tokens]
            # window + 1 keeps this seed sequence distinct from the epoch's block-order one.
            rng = np.random.default_rng([self.seed, epoch, window + 1])
            self._window_cache = (epoch, window, rng.permutation(rows))
        return self._window_cache[2]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Row indices (int64) for stream positions [start, stop), crossing epochs as needed."""
        if start < 0 or stop < start:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        pieces = []
        position = start
        while position < stop:
            epoch, offset = divmod(position, self.n_tokens)
            _, window_starts = self._epoch(epoch)
            window = int(np.searchsorted(window_starts, offset, side="right")) - 1
            in_window = offset - int(window_starts[window])
            take = min(stop - position, int(window_starts[window + 1]) - offset)
            pieces.append(self._window(epoch, window)[in_window : in_window + take])
            position += take
        if not pieces:
            return np.zeros((0,), np.int64)
        return np.concatenate(pieces)
