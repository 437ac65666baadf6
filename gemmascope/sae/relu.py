"""ReLU + L1 SAE baseline in its two forms (docs/recipe.md#relu-l1).

Forward: f = relu((x − b_dec) W_enc + b_enc), x̂ = f W_dec + b_dec. Loss per token, batch mean:
- ``unit_norm_decoder = True`` (Bricken et al. 2023; DL StandardTrainer): ||x − x̂||² + λ_t·Σ_i f_i,
  with the decoder rows projected and renormalised every step;
- ``unit_norm_decoder = False`` (Anthropic April 2024 update): ||x − x̂||² + λ_t·Σ_i f_i·||W_dec,i||,
  with the decoder left free (DL's port also clips the gradient norm at 1: ``max_grad_norm``).

JumpReLU form: threshold 0. For the free-decoder form the decoder norms n_i are folded into the
encoder (W_enc·n, b_enc·n, W_dec / n), which leaves x̂ unchanged and gives unit-norm rows, as the
Gemma Scope format expects.

Synopsis::

    cfg = default_config(); cfg.unit_norm_decoder = False   # the April-update form
    params = init(key, d_in, width, cfg)
"""

import jax
import jax.numpy as jnp
import ml_collections

from gemmascope.sae import config as config_lib
from gemmascope.sae import dictionary, inference, losses, optim

NAME = "relu"
SWEEP_FIELD = "sparsity_coeff"


def default_config() -> ml_collections.ConfigDict:
    """Gemma Scope optimiser defaults plus the L1 coefficient (unit-norm decoder form)."""
    cfg = config_lib.base_config()
    # λ of the L1 penalty (with E||x||² = 1 inputs).
    cfg.sparsity_coeff = 1e-2
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    config_lib.check_base(cfg)
    config_lib.check_positive(cfg, "sparsity_coeff", allow_zero=True)


def sweep_field(cfg: ml_collections.ConfigDict) -> str:
    """ReLU sweeps the L1 coefficient."""
    del cfg
    return SWEEP_FIELD


def init(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """Gemma Scope init (docs/recipe.md#init) for both forms."""
    config_lib.check_shape(d_in, width)
    validate(cfg)
    w_enc, w_dec = dictionary.init_dictionary(key, d_in, width, cfg)
    return {
        "W_enc": w_enc,
        "b_enc": jnp.zeros((width,), jnp.float32),
        "W_dec": w_dec,
        "b_dec": jnp.zeros((d_in,), jnp.float32),
    }


def encode(params: dict, x: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Encodes (B, d) -> (B, M): f = relu(π)."""
    return jax.nn.relu(dictionary.pre_activations(params, x, cfg))


def decode(params: dict, f: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Reconstruction x̂ = f W_dec + b_dec."""
    del cfg
    return dictionary.decode(params, f)


def coeffs(cfg: ml_collections.ConfigDict, step_index, sweep_value=None) -> dict:
    """The warmed-up L1 coefficient; ``sweep_value`` overrides ``cfg.sparsity_coeff``."""
    base = cfg.sparsity_coeff if sweep_value is None else sweep_value
    return {"sparsity_coeff": optim.linear_warmup(base, step_index, cfg.sparsity_warmup_steps)}


def loss(params: dict, x: jax.Array, coeffs: dict, cfg: ml_collections.ConfigDict):
    """Reconstruction + (decoder-norm-weighted when the decoder is free) L1."""
    f = encode(params, x, cfg)
    x_hat = dictionary.decode(params, f)
    recon = jnp.mean(losses.squared_error(x, x_hat))
    weighted = f if cfg.unit_norm_decoder else f * dictionary.row_norms(params["W_dec"])
    sparsity = coeffs["sparsity_coeff"] * jnp.mean(jnp.sum(weighted, axis=-1))
    total = recon + sparsity
    metrics = losses.batch_metrics(
        x, x_hat, f, loss=total, recon_loss=recon, sparsity_loss=sparsity
    )
    return total, metrics


def token_separable(params: dict, cfg: ml_collections.ConfigDict) -> bool:
    """Every term is per token (gemmascope.sae.token_blocks)."""
    del params, cfg
    return True


def constrain(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Unit-norm decoder rows after each update, in the unit-norm form only."""
    return dictionary.constrain(params, cfg)


def update_buffers(params: dict, x: jax.Array, metrics: dict, step_index, cfg) -> dict:
    """ReLU has no buffers."""
    del x, metrics, step_index, cfg
    return params


def to_jumprelu(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """JumpReLU with threshold 0 (a free decoder's row norms are folded by ``jumprelu_form``)."""
    theta = jnp.zeros_like(params["b_enc"])
    return inference.jumprelu_form(params, params["W_enc"], params["b_enc"], theta, cfg)
