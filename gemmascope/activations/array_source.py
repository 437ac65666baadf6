"""`ArraySource`: an in-memory (tokens, d_in) array as an `ActivationSource`.

For tests, notebooks and synthetic data:

    src = ArraySource(x, seed=0)                      # x: (n_tokens, d_in); C estimated from x
    for batch in src.iter_batches(4096, NamedSharding(mesh, P("data", None))):
        ...                                           # global fp32 jax.Array, already x / C
    state = src.state(); src.restore(state)           # resume exactly where a checkpoint was
    rows = src.hold_out(512)                          # the array's last 512 rows, never streamed

The stream is an endless sequence of epochs, each a uniform random permutation of all tokens
(one `ShuffleOrder` window covering the whole array, less any held-out rows at its end); batches
may straddle epoch boundaries, so no token is ever dropped and every token appears exactly once
per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import numpy as np

from gemmascope.activations import global_batch as global_batch_lib
from gemmascope.activations.shuffle import ShuffleOrder, check_seed
from gemmascope.activations.source import check_hold_out
from gemmascope.activations.source_position import PositionState


def estimate_norm_scale(x: np.ndarray) -> float:
    """The scalar C with mean ||x / C||^2 = 1 over the rows of x, in float64.

    docs/recipe.md#normalisation.
    """
    squared_norms = np.sum(np.square(np.asarray(x, np.float64)), axis=1)
    mean = float(np.mean(squared_norms))
    if not math.isfinite(mean) or mean <= 0.0:
        raise ValueError(
            f"cannot normalise: the mean squared norm of the activations is {mean} (need a finite "
            "positive value; are they all zero or non-finite?)"
        )
    return math.sqrt(mean)


def check_norm_scale(norm_scale) -> float:
    """Returns norm_scale as a float, or raises ValueError unless it is finite and positive."""
    try:
        value = float(norm_scale)
    except (TypeError, ValueError):
        raise ValueError(
            f"norm_scale must be a positive finite number, got {norm_scale!r}"
        ) from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"norm_scale must be a positive finite number, got {norm_scale!r}")
    return value


class ArraySource(PositionState):
    """Shuffled, normalised, sharded batches from an in-memory array.

    Attributes:
      d_in: feature width.
      n_tokens: rows in one epoch (the array's rows less the held-out ones).
      norm_scale: the scalar C; batches hold x / C.
    """

    def __init__(self, array, seed: int = 0, norm_scale: float | None = None):
        """Wraps `array`.

        Args:
          array: (n_tokens, d_in) floating array (numpy or jax). Kept in host memory.
          seed: non-negative integer fixing the shuffle.
          norm_scale: C to divide by; None estimates it from the whole array
          (docs/recipe.md#normalisation).

        Raises:
          ValueError: if the array is not a non-empty 2-D floating array of finite values, or
            seed / norm_scale are invalid.
        """
        if isinstance(array, jax.Array):
            array = jax.device_get(array)
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(
                f"array must be 2-D (n_tokens, d_in) with n_tokens, d_in >= 1, got shape "
                f"{array.shape}"
            )
        if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
            raise ValueError(f"array must hold floating-point activations, got dtype {array.dtype}")
        self._array = array
        self._seed = check_seed(seed)
        self.n_tokens, self.d_in = int(array.shape[0]), int(array.shape[1])
        if norm_scale is None:
            self.norm_scale = estimate_norm_scale(array)
        else:
            self.norm_scale = check_norm_scale(norm_scale)
        self._order = ShuffleOrder(self.n_tokens, self._seed, self.n_tokens, self.n_tokens)
        self._position = 0  # stream position of the next batch's first token
        self._held_out: np.ndarray | None = None

    def hold_out(self, n_tokens: int) -> np.ndarray:
        """The array's last `n_tokens` rows (fp32, x / C); the stream shuffles the rest only."""
        total = len(self._array)
        n_tokens = check_hold_out(n_tokens, total - 1, self._held_out)
        if self._held_out is None:
            self._held_out = self._read_rows(np.arange(total - n_tokens, total))
            self.n_tokens = total - n_tokens
            self._order = ShuffleOrder(self.n_tokens, self._seed, self.n_tokens, self.n_tokens)
        return self._held_out.copy()

    def stream_key(self) -> tuple:
        """What fixes this stream's token order (`paired.PairedSource` pairs equal keys)."""
        return ("ArraySource", self._seed, len(self._array), self.n_tokens)

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._array[rows].astype(np.float32) / np.float32(self.norm_scale)

    def iter_batches(self, batch_size: int, sharding: jax.sharding.Sharding) -> Iterator[jax.Array]:
        """Yields global fp32 (batch_size, d_in) arrays laid out per `sharding`, forever.

        Args:
          batch_size: global batch size; must split evenly over the sharding's batch axis.
          sharding: e.g. `NamedSharding(mesh, P("data", None))`.
        """
        batch_size = global_batch_lib.check_batch_sharding(batch_size, self.d_in, sharding)
        while True:
            start = self._position
            rows = self._order.rows(start, start + batch_size)
            batch = global_batch_lib.global_batch(rows, self.d_in, sharding, self._read_rows)
            self._position = start + batch_size
            yield batch
