"""Per-SAE metrics as streaming sums: per-batch sums on device, exact ratios on the host.

Every metric of the table is a ratio of sums over the evaluated tokens, so a batch contributes
only a handful of sums (never stored activations) and the host adds them up in float64. The exact
definitions and masking are in docs/metrics.md; in short, with ``N`` the number of evaluated
(non-special) tokens, ``x`` a raw activation and ``x̂`` its reconstruction:

- ``l0 = Σ ||f||_0 / N``; ``mse = Σ ||x − x̂||² / (N d)``; ``recon_loss = Σ ||x − x̂||² / N``;
- ``fvu = Σ ||x − x̂||² / Σ ||x − μ||²`` with ``μ`` the mean of ``x`` over the same tokens;
- ``cosine_similarity = Σ cos(x, x̂) / N``;
- ``relative_reconstruction_bias = Σ ||x̂||² / Σ x̂·x`` (GT §4.2: ``argmin_γ E||x̂/γ − x||²``;
  1 = unbiased, below 1 = shrinkage);
- ``delta_loss = Σ (CE_spliced − CE_clean) / N_lm``; ``kl_div = Σ KL(p_clean || p_spliced) / N_lm``.

Synopsis::

    f = encode_released(params, x); x_hat = decode_released(params, f)   # raw units, fp32
    sums = reconstruction_sums(x, x_hat, f, keep)          # on device, per batch
    site = site_sums(x, keep, reference)                   # shared by every SAE of a site
    lm = lm_sums(clean_logp, spliced_logits, tokens, keep_lm)
    table_row = finalize(total_recon, total_site, total_lm, total_clean_lm, d_in)
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.sae import inference, selection

# Evaluation is full fp32 on every backend (TPU's default runs fp32 matmuls as one bf16 pass,
# GPUs' as TF32): every product here requests HIGHEST, which no ambient precision overrides.
_HIGHEST = jax.lax.Precision.HIGHEST


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _check_released(params, caller: str) -> None:
    """Raises TypeError when handed the training form instead of released params."""
    if isinstance(params, (inference.TrainingForm, inference.TranscoderForm)):
        raise TypeError(
            f"{caller} takes released (raw-unit, b_dec folded) params such as a params.npz, got "
            "a TrainingForm (training units, b_dec subtracted before encoding): fold it with "
            "export.fold(form, norm_scale) first, or use sae.encode_training_form / "
            "decode_training_form"
        )


def encode_released(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """Gemma Scope inference encoder on raw activations (docs/recipe.md#params-npz).

    ``f = relu(x @ W_enc + b_enc) * (x @ W_enc + b_enc > threshold)``, in full float32.

    Args:
      params: released params (a params.npz): ``W_enc`` (d, M), ``b_enc`` (M,), ``threshold``
        (M,).
      x: raw activations (..., d), any float dtype.

    Returns:
      latent activations (..., M), float32.

    Raises:
      TypeError: ``params`` is a ``sae.TrainingForm`` (not folded yet).
    """
    _check_released(params, "encode_released")
    pre = _matmul(jnp.asarray(x, jnp.float32), params["W_enc"]) + params["b_enc"]
    return jnp.where(pre > params["threshold"], jax.nn.relu(pre), 0.0)


def topk_encode_released(
    params: Mapping[str, jax.Array], x: jax.Array, k: jax.Array, k_max: int
) -> jax.Array:
    """TopK encoder on raw activations: each token keeps its ``k`` largest pre-activations.

    ``f = relu(π) * (π >= kth_largest(π))`` with ``π = x @ W_enc + b_enc``; ``k`` may be traced
    (members of one group differ in k) as long as ``k <= k_max`` (static).

    Raises:
      TypeError: ``params`` is a ``sae.TrainingForm`` (not folded yet).
    """
    _check_released(params, "topk_encode_released")
    pre = _matmul(jnp.asarray(x, jnp.float32), params["W_enc"]) + params["b_enc"]
    # The training's selection: exact, and 20x cheaper than XLA:CPU's TopK on short rows.
    keep = selection.row_top_k_mask(pre, k, k_max)
    return jnp.where(keep, jax.nn.relu(pre), 0.0)


def decode_released(
    params: Mapping[str, jax.Array], f: jax.Array, x: jax.Array | None = None
) -> jax.Array:
    """``x̂ = f @ W_dec + b_dec`` in full float32, in raw units.

    A skip-transcoder (``W_skip`` (d_in, d_out) in ``params``) adds ``x @ W_skip`` of its raw
    input ``x`` (docs/transcoders.md).

    Raises:
      TypeError: ``params`` is a ``sae.TrainingForm`` (its x̂ would be in training units).
      ValueError: ``params`` has ``W_skip`` but ``x`` is None.
    """
    _check_released(params, "decode_released")
    out = _matmul(f, params["W_dec"]) + params["b_dec"]
    if "W_skip" not in params:
        return out
    if x is None:
        raise ValueError("decode_released: a skip-transcoder's output needs its raw input x")
    return out + _matmul(jnp.asarray(x, jnp.float32), params["W_skip"])


def reconstruction_sums(
    x: jax.Array, x_hat: jax.Array, f: jax.Array, keep: jax.Array
) -> dict[str, jax.Array]:
    """Sums over the kept tokens of one batch for one SAE.

    Args:
      x: activations (B, T, d).
      x_hat: reconstructions (B, T, d).
      f: latent activations (B, T, M).
      keep: bool (B, T), True for tokens that count (not special, not padding rows).

    Returns:
      float32 scalars ``sq_err`` (Σ||x − x̂||²), ``cos`` (Σ cos(x, x̂); 0 where either is 0),
      ``xhat_dot_x`` (Σ x̂·x), ``xhat_sq`` (Σ||x̂||²), ``l0`` (Σ||f||_0); ``sq_err_by_position``
      (T,); ``fired`` (M,) int32, the number of kept tokens on which each latent is non-zero.
    """
    x = jnp.asarray(x, jnp.float32)
    w = keep.astype(jnp.float32)
    err = jnp.sum((x - x_hat) ** 2, axis=-1)
    dot = jnp.sum(x_hat * x, axis=-1)
    x_norm = jnp.sqrt(jnp.sum(x * x, axis=-1))
    xhat_sq = jnp.sum(x_hat * x_hat, axis=-1)
    norms = x_norm * jnp.sqrt(xhat_sq)
    cos = jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1.0), 0.0)
    active = (f != 0) & keep[..., None]
    return {
        "sq_err": jnp.sum(err * w),
        "sq_err_by_position": jnp.sum(err * w, axis=0),
        "cos": jnp.sum(cos * w),
        "xhat_dot_x": jnp.sum(dot * w),
        "xhat_sq": jnp.sum(xhat_sq * w),
        "l0": jnp.sum(active.astype(jnp.float32)),
        "fired": jnp.sum(active.astype(jnp.int32), axis=(0, 1)),
    }


def site_sums(x: jax.Array, keep: jax.Array, reference: jax.Array) -> dict[str, jax.Array]:
    """Sums over the kept tokens that give a site's total variance, shared by its SAEs.

    Shifting by a fixed ``reference`` (e.g. the first batch's mean) keeps the variance exact in
    floating point when the mean is large: ``Σ||x − μ||² = Σ||x − r||² − N ||μ − r||²``.

    Args:
      x: activations (B, T, d).
      keep: bool (B, T).
      reference: (d,) a fixed shift used for every batch of the site.

    Returns:
      ``count`` (Σ keep), ``count_by_position`` (T,), ``shifted_sum`` (d,) = Σ(x − r),
      ``shifted_sq`` = Σ||x − r||².
    """
    w = keep.astype(jnp.float32)
    dev = jnp.asarray(x, jnp.float32) - reference
    return {
        "count": jnp.sum(w),
        "count_by_position": jnp.sum(w, axis=0),
        "shifted_sum": jnp.einsum("btd,bt->d", dev, w, precision=_HIGHEST),
        "shifted_sq": jnp.sum(jnp.sum(dev * dev, axis=-1) * w),
    }


def next_token_logp(logits: jax.Array) -> jax.Array:
    """Log-probabilities (B, T, V) in float32 from logits."""
    return jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def lm_keep(keep: jax.Array) -> jax.Array:
    """Which next-token predictions count: position t < T−1 whose input and target both count.

    Args:
      keep: bool (B, T), False at special tokens (BOS, EOS, pad) and padding rows.

    Returns:
      bool (B, T − 1).
    """
    return keep[:, :-1] & keep[:, 1:]


def token_cross_entropy(logp: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token cross-entropy (B, T − 1): ``−log p(tokens[t + 1] | prefix)`` at position t."""
    targets = tokens[:, 1:]
    return -jnp.take_along_axis(logp[:, :-1], targets[..., None], axis=-1)[..., 0]


def lm_sums(
    clean_logp: jax.Array, spliced_logits: jax.Array, tokens: jax.Array, keep_lm: jax.Array
) -> dict[str, jax.Array]:
    """Sums of the spliced model's loss changes over the counted positions of one batch.

    Args:
      clean_logp: log-probabilities of the clean model (B, T, V).
      spliced_logits: logits with a reconstruction spliced in (B, T, V).
      tokens: int (B, T).
      keep_lm: bool (B, T − 1) from ``lm_keep``.

    Returns:
      ``delta_ce`` (Σ (spliced − clean) CE, differenced per position so an identical model
      gives exactly 0) and ``kl`` (Σ KL(p_clean || p_spliced)), float32 scalars.
    """
    return lm_sums_from_logp(clean_logp, next_token_logp(spliced_logits), tokens, keep_lm)


def lm_sums_from_logp(
    clean_logp: jax.Array, logp: jax.Array, tokens: jax.Array, keep_lm: jax.Array
) -> dict[str, jax.Array]:
    """``lm_sums`` from the spliced model's log-probabilities ``logp`` (B, T, V).

    Takes log-probabilities instead of logits; bitwise-equal ``clean_logp`` and ``logp`` give
    exactly 0 for both sums.
    """
    w = keep_lm.astype(jnp.float32)
    ce = token_cross_entropy(logp, tokens)
    clean_ce = token_cross_entropy(clean_logp, tokens)
    # Per position over the whole (B, T, V), then the last position dropped: reducing the
    # sliced (B, T − 1, V) views instead took XLA:CPU 8x longer (41 against 5 ms per spliced
    # pass of the demo, docs/benchmarks.md#eval-chunk-calls).
    kl = jnp.sum(jnp.exp(clean_logp) * (clean_logp - logp), axis=-1)[:, :-1]
    return {
        "delta_ce": jnp.sum((ce - clean_ce) * w),
        "kl": jnp.sum(kl * w),
    }


def firing_histogram(
    fired: np.ndarray, n_tokens: float, bins: int, min_log10: float
) -> dict[str, list]:
    """Histogram of log10 firing frequencies of the latents that fired at least once.

    Args:
      fired: (M,) counts of tokens each latent fired on.
      n_tokens: number of evaluated tokens.
      bins: number of equal-width bins on ``[min_log10, 0]``.
      min_log10: lower edge; frequencies below it go in the first bin.

    Returns:
      ``edges`` (bins + 1 log10 values), ``counts`` (bins), ``dead`` (latents that never fired).
    """
    fired = np.asarray(fired, dtype=np.float64)
    live = fired[fired > 0]
    log_freq = np.clip(np.log10(live / n_tokens), min_log10, 0.0)
    counts, edges = np.histogram(log_freq, bins=bins, range=(min_log10, 0.0))
    return {"edges": edges.tolist(), "counts": counts.tolist(), "dead": int(np.sum(fired == 0))}


def finalize(
    recon: Mapping[str, np.ndarray],
    site: Mapping[str, np.ndarray],
    lm: Mapping[str, np.ndarray],
    clean_ce: float,
    zero_delta_ce: float,
    d_in: int,
    n_lm: float,
    dense_threshold: float,
) -> dict[str, float]:
    """Turns accumulated sums (float64, on the host) into the metrics of one SAE.

    Args:
      recon: totals of ``reconstruction_sums``.
      site: totals of ``site_sums`` for the SAE's site.
      lm: totals of ``lm_sums``.
      clean_ce: Σ clean CE over the counted LM positions.
      zero_delta_ce: Σ (zero-ablated − clean) CE over the same positions.
      d_in: activation width.
      n_lm: number of counted LM positions.
      dense_threshold: a latent firing on more than this fraction of tokens is dense.

    Returns:
      dict of scalar metrics (names as the table columns; see docs/metrics.md).

    Raises:
      ValueError: no token was evaluated.
    """
    n = float(site["count"])
    if n <= 0 or n_lm <= 0:
        raise ValueError("no evaluated tokens: every position was special (BOS/EOS/pad)")
    mean_shift = np.asarray(site["shifted_sum"], np.float64) / n
    total_var = float(site["shifted_sq"]) - n * float(mean_shift @ mean_shift)
    sq_err = float(recon["sq_err"])
    fired = np.asarray(recon["fired"])
    frequency = fired / n
    delta_ce = float(lm["delta_ce"])
    return {
        "l0": float(recon["l0"]) / n,
        "fvu": sq_err / total_var if total_var > 0 else float("nan"),
        "mse": sq_err / (n * d_in),
        "recon_loss": sq_err / n,
        "cosine_similarity": float(recon["cos"]) / n,
        "relative_reconstruction_bias": (
            float(recon["xhat_sq"]) / float(recon["xhat_dot_x"])
            if float(recon["xhat_dot_x"]) != 0
            else float("nan")
        ),
        "clean_loss": clean_ce / n_lm,
        "spliced_loss": (clean_ce + delta_ce) / n_lm,
        "delta_loss": delta_ce / n_lm,
        "kl_div": float(lm["kl"]) / n_lm,
        "zero_ablation_loss": (clean_ce + zero_delta_ce) / n_lm,
        "loss_recovered": (
            (zero_delta_ce - delta_ce) / zero_delta_ce if zero_delta_ce != 0 else float("nan")
        ),
        "frac_dead": float(np.mean(fired == 0)),
        "frac_dense": float(np.mean(frequency > dense_threshold)),
    }
