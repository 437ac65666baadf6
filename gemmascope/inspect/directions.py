"""What a latent's decoder direction does: its logit effects and its nearest latents.

**Logit effects** (the direct path from the site to the logits, as Neuronpedia's feature pages):
the decoder row ``W_dec[i]`` is taken to the residual stream, multiplied by the final RMSNorm's
scale ``(1 + final_norm)`` and by the tied unembedding ``E`` (vocabulary x d_model):

    effect_i = ((r_i * (1 + final_norm)) @ E.T)        (V,)

with ``r_i = W_dec[i]`` for ``resid_post`` and ``mlp_out`` (both live in the residual stream) and
``r_i = (W_dec[i] reshaped (heads, head_dim) @ o_proj) * (1 + post_attn_norm)`` for ``attn_z`` (the
input of ``o_proj``; Gemma's post-attention RMSNorm scale). The RMSNorms' division by the root mean
square is left out: it scales all of a token's logits alike, so it does not change which tokens
are raised or lowered most. Sites without a linear path to the residual stream (e.g. ``mlp_in``)
have no logit effects (None).

**Neighbours**: the other latents of the same SAE with the largest cosine between decoder rows.

Both run on the device in chunks of latents, so a 262k-wide SAE never materialises a
(latents x vocabulary) or (latents x latents) matrix.

Synopsis::

    up, down = logit_effects(model_cfg, model_params, "resid_post/3", w_dec_rows, n=10)
    ids, cosines = neighbours(w_dec_rows, latent_ids, w_dec, n=8)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.model import sites as model_sites

_HIGHEST = jax.lax.Precision.HIGHEST
# Entries of one chunk's (latents x vocabulary) or (latents x latents) product.
_CHUNK_ENTRIES = 1 << 24


def _through_attention_output(rows: jax.Array, o: jax.Array, post_attn_norm: jax.Array):
    """attn_z directions (S, heads * head_dim) to the residual stream (S, d_model).

    Through o_proj, then the post-attention RMSNorm's scale.
    """
    heads = rows.reshape(rows.shape[0], o.shape[0], o.shape[1])
    out = jnp.einsum("snh,nhd->sd", heads, o.astype(jnp.float32), precision=_HIGHEST)
    return out * (1.0 + post_attn_norm.astype(jnp.float32))


def _path(model_params, site: str):
    """The site's linear path to the residual stream: (kind, its parameters).

    ("residual", ()), ("attn_z", (o, post_attn_norm)), or (None, None) when there is none.
    """
    kind, layer = model_sites.parse(site)
    if kind in (model_sites.RESID_POST, model_sites.MLP_OUT):
        return "residual", ()
    if kind == model_sites.ATTN_Z:
        block = model_params["layers"][layer]
        return "attn_z", (block["o"], block["post_attn_norm"])
    return None, None


def residual_directions(model_cfg, model_params, site: str, w_dec_rows):
    """The decoder rows (S, d_site) as directions in the residual stream (S, d_model), or None.

    Raises:
      ValueError: ``site`` is not a site of the model.
    """
    model_sites.check(model_cfg, site)
    path, weights = _path(model_params, site)
    rows = jnp.asarray(w_dec_rows, jnp.float32)
    if path == "attn_z":
        return _through_attention_output(rows, *weights)
    return rows if path == "residual" else None


def _chunk_size(n_rows: int, row_entries: int) -> int:
    """Rows per chunk so that one chunk holds about ``_CHUNK_ENTRIES`` entries."""
    return int(max(1, min(n_rows, _CHUNK_ENTRIES // max(row_entries, 1))))


def _padded_chunks(rows: np.ndarray, size: int):
    """Yields (start, chunk) with every chunk padded to ``size`` rows (one compiled shape)."""
    for start in range(0, rows.shape[0], size):
        chunk = rows[start : start + size]
        if chunk.shape[0] < size:
            pad = np.zeros((size - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        yield start, chunk


@functools.partial(jax.jit, static_argnames=("path", "n"))
def _logit_chunk(rows, weights, final_norm, embed, *, path, n):
    """Top and bottom ``n`` logit effects of a chunk of decoder rows (one program per path)."""
    directions = _through_attention_output(rows, *weights) if path == "attn_z" else rows
    scale = 1.0 + final_norm.astype(jnp.float32)
    logits = jnp.matmul(directions * scale, embed.astype(jnp.float32).T, precision=_HIGHEST)
    up_values, up_ids = jax.lax.top_k(logits, n)
    down_values, down_ids = jax.lax.top_k(-logits, n)
    return up_ids, up_values, down_ids, -down_values


def logit_effects(model_cfg, model_params, site: str, w_dec_rows, n: int):
    """The ``n`` tokens each latent's direction raises most and lowers most.

    Args:
      model_cfg: the model config.
      model_params: the model's params (``embed``, ``final_norm``; ``layers[L]`` for attn_z).
      site: the SAE's site.
      w_dec_rows: (S, d_site) decoder rows of the inspected latents (numpy).
      n: tokens per side.

    Returns:
      None for a site without logit effects, else ``(up, down)``: each a pair of numpy arrays
      ``(token ids (S, n), effects (S, n))``, up sorted from the largest effect down, down from
      the most negative up.
    """
    model_sites.check(model_cfg, site)
    path, weights = _path(model_params, site)
    if path is None:
        return None
    rows = np.asarray(w_dec_rows, np.float32)
    vocab = model_cfg.vocab_size
    n = min(n, vocab)
    size = _chunk_size(rows.shape[0], vocab)
    final_norm, embed = model_params["final_norm"], model_params["embed"]
    parts = [
        jax.device_get(_logit_chunk(chunk, weights, final_norm, embed, path=path, n=n))
        for _, chunk in _padded_chunks(rows, size)
    ]
    s = rows.shape[0]
    up_ids, up_values, down_ids, down_values = (
        np.concatenate([p[i] for p in parts])[:s] for i in range(4)
    )
    return (up_ids, up_values), (down_ids, down_values)


def _unit_rows(w: jax.Array) -> jax.Array:
    w = jnp.asarray(w, jnp.float32)
    norm = jnp.sqrt(jnp.sum(w * w, axis=-1, keepdims=True))
    return w / jnp.where(norm > 0, norm, 1.0)


@functools.partial(jax.jit, static_argnames=("n",))
def _neighbour_chunk(rows, own_ids, all_rows, *, n):
    cosine = jnp.matmul(_unit_rows(rows), _unit_rows(all_rows).T, precision=_HIGHEST)
    itself = jnp.arange(all_rows.shape[0])[None, :] == own_ids[:, None]
    values, ids = jax.lax.top_k(jnp.where(itself, -jnp.inf, cosine), n)
    return ids, values


def neighbours(w_dec_rows, latent_ids, w_dec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each inspected latent's ``n`` nearest other latents of its SAE by decoder cosine.

    Args:
      w_dec_rows: (S, d) decoder rows of the inspected latents (numpy).
      latent_ids: (S,) their indices in the SAE.
      w_dec: (M, d) every decoder row of the SAE (numpy, or a device array, e.g. sharded).
      n: neighbours per latent (at most M - 1).

    Returns:
      ``(ids (S, n), cosines (S, n))``, most similar first; a zero row has cosine 0 to all.
    """
    rows = np.asarray(w_dec_rows, np.float32)
    own = np.asarray(latent_ids, np.int32)
    n = min(n, w_dec.shape[0] - 1)
    if n <= 0:
        return np.zeros((len(own), 0), np.int64), np.zeros((len(own), 0), np.float32)
    size = _chunk_size(rows.shape[0], w_dec.shape[0])
    parts = []
    for start, chunk in _padded_chunks(rows, size):
        ids = own[start : start + size]
        ids = np.concatenate([ids, np.full(size - len(ids), -1, np.int32)])
        parts.append(jax.device_get(_neighbour_chunk(chunk, ids, w_dec, n=n)))
    s = rows.shape[0]
    return (
        np.concatenate([p[0] for p in parts])[:s],
        np.concatenate([p[1] for p in parts])[:s],
    )
