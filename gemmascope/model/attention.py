"""Gemma self-attention up to ``o_proj`` (the ``attn_z`` site): QK-norm, RoPE, GQA, windows.

Synopsis:
    z = attention_z(cfg, layer, layer_params, x)     # (B, T, N*H), x already input-normed
    x = apply_rope(x, theta, scale)                  # (B, T, heads, H), positions 0..T-1
    mask = attention_mask(t, sliding_window)         # (T, S) bool, causal and windowed

Axis letters as in ``transformer.py`` (B batch, T query and S key positions, D d_model,
N query heads, K KV heads, G query heads per KV head, H head_dim).

The per-layer choices come from the config's architecture hooks, so one function serves Gemma 2
and Gemma 3: ``cfg.qk_norm`` (Gemma 3 RMS-normalises each query and key head, gain (1 + w),
before RoPE), ``cfg.rope(layer)`` (the layer's RoPE base and linear scaling factor: Gemma 3's
local and global layers differ) and ``cfg.is_sliding(layer)`` (the window). Numerics follow HF's
eager path: RoPE cos/sin are computed in fp32 and cast to the compute dtype, logits are
softcapped (Gemma 2) before masking, and the softmax runs in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gemmascope.model.config import GemmaConfig
from gemmascope.model.primitives import einsum, rms_norm, softcap

Array = jax.Array


def apply_rope(x: Array, theta: float, scale: float = 1.0) -> Array:
    """Rotary embedding, split-half convention (HF ``rotate_half``), positions 0..T-1.

    Args:
        x: (B, T, heads, H) queries or keys.
        theta: RoPE base frequency.
        scale: Linear scaling factor: the inverse frequencies are divided by it (HF
            ``rope_type="linear"``); 1.0 = plain RoPE.
    """
    _, t, _, h = x.shape
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    if scale != 1.0:
        inv_freq = inv_freq / jnp.float32(scale)
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, H/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # (1, T, 1, H)
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = x[..., : h // 2], x[..., h // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def attention_mask(t: int, sliding_window: int | None) -> Array:
    """(T, S) bool: query q may see key k iff k <= q and, for a window w, k > q - w."""
    q = jnp.arange(t)[:, None]
    k = jnp.arange(t)[None, :]
    mask = k <= q
    if sliding_window is not None:
        mask &= k > q - sliding_window
    return mask


def attention_z(cfg: GemmaConfig, layer: int, p: dict, x: Array) -> Array:
    """Self-attention of block ``layer`` up to (not including) o_proj: (B, T, N*H).

    Args:
        cfg: The model config.
        layer: The block's index (selects window and RoPE).
        p: The block's params (``q``, ``k``, ``v``, and ``q_norm``, ``k_norm`` with QK-norm).
        x: (B, T, D), the block input after ``input_layernorm``.
    """
    b, t, _ = x.shape
    k_heads, h = cfg.num_key_value_heads, cfg.head_dim
    groups = cfg.num_attention_heads // k_heads
    dtype = x.dtype
    q = einsum("BTD,DNH->BTNH", x, p["q"])
    k = einsum("BSD,DKH->BSKH", x, p["k"])
    v = einsum("BSD,DKH->BSKH", x, p["v"])
    if cfg.qk_norm:
        q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    theta, scale = cfg.rope(layer)
    q, k = apply_rope(q, theta, scale), apply_rope(k, theta, scale)
    # Query head n uses KV head n // G (HF repeat_kv), so N splits as (K, G).
    q = q.reshape(b, t, k_heads, groups, h)
    logits = einsum("BTKGH,BSKH->BKGTS", q, k) * cfg.query_pre_attn_scalar**-0.5
    logits = softcap(logits, cfg.attn_logit_softcapping)
    window = cfg.sliding_window if cfg.is_sliding(layer) else None
    logits = jnp.where(attention_mask(t, window), logits, jnp.finfo(dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    z = einsum("BKGTS,BSKH->BTKGH", probs, v)
    return z.reshape(b, t, cfg.attn_z_width)
