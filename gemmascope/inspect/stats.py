"""Per-latent statistics over a stream of batches, in memory bounded by the number of latents.

For every latent of one SAE, over the scored tokens of all batches seen (docs/inspect.md):

- ``count`` (tokens it fired on, ``f > 0``) and ``total`` (sum of its activations);
- ``hist``: a histogram of log10 of its non-zero activations, ``bins`` equal bins on
  ``[log10_low, log10_high]`` (values outside go to the end bins);
- the ``top_k`` largest activations (``top_value``), where they are (``top_pos``, a global
  position ``sequence * T + t``) and the latent's activations on the window of tokens around each
  (``top_window``, ``before`` tokens before to ``after`` after; 0 outside the sequence and at
  unscored tokens);
- a uniform sample of ``sample_size`` of its firings (``sample_value``, ``sample_pos``,
  ``sample_window``): the firings with the largest pseudo-random priorities
  ``sample_priority(position, latent, seed)``, a hash, so the sample does not depend on the
  batch size, the batch order or the sharding. The quantile examples are drawn from it.

Every batch is merged into the running state by one jitted ``update``: per latent, the batch's own
top-k (by value, then by priority) is concatenated with the kept entries and cut back to k. The
state is ``O(latents x (top_k + sample_size) x window)`` whatever the number of tokens.

Synopsis::

    shape = StatsShape(top_k=16, sample_size=32, before=12, after=4, bins=72,
                       log10_low=-3.0, log10_high=6.0, seed=0)
    state = init_state(n_latents, shape)
    state = jax.jit(update, static_argnames="shape")(state, f, keep, first_row, latent_ids,
                                                     shape=shape)   # f: (B, T, S)
    host = jax.device_get(state)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# Empty slots of the top-k and sample lists: no position, priority below any real one.
_EMPTY_POS = -1
_EMPTY_PRIORITY = -1.0


@dataclasses.dataclass(frozen=True)
class StatsShape:
    """The static sizes of the statistics (hashable: a jit static argument)."""

    top_k: int
    sample_size: int
    before: int
    after: int
    bins: int
    log10_low: float
    log10_high: float
    seed: int

    @property
    def window(self) -> int:
        """Tokens per context window: ``before + 1 + after``."""
        return self.before + 1 + self.after

    @classmethod
    def from_config(cls, cfg) -> StatsShape:
        """The shape an ``inspect`` config section asks for."""
        low, high = cfg.histogram_log10_range
        return cls(
            top_k=int(cfg.top_k),
            sample_size=int(cfg.sample_size),
            before=int(cfg.context_before),
            after=int(cfg.context_after),
            bins=int(cfg.histogram_bins),
            log10_low=float(low),
            log10_high=float(high),
            seed=int(cfg.seed),
        )

    def histogram_edges(self) -> np.ndarray:
        """The ``bins + 1`` edges of the histograms, in log10 of raw activation units."""
        return np.linspace(self.log10_low, self.log10_high, self.bins + 1)


def init_state(n_latents: int, shape: StatsShape) -> dict[str, np.ndarray]:
    """The state before any batch: zero counts, empty top-k and sample lists (host arrays)."""
    s, k, r, w = n_latents, shape.top_k, shape.sample_size, shape.window
    return {
        "count": np.zeros((s,), np.int32),
        "total": np.zeros((s,), np.float32),
        "hist": np.zeros((s, shape.bins), np.int32),
        "top_value": np.zeros((s, k), np.float32),
        "top_pos": np.full((s, k), _EMPTY_POS, np.int32),
        "top_window": np.zeros((s, k, w), np.float32),
        "sample_priority": np.full((s, r), _EMPTY_PRIORITY, np.float32),
        "sample_value": np.zeros((s, r), np.float32),
        "sample_pos": np.full((s, r), _EMPTY_POS, np.int32),
        "sample_window": np.zeros((s, r, w), np.float32),
    }


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser (a bijection that mixes every input bit)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def sample_priority(position: jax.Array, latent: jax.Array, seed: int) -> jax.Array:
    """A pseudo-random priority in [0, 1) for each (position, latent) pair, fixed by ``seed``.

    ``fmix32(position * 0x9E3779B1 + fmix32(latent ^ fmix32(seed)))``, top 24 bits / 2**24.
    """
    seed_hash = _fmix32(jnp.uint32(seed & 0xFFFFFFFF))
    latent_hash = _fmix32(jnp.asarray(latent).astype(jnp.uint32) ^ seed_hash)
    h = _fmix32(jnp.asarray(position).astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + latent_hash)
    return (h >> 8).astype(jnp.float32) * np.float32(2.0**-24)


def _windows(f: jax.Array, flat_index: jax.Array, shape: StatsShape) -> jax.Array:
    """The latent's activations around each selected position: (S, n, window).

    Args:
      f: activations (B, T, S), zero at unscored tokens.
      flat_index: (S, n) positions ``b * T + t`` within the batch.
      shape: the window's extent.
    """
    _, t_len, s = f.shape
    rows, t = flat_index // t_len, flat_index % t_len
    offsets = jnp.arange(-shape.before, shape.after + 1)
    cols = t[..., None] + offsets
    inside = (cols >= 0) & (cols < t_len)
    latent = jnp.arange(s)[:, None, None]
    values = f[rows[..., None], jnp.clip(cols, 0, t_len - 1), latent]
    return jnp.where(inside, values, 0.0)


def _merge(kept: dict, new: dict, key: str, size: int) -> dict:
    """Per latent, the ``size`` entries with the largest ``key`` among ``kept`` and ``new``.

    ``kept`` comes first, so on equal keys the earlier entry stays.
    """
    joined = {name: jnp.concatenate([kept[name], new[name]], axis=1) for name in kept}
    _, order = jax.lax.top_k(joined[key], size)
    return {
        name: jnp.take_along_axis(value, order.reshape(order.shape + (1,) * (value.ndim - 2)), 1)
        for name, value in joined.items()
    }


def _histogram(f: jax.Array, fired: jax.Array, shape: StatsShape) -> jax.Array:
    """(S, bins) counts of this batch's non-zero activations per log10 bin."""
    s = f.shape[-1]
    scale = shape.bins / (shape.log10_high - shape.log10_low)
    log_f = jnp.log10(jnp.where(fired, f, 1.0))
    bin_index = jnp.clip(jnp.floor((log_f - shape.log10_low) * scale), 0, shape.bins - 1)
    # Non-firing entries land in an extra last column, dropped below.
    bin_index = jnp.where(fired, bin_index.astype(jnp.int32), shape.bins)
    latent = jnp.broadcast_to(jnp.arange(s), bin_index.shape)
    counts = jnp.zeros((s, shape.bins + 1), jnp.int32).at[latent, bin_index].add(1)
    return counts[:, :-1]


def _candidates(values, order_key, flat_index, positions, f, shape, extra=None):
    """Fields of the per-batch candidates picked by ``flat_index`` (S, n)."""
    picked = {
        "value": jnp.take_along_axis(values, flat_index, 1),
        "pos": positions[flat_index],
        "window": _windows(f, flat_index, shape),
    }
    if extra is not None:
        picked["priority"] = jnp.take_along_axis(order_key, flat_index, 1)
    return picked


def update(
    state: dict[str, jax.Array],
    f: jax.Array,
    keep: jax.Array,
    first_row: jax.Array,
    latent_ids: jax.Array,
    *,
    shape: StatsShape,
) -> dict[str, jax.Array]:
    """Merges one batch into the state.

    A pure, traceable function: callers jit it (fused with the encoder, ``inspect.run``).

    Args:
      state: from ``init_state`` or a previous ``update``.
      f: latent activations (B, T, S), float32.
      keep: bool (B, T), the scored tokens (padding rows False).
      first_row: int32 scalar, the global index of the batch's first sequence (positions are
        ``(first_row + b) * T + t``).
      latent_ids: int32 (S,), each latent's index in its SAE (for the sample priorities).
      shape: the static sizes.

    Returns:
      the new state.
    """
    b, t_len, s = f.shape
    f = jnp.where(keep[..., None], f.astype(jnp.float32), 0.0)
    fired = f > 0
    positions = first_row * t_len + jnp.arange(b * t_len, dtype=jnp.int32)
    flat = f.reshape(b * t_len, s).T  # (S, P)
    fired_flat = fired.reshape(b * t_len, s).T

    n_top = min(shape.top_k, b * t_len)
    _, top_index = jax.lax.top_k(flat, n_top)
    top_new = _candidates(flat, None, top_index, positions, f, shape)
    top_kept = {name: state[f"top_{name}"] for name in ("value", "pos", "window")}
    top = _merge(top_kept, top_new, "value", shape.top_k)

    priority = sample_priority(positions[None, :], latent_ids[:, None], shape.seed)
    priority = jnp.where(fired_flat, priority, _EMPTY_PRIORITY)
    n_sample = min(shape.sample_size, b * t_len)
    _, sample_index = jax.lax.top_k(priority, n_sample)
    sample_new = _candidates(flat, priority, sample_index, positions, f, shape, extra=True)
    sample_kept = {name: state[f"sample_{name}"] for name in ("value", "pos", "window")}
    sample_kept["priority"] = state["sample_priority"]
    sample = _merge(sample_kept, sample_new, "priority", shape.sample_size)

    return {
        "count": state["count"] + jnp.sum(fired, axis=(0, 1), dtype=jnp.int32),
        "total": state["total"] + jnp.sum(f, axis=(0, 1)),
        "hist": state["hist"] + _histogram(f, fired, shape),
        **{f"top_{name}": value for name, value in top.items()},
        **{f"sample_{name}": value for name, value in sample.items()},
    }
