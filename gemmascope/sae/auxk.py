"""AuxK: the auxiliary loss that revives dead latents (docs/recipe.md#topk), and its counters.

A latent is *dead* when it has not fired for ``dead_tokens(cfg)`` tokens: ``cfg.dead_tokens``, or
when that is None (the default) OAI's 10M, which the trainer replaces by its job's
``dead_window_tokens``, so AuxK and the ``frac_dead`` metric share one definition of a dead latent
(``gemmascope.train.config.link_sae_config``). The firing history is the buffer
``tokens_since_fired`` (M,) int32 kept in the params dict, so a trainer needs no extra state;
:func:`update_counters` advances it after each step.

AuxK reconstructs the (stop-gradient) residual e = x − x̂ from the top ``k_aux`` pre-activations
among dead latents, without biases. OpenAI's loss (``train.py`` of openai/sparse_autoencoder) is
``mse(x, x̂) / Var(x) + α · mse(e, f_aux W_dec) / Var(e)``: both terms are normalised MSEs. Ours
keeps the Gemma Scope reconstruction term mean_b ||x − x̂||² (the same units for every
architecture), so AuxK is multiplied by the batch's variance of x to keep OpenAI's relative
weight α between the two:

    L_aux = α · Var(x) · mean_b ||e − f_aux W_dec||² / Var(e),   0 when no latent is dead,

with Var(v) = mean_b ||v − mean_b(v)||². The total is Var(x) times OpenAI's loss (Var(x) from
this batch rather than from a fixed sample), which Adam's updates do not see (up to ε); without
the factor, α = 1/32 would in effect be α / Var(x), i.e. depend on the data's scale and mean.

Synopsis::

    aux = auxk_loss(params, pi, x, x_hat, cfg)             # scalar, already times α
    separable(params, cfg)        # True, or traced: no latent dead (token_blocks may split)
    params = update_counters(params, metrics["fired"], n_tokens)
"""

import jax
import jax.numpy as jnp
import ml_collections

from gemmascope.sae import config as config_lib
from gemmascope.sae import selection

# Counters saturate here so they never overflow int32.
_COUNTER_CAP = 2**30
#: Tokens without firing after which a latent is dead when ``cfg.dead_tokens`` is None (OAI: 10M).
DEFAULT_DEAD_TOKENS = 10_000_000


def add_config_fields(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the AuxK fields (OAI / BatchTopK paper defaults) to an architecture config."""
    # Weight α of the AuxK loss (OAI: 1/32); 0 disables it.
    cfg.auxk_alpha = 1.0 / 32.0
    # Number of dead latents used to model the residual (OAI: 256; clipped to the width).
    cfg.k_aux = 256
    # A latent is dead after this many tokens without firing; None: the trainer's
    # dead_window_tokens (10M = OAI's when used without the trainer).
    cfg.dead_tokens = None
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid AuxK field."""
    config_lib.check_positive(cfg, "auxk_alpha", allow_zero=True)
    config_lib.check_positive(cfg, "k_aux")
    if cfg.dead_tokens is not None:
        config_lib.check_positive(cfg, "dead_tokens")


def dead_tokens(cfg: ml_collections.ConfigDict) -> int:
    """Tokens without firing after which a latent is dead: cfg.dead_tokens or the 10M default."""
    return DEFAULT_DEAD_TOKENS if cfg.dead_tokens is None else int(cfg.dead_tokens)


def init_counters(width: int) -> jax.Array:
    """Every latent starts alive: zero tokens since it fired."""
    return jnp.zeros((width,), jnp.int32)


def batch_variance(v: jax.Array) -> jax.Array:
    """Var(v) = mean_b ||v − mean_b(v)||² of a (B, d) batch."""
    return jnp.mean(jnp.sum(jnp.square(v - jnp.mean(v, axis=0)), axis=-1))


def dead_latents(params: dict, cfg) -> jax.Array:
    """(M,) bool: the latents that have not fired for ``dead_tokens(cfg)`` tokens."""
    return params["tokens_since_fired"] >= dead_tokens(cfg)


def separable(params: dict, cfg):
    """Whether this step's AuxK term is a mean of per-token terms (``arch.token_separable``).

    True when AuxK is off; else a traced bool, true while no latent is dead (the term is 0).
    Once one is, it is not: its normaliser Var(e) is the whole batch's residual variance.
    """
    if cfg.auxk_alpha == 0:
        return True
    return ~jnp.any(dead_latents(params, cfg))


def auxk_loss(params: dict, pi: jax.Array, x: jax.Array, x_hat: jax.Array, cfg) -> jax.Array:
    """α · Var(x) · the normalised AuxK reconstruction loss (module docstring); (B, M) pre-acts.

    ``x`` is what ``x_hat`` reconstructs: a transcoder passes its target.
    """
    if cfg.auxk_alpha == 0:
        return jnp.zeros((), jnp.float32)
    width = pi.shape[-1]
    dead = dead_latents(params, cfg)

    def dead_latent_loss():
        dead_pi = jnp.where(dead, pi, -jnp.inf)
        if cfg.k_aux >= width:  # every dead latent is among the top k_aux: no selection
            f_aux = jax.nn.relu(dead_pi)
        else:
            keep = selection.row_top_k_mask(dead_pi, cfg.k_aux, cfg.k_aux)
            f_aux = jax.nn.relu(dead_pi) * keep.astype(pi.dtype)
        residual = jax.lax.stop_gradient(x - x_hat)
        residual_hat = f_aux @ params["W_dec"]
        error = jnp.mean(jnp.sum(jnp.square(residual - residual_hat), axis=-1))
        normalised = error / jnp.maximum(batch_variance(residual), 1e-30)
        return cfg.auxk_alpha * batch_variance(x.astype(jnp.float32)) * normalised

    # Skips the selection and the extra matmul while nothing is dead (under vmap over a sweep
    # axis this becomes a select that computes both branches: same numbers).
    return jax.lax.cond(jnp.any(dead), dead_latent_loss, lambda: jnp.zeros((), jnp.float32))


def update_counters(params: dict, fired: jax.Array, n_tokens: int) -> dict:
    """Resets the counter of every latent that fired in this batch, advances the others."""
    counters = params["tokens_since_fired"]
    advanced = jnp.minimum(counters + n_tokens, _COUNTER_CAP)
    return {**params, "tokens_since_fired": jnp.where(fired > 0, 0, advanced).astype(jnp.int32)}
