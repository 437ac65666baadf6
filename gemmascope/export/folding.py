"""Fold the normalisation scalar C and the pre-encoder bias into JumpReLU weights.

The rule is docs/recipe.md#folding.

During training an SAE sees ``x = x_raw / C`` and computes
``f = JumpReLU_θ((x − b_dec) @ W_enc + b_enc)``, ``x̂ = C (f @ W_dec + b_dec)``. Released Gemma
Scope SAEs take raw activations and have no pre-encoder bias, so before export we set

- ``b_enc' = C·b_enc − C·(b_dec @ W_enc)``,
- ``b_dec' = C·b_dec``, ``θ' = C·θ``, ``W_enc' = W_enc``, ``W_dec' = W_dec``.

Then ``f' = JumpReLU_θ'(x_raw @ W_enc + b_enc') = C·f`` and ``f' @ W_dec + b_dec' = x̂_raw``.

Synopsis::

    raw = fold(sae.to_jumprelu(params, "jumprelu", cfg), norm_scale=C)
"""

from __future__ import annotations

import numpy as np

from gemmascope.export.npz_format import NPZ_KEYS, check_params
from gemmascope.sae import inference


def fold(jr_params: inference.TrainingForm, norm_scale: float) -> dict[str, np.ndarray]:
    """Returns raw-unit Gemma Scope params from normalised-unit JumpReLU params.

    Computed in float64 and returned as float32.

    Args:
      jr_params: the ``sae.TrainingForm`` that ``gemmascope.sae.to_jumprelu`` returns: ``W_enc``
        (d, M), ``W_dec`` (M, d), ``b_enc`` (M), ``b_dec`` (d), ``threshold`` (M) in normalised
        units, b_dec subtracted before encoding.
      norm_scale: the scalar C the training activations were divided by (positive, finite).

    Returns:
      dict with the five keys of ``NPZ_KEYS``, float32, in raw units (the released form).

    Raises:
      TypeError: ``jr_params`` is not a TrainingForm (e.g. released params, already folded).
      ValueError: ``norm_scale`` is not a positive finite number, or the params are malformed.
    """
    inference.check_training_form(jr_params, "export.fold")
    scale = float(norm_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"fold: norm_scale must be a positive finite number, got {norm_scale!r}")
    p = {k: np.asarray(jr_params[k], dtype=np.float64) for k in NPZ_KEYS if k in jr_params}
    check_params(p, source="fold(jr_params)")
    folded = {
        "W_enc": p["W_enc"],
        "W_dec": p["W_dec"],
        "b_enc": scale * p["b_enc"] - scale * (p["b_dec"] @ p["W_enc"]),
        "b_dec": scale * p["b_dec"],
        "threshold": scale * p["threshold"],
    }
    return {k: v.astype(np.float32) for k, v in folded.items()}


def fold_transcoder(
    tf: inference.TranscoderForm, norm_scale: float, target_norm_scale: float
) -> dict[str, np.ndarray]:
    """Raw-unit params of a transcoder trained on x / C_in -> y / C_out (docs/transcoders.md).

    Training computes ``f = JumpReLU_θ(x/C_in W_enc + b_enc)`` and
    ``y/C_out = f W_dec + b_dec + x/C_in W_skip``. With r = C_out / C_in the raw form is
    ``W_enc' = r W_enc``, ``b_enc' = C_out b_enc``, ``θ' = C_out θ`` (so f' = C_out f),
    ``W_dec' = W_dec`` (rows stay unit-norm), ``b_dec' = C_out b_dec``, ``W_skip' = r W_skip``:
    then ``f' W_dec' + b_dec' + x W_skip' = y``. With C_in = C_out it is ``fold``'s rule without
    the pre-encoder bias (a transcoder has none).

    Returns:
      dict with the keys of ``NPZ_KEYS`` (and ``W_skip`` for a skip-transcoder), float32.

    Raises:
      TypeError: ``tf`` is not a TranscoderForm.
      ValueError: a scale is not a positive finite number.
    """
    if not isinstance(tf, inference.TranscoderForm):
        raise TypeError(f"fold_transcoder takes a TranscoderForm, got {type(tf).__name__}")
    scales = []
    for name, value in (("norm_scale", norm_scale), ("target_norm_scale", target_norm_scale)):
        value = float(value)
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"fold_transcoder: {name} must be positive and finite, got {value!r}")
        scales.append(value)
    c_in, c_out = scales
    p = {k: np.asarray(tf[k], dtype=np.float64) for k in tf}
    folded = {
        "W_enc": (c_out / c_in) * p["W_enc"],
        "W_dec": p["W_dec"],
        "b_enc": c_out * p["b_enc"],
        "b_dec": c_out * p["b_dec"],
        "threshold": c_out * p["threshold"],
    }
    if "W_skip" in p:
        folded["W_skip"] = (c_out / c_in) * p["W_skip"]
    return {k: v.astype(np.float32) for k, v in folded.items()}
