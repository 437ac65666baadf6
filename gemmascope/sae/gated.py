"""Gated SAE with r_mag weight sharing (Rajamanoharan et al., GT; docs/recipe.md#gated).

Forward (u = (x − b_dec) W_gate):
    π_gate = u + b_gate,   π_mag = exp(r_mag) ⊙ u + b_mag,
    f = 1[π_gate > 0] ⊙ relu(π_mag),   x̂ = f W_dec + b_dec.
Loss per token, averaged over the batch (GT §3.2.2):
    ||x − x̂||² + λ_t·Σ_i relu(π_gate)_i + ||x − (relu(π_gate) sg(W_dec) + sg(b_dec))||²
The last (auxiliary) term trains only the gate path: it decodes through stop-gradient copies of
the decoder (GT's frozen decoder). ``cfg.aux_trains_decoder = True`` lets its gradient reach the
decoder too, as SAELens's ``GatedTrainingSAE`` does (docs/sae.md#gated-aux). The decoder is
unit-norm (constrained), so the L1 needs no decoder-norm weight. The
gate gives the encoder no gradient through the reconstruction term (the step has zero derivative).

JumpReLU form (GT §3.2.1): π_gate > 0 ⇔ π_mag > θ with θ = b_mag − exp(r_mag) ⊙ b_gate, so the
Gated SAE is the JumpReLU SAE (W_enc = W_gate·exp(r_mag), b_enc = b_mag, threshold max(θ, 0)).

Synopsis::

    cfg = default_config(); params = init(key, d_in, width, cfg)
    loss, metrics = loss(params, x, coeffs(cfg, t), cfg)
"""

import jax
import jax.numpy as jnp
import ml_collections

from gemmascope.sae import config as config_lib
from gemmascope.sae import dictionary, inference, losses, optim

NAME = "gated"
SWEEP_FIELD = "sparsity_coeff"


def default_config() -> ml_collections.ConfigDict:
    """Gemma Scope optimiser defaults plus the gate L1 coefficient."""
    cfg = config_lib.base_config()
    # λ of the gate L1 penalty Σ relu(π_gate) (with E||x||² = 1 inputs).
    cfg.sparsity_coeff = 1e-2
    # Weight of the auxiliary frozen-decoder reconstruction of relu(π_gate) (GT: 1).
    cfg.aux_coeff = 1.0
    # False: the auxiliary term decodes through a frozen (stop-gradient) decoder, as GT §3.2.2.
    # True: its gradient also trains W_dec and b_dec, as SAELens 6 does (docs/sae.md#gated-aux).
    cfg.aux_trains_decoder = False
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    config_lib.check_base(cfg)
    config_lib.check_positive(cfg, "sparsity_coeff", "aux_coeff", allow_zero=True)
    if not isinstance(cfg.aux_trains_decoder, bool):
        raise ValueError(
            f"SAE config field 'aux_trains_decoder' must be True or False, got "
            f"{cfg.aux_trains_decoder!r}."
        )


def sweep_field(cfg: ml_collections.ConfigDict) -> str:
    """Gated sweeps the gate L1 coefficient."""
    del cfg
    return SWEEP_FIELD


def init(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """Unit-norm He-uniform W_dec, W_gate = W_dec^T, r_mag = biases = 0 (GT reference code)."""
    config_lib.check_shape(d_in, width)
    validate(cfg)
    w_gate, w_dec = dictionary.init_dictionary(key, d_in, width, cfg)
    zeros = jnp.zeros((width,), jnp.float32)
    return {
        "W_gate": w_gate,
        "b_gate": zeros,
        "r_mag": zeros,
        "b_mag": zeros,
        "W_dec": w_dec,
        "b_dec": jnp.zeros((d_in,), jnp.float32),
    }


def _gate_and_magnitude(params: dict, x: jax.Array, cfg) -> tuple[jax.Array, jax.Array]:
    """(π_gate, π_mag), both (B, M)."""
    x = x.astype(jnp.float32)
    if cfg.pre_encoder_bias:
        zero_bias = jnp.zeros_like(params["b_gate"])
        u = dictionary.centred_affine(x, params["W_gate"], zero_bias, params["b_dec"])
    else:
        u = x @ params["W_gate"]
    return u + params["b_gate"], jnp.exp(params["r_mag"]) * u + params["b_mag"]


def encode(params: dict, x: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Encodes (B, d) -> (B, M): f = 1[π_gate > 0] ⊙ relu(π_mag)."""
    pi_gate, pi_mag = _gate_and_magnitude(params, x, cfg)
    return (pi_gate > 0).astype(pi_mag.dtype) * jax.nn.relu(pi_mag)


def decode(params: dict, f: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Reconstruction x̂ = f W_dec + b_dec."""
    del cfg
    return dictionary.decode(params, f)


def coeffs(cfg: ml_collections.ConfigDict, step_index, sweep_value=None) -> dict:
    """The warmed-up gate L1 coefficient; ``sweep_value`` overrides ``cfg.sparsity_coeff``."""
    base = cfg.sparsity_coeff if sweep_value is None else sweep_value
    return {"sparsity_coeff": optim.linear_warmup(base, step_index, cfg.sparsity_warmup_steps)}


def loss(params: dict, x: jax.Array, coeffs: dict, cfg: ml_collections.ConfigDict):
    """Training loss and metrics for a batch x (B, d); see the module docstring."""
    pi_gate, pi_mag = _gate_and_magnitude(params, x, cfg)
    f = jax.lax.stop_gradient((pi_gate > 0).astype(pi_mag.dtype)) * jax.nn.relu(pi_mag)
    x_hat = dictionary.decode(params, f)
    recon = jnp.mean(losses.squared_error(x, x_hat))
    gate_acts = jax.nn.relu(pi_gate)
    # A free decoder (unit_norm_decoder = False) weights each gate by its row norm, so the
    # penalty cannot be dodged by shrinking the gate and growing the row (as SAELens does).
    if cfg.unit_norm_decoder:
        weighted = gate_acts
    else:
        weighted = gate_acts * dictionary.row_norms(params["W_dec"])
    sparsity = coeffs["sparsity_coeff"] * jnp.mean(jnp.sum(weighted, axis=-1))
    decoder = {"W_dec": params["W_dec"], "b_dec": params["b_dec"]}
    if not cfg.aux_trains_decoder:
        decoder = jax.lax.stop_gradient(decoder)
    aux = cfg.aux_coeff * jnp.mean(losses.squared_error(x, dictionary.decode(decoder, gate_acts)))
    total = recon + sparsity + aux
    metrics = losses.batch_metrics(
        x, x_hat, f, loss=total, recon_loss=recon, sparsity_loss=sparsity, aux_loss=aux
    )
    return total, metrics


def token_separable(params: dict, cfg: ml_collections.ConfigDict) -> bool:
    """Every term is per token (gemmascope.sae.token_blocks)."""
    del params, cfg
    return True


def constrain(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Unit-norm decoder rows after each update."""
    return dictionary.constrain(params, cfg)


def update_buffers(params: dict, x: jax.Array, metrics: dict, step_index, cfg) -> dict:
    """Gated has no buffers."""
    del x, metrics, step_index, cfg
    return params


def to_jumprelu(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """The equivalent JumpReLU (threshold b_mag − exp(r_mag)·b_gate, clipped at 0)."""
    scale = jnp.exp(params["r_mag"])
    theta = jnp.maximum(params["b_mag"] - scale * params["b_gate"], 0.0)
    return inference.jumprelu_form(params, params["W_gate"] * scale, params["b_mag"], theta, cfg)
