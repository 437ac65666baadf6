"""JumpReLU SAE trained with the Gemma Scope recipe (docs/recipe.md#jumprelu).

Forward (training form, pre-encoder bias):
    π = (x − b_dec) W_enc + b_enc,   f = π·H(π − θ),   x̂ = f W_dec + b_dec.
Loss per token, averaged over the batch (docs/recipe.md#jumprelu-loss):
    coeff form:      ||x − x̂||² + λ_t·Σ_i H(π_i − θ_i)
    target_l0 form:  ||x − x̂||² + λ_t·(L0 / L0_target − 1)²,  L0 = batch mean of Σ_i H(π_i − θ_i)
where λ_t is λ warmed up linearly over ``sparsity_warmup_steps`` and H carries the rectangle STE of
docs/recipe.md#jumprelu-ste (module :mod:`gemmascope.sae.ste`). θ is fp32, stored as
``log_threshold`` (θ = exp) or ``threshold`` (raw) by ``cfg.threshold_param``
(docs/recipe.md#short-runs).

Synopsis::

    cfg = default_config()
    params = init(key, d_in, width, cfg)
    loss, metrics = loss(params, x, coeffs(cfg, step_index, sweep_value), cfg)
"""

import jax
import jax.numpy as jnp
import ml_collections

from gemmascope.sae import config as config_lib
from gemmascope.sae import dictionary, inference, losses, optim, ste

NAME = "jumprelu"
# The field a sweep varies in the default (coefficient) form; see sweep_field() for target_l0.
SWEEP_FIELD = "sparsity_coeff"


def default_config() -> ml_collections.ConfigDict:
    """Gemma Scope defaults (docs/recipe.md#jumprelu), threshold and sparsity-form options."""
    cfg = config_lib.base_config()
    # λ of the L0 penalty in the "coeff" form (GS: 6e-4 gave L0 ≈ 50 on 9B L20, 1e-3 on 131k SAEs).
    cfg.sparsity_coeff = 1e-3
    # "coeff": λ·L0 per token (GS).  "target_l0": target_l0_coeff·(L0 / target_l0 − 1)²
    # (docs/recipe.md#short-runs).
    cfg.sparsity_form = "coeff"
    # The L0 asked for in the "target_l0" form.
    cfg.target_l0 = 32.0
    # The coefficient of the "target_l0" penalty (also warmed up over sparsity_warmup_steps).
    cfg.target_l0_coeff = 1.0
    # STE kernel bandwidth ε (GS: 1e-3, valid for E||x||² = 1 inputs).
    cfg.bandwidth = 1e-3
    # Initial threshold θ for every latent (GS: 1e-3).
    cfg.threshold_init = 1e-3
    # "log": train log θ (tutorial / JR pseudo-code); "raw": train θ itself (better for short runs).
    cfg.threshold_param = "log"
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    config_lib.check_base(cfg)
    config_lib.check_in(cfg, "sparsity_form", ("coeff", "target_l0"))
    config_lib.check_in(cfg, "threshold_param", ("log", "raw"))
    config_lib.check_positive(cfg, "sparsity_coeff", "target_l0_coeff", allow_zero=True)
    config_lib.check_positive(cfg, "bandwidth", "threshold_init", "target_l0")


def sweep_field(cfg: ml_collections.ConfigDict) -> str:
    """The field a sweep varies for this config: ``target_l0`` in that form, else SWEEP_FIELD."""
    return "target_l0" if cfg.sparsity_form == "target_l0" else SWEEP_FIELD


def init(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """Gemma Scope init (docs/recipe.md#init).

    Unit-norm He-uniform W_dec, W_enc = W_dec^T, zero biases, θ = threshold_init.
    """
    config_lib.check_shape(d_in, width)
    validate(cfg)
    w_enc, w_dec = dictionary.init_dictionary(key, d_in, width)
    theta = jnp.full((width,), cfg.threshold_init, jnp.float32)
    params = {
        "W_enc": w_enc,
        "b_enc": jnp.zeros((width,), jnp.float32),
        "W_dec": w_dec,
        "b_dec": jnp.zeros((d_in,), jnp.float32),
    }
    if cfg.threshold_param == "log":
        params["log_threshold"] = jnp.log(theta)
    else:
        params["threshold"] = theta
    return params


def threshold(params: dict, cfg: ml_collections.ConfigDict) -> jax.Array:
    """The fp32 threshold θ (M,) whichever way it is parameterised."""
    if cfg.threshold_param == "log":
        return jnp.exp(params["log_threshold"].astype(jnp.float32))
    return params["threshold"].astype(jnp.float32)


def encode(params: dict, x: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Latent activations f = π·H(π − θ), (B, d) -> (B, M)."""
    pi = dictionary.pre_activations(params, x, cfg)
    return ste.jumprelu(pi, threshold(params, cfg), cfg.bandwidth)


def decode(params: dict, f: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Reconstruction x̂ = f W_dec + b_dec."""
    del cfg
    return dictionary.decode(params, f)


def coeffs(cfg: ml_collections.ConfigDict, step_index, sweep_value=None) -> dict:
    """This step's traced loss coefficients; ``sweep_value`` overrides ``cfg[sweep_field(cfg)]``."""
    if cfg.sparsity_form == "target_l0":
        target = cfg.target_l0 if sweep_value is None else sweep_value
        coeff = optim.linear_warmup(cfg.target_l0_coeff, step_index, cfg.sparsity_warmup_steps)
        return {"sparsity_coeff": coeff, "target_l0": jnp.asarray(target, jnp.float32)}
    base = cfg.sparsity_coeff if sweep_value is None else sweep_value
    return {"sparsity_coeff": optim.linear_warmup(base, step_index, cfg.sparsity_warmup_steps)}


def loss(params: dict, x: jax.Array, coeffs: dict, cfg: ml_collections.ConfigDict):
    """Training loss and metrics for a batch x (B, d); see the module docstring."""
    theta = threshold(params, cfg)
    pi = dictionary.pre_activations(params, x, cfg)
    f = ste.jumprelu(pi, theta, cfg.bandwidth)
    x_hat = dictionary.decode(params, f)
    recon = jnp.mean(losses.squared_error(x, x_hat))
    l0_per_token = jnp.sum(ste.step(pi, theta, cfg.bandwidth), axis=-1)
    if cfg.sparsity_form == "target_l0":
        relative = jnp.mean(l0_per_token) / coeffs["target_l0"] - 1.0
        sparsity = coeffs["sparsity_coeff"] * jnp.square(relative)
    else:
        sparsity = coeffs["sparsity_coeff"] * jnp.mean(l0_per_token)
    total = recon + sparsity
    metrics = losses.batch_metrics(
        x, x_hat, f, loss=total, recon_loss=recon, sparsity_loss=sparsity
    )
    return total, metrics


def constrain(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Unit-norm decoder rows after each update (docs/recipe.md#decoder-constraint).

    A raw θ is clipped at 0 so that π·H(π − θ) stays non-negative and equal to the inference form
    relu(π)·H(π − θ).
    """
    params = dictionary.constrain(params, cfg)
    if cfg.threshold_param == "raw":
        params = {**params, "threshold": jnp.maximum(params["threshold"], 0.0)}
    return params


def update_buffers(params: dict, x: jax.Array, metrics: dict, step_index, cfg) -> dict:
    """JumpReLU has no buffers."""
    del x, metrics, step_index, cfg
    return params


def to_jumprelu(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """The JumpReLU inference form (docs/recipe.md#params-npz), in training units."""
    return inference.jumprelu_form(
        params, params["W_enc"], params["b_enc"], threshold(params, cfg), cfg
    )
