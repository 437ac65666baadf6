"""Selecting the k largest activations with a traced k (TopK, BatchTopK, AuxK).

A sweep varies k under ``vmap``, so k is a traced integer and ``lax.top_k`` (static k) cannot be
used directly. Two selections, both exact:

- :func:`row_top_k_mask` (TopK, AuxK: k per row): ``lax.top_k`` with the static bound ``k_max``,
  then each row's k-th value read at the traced index k − 1. XLA:CPU's TopK costs about 20-30 µs
  per row whatever its length (jax 0.10, measured under vmap at (3, 256, 256) and
  (3, 1024, 4096)), the bisection about 32 passes of ~1.3 ns per entry: TopK is 9x cheaper for
  rows of 4096 (87 against 791 ms of CPU at (4096, 4096), k = 32) and 5-10x dearer for rows of
  256, so rows shorter than ``TOP_K_MIN_WIDTH`` use the bisection.
- :func:`bisection_mask` (BatchTopK: B·k over the whole batch, where a static bound would be
  B·k_max of B·M and a sort): returns the mask ``values >= k-th largest`` (per row or over
the whole array) from a 32-step binary search over an order-preserving uint32 encoding of float32
values: the largest key t with ``count(key >= t) >= k``. It is exact, needs no static bound on k,
and costs 32 fused compare-and-count passes whatever k is (cheap next to the SAE's matmuls). The
alternative, ``lax.top_k`` with a static ``k_max`` and a traced rank, is sort-based on XLA:CPU:
slow for BatchTopK's B·k of B·M and AuxK's k_aux, and about 9x slower than this inside a
``lax.scan`` (measured, 512 x 512, k = 5).

Ties at the k-th value keep every tied entry (measure zero for real-valued inputs).

Synopsis::

    keep = row_top_k_mask(pi, k, k_max)              # (B, M) bool, k <= k_max per row (TopK)
    keep = bisection_mask(acts, n_tokens * k)        # (B, M) bool, B·k over the whole batch
    keep = row_top_k_mask(dead_pi, k_aux, k_aux)     # AuxK
"""

import jax
import jax.numpy as jnp
from jax import lax

_SIGN_BIT = 0x80000000
# Rows at least this long select with lax.top_k, shorter ones with the bisection (module docstring).
TOP_K_MIN_WIDTH = 1024
_ALL_BITS = 0xFFFFFFFF


def float_keys(values: jax.Array) -> jax.Array:
    """Order-preserving uint32 keys of float32 values (−inf < ... < −0 < 0 < ... < +inf)."""
    bits = lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)
    # Negative floats sort in reverse bit order: flip their magnitude bits.
    bits = jnp.where(bits >= 0, bits, bits ^ jnp.int32(0x7FFFFFFF))
    return lax.bitcast_convert_type(bits, jnp.uint32) ^ jnp.uint32(_SIGN_BIT)


def bisection_mask(values: jax.Array, k, per_row: bool = False) -> jax.Array:
    """Mask of the entries >= the k-th largest value, over the whole array or per row.

    Args:
      values: float array; ``per_row`` selects along the last axis, else over all entries.
      k: traced or static integer in [1, number of candidates].
      per_row: select k per row (last axis) instead of k overall.

    Returns:
      bool mask of values' shape.
    """
    keys = float_keys(lax.stop_gradient(values))
    axes = (keys.ndim - 1,) if per_row else tuple(range(keys.ndim))
    bound_shape = tuple(1 if axis in axes else size for axis, size in enumerate(keys.shape))
    k = jnp.asarray(k, jnp.int32)

    def narrow(_, bounds):
        low, high = bounds  # invariant: count(keys >= low) >= k and the answer is in [low, high]
        active = low < high
        mid = low + ((high - low) >> 1) + jnp.uint32(1)  # in (low, high]; no uint32 overflow
        enough = jnp.sum(keys >= mid, axis=axes, keepdims=True, dtype=jnp.int32) >= k
        low = jnp.where(active & enough, mid, low)
        high = jnp.where(active & ~enough, mid - jnp.uint32(1), high)
        return low, high

    low = jnp.zeros(bound_shape, jnp.uint32)
    high = jnp.full(bound_shape, _ALL_BITS, jnp.uint32)
    kth_key, _ = lax.fori_loop(0, 32, narrow, (low, high))
    return keys >= kth_key


def row_top_k_mask(values: jax.Array, k, k_max: int) -> jax.Array:
    """Mask of each row's entries >= that row's k-th largest value (last axis).

    ``lax.top_k`` at the static bound k_max, then the k-th value read at the traced index k − 1,
    for rows of at least ``TOP_K_MIN_WIDTH`` entries; the per-row bisection below that, where
    XLA:CPU's TopK costs more than 32 passes over a short row (module docstring).

    Args:
      values: float array (..., M).
      k: traced or static integer in [1, k_max]; clipped to that range.
      k_max: static upper bound of k (clipped to M).

    Returns:
      bool mask of values' shape; ties at the k-th value keep every tied entry, as
      :func:`bisection_mask` does.
    """
    k_max = min(int(k_max), values.shape[-1])
    k = jnp.clip(jnp.asarray(k, jnp.int32), 1, k_max)
    if values.shape[-1] < TOP_K_MIN_WIDTH:
        return bisection_mask(values, k, per_row=True)
    top, _ = lax.top_k(lax.stop_gradient(values), k_max)  # (..., k_max), descending
    kth = lax.dynamic_slice_in_dim(top, k - 1, 1, axis=-1)
    return values >= kth
