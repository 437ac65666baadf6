"""The numeric building blocks of the Gemma forward pass, shared by attention and the blocks.

Synopsis:
    y = einsum("BTD,DM->BTM", x, w)        # jnp.einsum at Precision.HIGHEST
    y = rms_norm(x, offset, eps)           # Gemma's RMSNorm: fp32, gain (1 + offset), cast back
    y = softcap(x, cap)                    # cap * tanh(x / cap); identity for cap None

Numerics follow HF's Gemma eager path: RMSNorm runs in fp32 and casts back (Gemma multiplies by
the gain before the cast, unlike Llama). Matmuls request ``Precision.HIGHEST`` so fp32 compute
really is fp32 on TPU and GPU as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


def einsum(spec: str, a: Array, b: Array, **kwargs) -> Array:
    """``jnp.einsum`` at ``Precision.HIGHEST``."""
    return jnp.einsum(spec, a, b, precision=_HIGHEST, **kwargs)


def softcap(x: Array, cap: float | None) -> Array:
    """``cap * tanh(x / cap)``, or ``x`` when ``cap`` is None."""
    if cap is None:
        return x
    return jnp.tanh(x / cap) * cap


def rms_norm(x: Array, offset: Array, eps: float) -> Array:
    """``x * rsqrt(mean(x^2) + eps) * (1 + offset)`` over the last axis, in fp32, cast back."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (normed * (1.0 + offset.astype(jnp.float32))).astype(x.dtype)
