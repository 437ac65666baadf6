"""The JumpReLU inference form that export and evaluation use (docs/recipe.md#params-npz).

Every architecture with a per-latent threshold rule converts to the dict
``{W_enc (d, M), W_dec (M, d), b_enc (M,), b_dec (d,), threshold (M,)}`` (float32) that encodes

    π = (x − b_dec) W_enc + b_enc,   f = relu(π)·1[π > threshold],   x̂ = f W_dec + b_dec

in *training units* (inputs already divided by the normalisation scalar C) and *with* the
pre-encoder bias. Export folds C and b_dec into b_enc (docs/recipe.md#folding) to get the released
format.

Synopsis::

    jr = jumprelu_form(params, w_enc, b_enc, theta, cfg)   # folds an absent pre-encoder bias
    f = encode(jr, x)
    x_hat = decode(jr, f)
"""

import jax
import jax.numpy as jnp
import ml_collections


def jumprelu_form(
    params: dict,
    w_enc: jax.Array,
    b_enc: jax.Array,
    theta: jax.Array,
    cfg: ml_collections.ConfigDict,
) -> dict:
    """Assembles the inference dict from an architecture's effective encoder.

    Args:
      params: training-form params (supplies W_dec and b_dec).
      w_enc: effective encoder matrix (d, M).
      b_enc: effective encoder bias (M,).
      theta: per-latent threshold (M,), >= 0.
      cfg: the architecture config; when ``cfg.pre_encoder_bias`` is False the encoder saw x
        itself, so b_dec @ W_enc is added to b_enc to express it with a pre-encoder bias.

    Returns:
      The float32 inference dict described in the module docstring.
    """
    b_enc = jnp.asarray(b_enc, jnp.float32)
    if not cfg.pre_encoder_bias:
        b_enc = b_enc + params["b_dec"] @ w_enc
    return {
        "W_enc": jnp.asarray(w_enc, jnp.float32),
        "W_dec": jnp.asarray(params["W_dec"], jnp.float32),
        "b_enc": b_enc,
        "b_dec": jnp.asarray(params["b_dec"], jnp.float32),
        "threshold": jnp.broadcast_to(jnp.asarray(theta, jnp.float32), b_enc.shape),
    }


def encode(jr: dict, x: jax.Array) -> jax.Array:
    """Latents of the inference form: relu(π)·1[π > threshold]."""
    pi = (x.astype(jnp.float32) - jr["b_dec"]) @ jr["W_enc"] + jr["b_enc"]
    return jax.nn.relu(pi) * (pi > jr["threshold"]).astype(pi.dtype)


def decode(jr: dict, f: jax.Array) -> jax.Array:
    """Reconstruction of the inference form: f W_dec + b_dec."""
    return f @ jr["W_dec"] + jr["b_dec"]
