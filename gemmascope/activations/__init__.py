"""Activation sources for SAE training: in-memory arrays, the on-disk cache, and streaming.

Every source has the interface the trainer uses (docs/internals.md):

    src.d_in; src.n_tokens; src.norm_scale          # batches are already x / norm_scale
    for batch in src.iter_batches(batch_size, sharding): ...   # global fp32 jax.Arrays
    state = src.state(); src.restore(state)          # exact resume

- `ArraySource(array, seed=0, norm_scale=None)`: an in-memory (tokens, d_in) array.
"""

from gemmascope.activations.array_source import ArraySource, estimate_norm_scale

__all__ = ["ArraySource", "estimate_norm_scale"]
