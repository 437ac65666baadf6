"""TopK SAE with AuxK (Gao et al. 2406.04093; docs/recipe.md#topk).

Forward: π = (x − b_dec) W_enc + b_enc; keep each token's k largest pre-activations, then ReLU:
    f = relu(π) ⊙ 1[π >= kth_largest(π)],   x̂ = f W_dec + b_dec.
Loss: mean_b ||x − x̂||² + AuxK (module :mod:`gemmascope.sae.auxk`), which is Var(x) times OAI's
loss mse / Var(x) + α·AuxK_nmse: AuxK carries the factor Var(x), so α keeps OAI's meaning
whatever the data's scale or mean.

k is traced (a sweep varies it under vmap): each token's k-th largest pre-activation is read from
``lax.top_k`` at the static bound ``cfg.k_max`` (default ``cfg.k``, the validated upper bound of a
k sweep; :mod:`selection`), so every k up to it works in one compiled step. Ties at the k-th value
keep all tied latents.
TopK has no JumpReLU form: its threshold differs per token.

Synopsis::

    cfg = default_config(); cfg.k = 32
    params = init(key, d_in, width, cfg)
    f = encode(params, x, cfg)                    # exactly k non-zeros per token (if π has k > 0)
"""

import jax
import jax.numpy as jnp
import ml_collections

from gemmascope.sae import auxk, dictionary, losses, selection
from gemmascope.sae import config as config_lib

NAME = "topk"
SWEEP_FIELD = "k"


def add_k_fields(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The k fields shared by TopK, BatchTopK and Matryoshka."""
    # Active latents per token (BatchTopK: on average over the batch).
    cfg.k = 32
    # Upper bound of a (traced, swept) k, checked by check_sweep_values; None means cfg.k.
    cfg.k_max = None
    return cfg


def default_config() -> ml_collections.ConfigDict:
    """Gemma Scope optimiser defaults plus k and AuxK (OAI) fields."""
    return auxk.add_config_fields(add_k_fields(config_lib.base_config()))


def k_max(cfg: ml_collections.ConfigDict) -> int:
    """The declared upper bound of a k sweep: ``cfg.k_max`` or ``cfg.k``."""
    return int(cfg.k if cfg.k_max is None else cfg.k_max)


def validate_k(cfg: ml_collections.ConfigDict, width: int | None = None) -> None:
    """Raises ValueError unless 1 <= k <= k_max (<= width when given)."""
    for field in ("k", "k_max"):
        value = cfg[field]
        if value is None and field == "k_max":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"SAE config field {field!r} must be an integer >= 1, got {value!r}.")
    if cfg.k > k_max(cfg):
        raise ValueError(f"SAE config field 'k' ({cfg.k}) must be <= k_max ({cfg.k_max}).")
    if width is not None and k_max(cfg) > width:
        raise ValueError(
            f"SAE config k = {cfg.k} / k_max = {cfg.k_max} must not exceed the width {width}."
        )


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    config_lib.check_base(cfg)
    validate_k(cfg)
    auxk.validate(cfg)


def sweep_field(cfg: ml_collections.ConfigDict) -> str:
    """TopK sweeps k."""
    del cfg
    return SWEEP_FIELD


def init(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """Gemma Scope init (docs/recipe.md#init, not OAI's geometric median) and AuxK counters."""
    config_lib.check_shape(d_in, width)
    validate(cfg)
    validate_k(cfg, width)
    params = dictionary.init_maps(key, d_in, width, cfg)
    return {**params, "tokens_since_fired": auxk.init_counters(width)}


def topk_activations(pi: jax.Array, k, cfg: ml_collections.ConfigDict) -> jax.Array:
    """relu(π) on each token's k largest entries, 0 elsewhere; traced k <= k_max(cfg)."""
    keep = selection.row_top_k_mask(pi, k, k_max(cfg))
    return jax.nn.relu(pi) * keep.astype(pi.dtype)


def encode(params: dict, x: jax.Array, cfg: ml_collections.ConfigDict, k=None) -> jax.Array:
    """Per-token top-k latents, (B, d) -> (B, M); ``k`` defaults to ``cfg.k``."""
    pi = dictionary.pre_activations(params, x, cfg)
    return topk_activations(pi, cfg.k if k is None else k, cfg)


def decode(params: dict, f: jax.Array, cfg: ml_collections.ConfigDict, x=None) -> jax.Array:
    """Reconstruction x̂ = f W_dec + b_dec (+ x W_skip for a skip-transcoder, given x)."""
    del cfg
    return dictionary.decode(params, f, x)


def coeffs(cfg: ml_collections.ConfigDict, step_index, sweep_value=None) -> dict:
    """``{"k": k}``, k traced; ``sweep_value`` overrides ``cfg.k``."""
    del step_index
    return {"k": jnp.asarray(cfg.k if sweep_value is None else sweep_value, jnp.int32)}


def loss(params: dict, x: jax.Array, coeffs: dict, cfg: ml_collections.ConfigDict, target=None):
    """Reconstruction + AuxK for a batch x (B, d); a transcoder reconstructs ``target``."""
    target = x if target is None else target
    pi = dictionary.pre_activations(params, x, cfg)
    f = topk_activations(pi, coeffs["k"], cfg)
    x_hat = dictionary.decode(params, f, x)
    recon = jnp.mean(losses.squared_error(target, x_hat))
    aux = auxk.auxk_loss(params, pi, target, x_hat, cfg)
    total = recon + aux
    metrics = losses.batch_metrics(
        target, x_hat, f, loss=total, recon_loss=recon, sparsity_loss=0.0, aux_loss=aux
    )
    return total, metrics


def token_separable(params: dict, cfg: ml_collections.ConfigDict):
    """Each token keeps its own k latents; with AuxK, per token while no latent is dead."""
    return auxk.separable(params, cfg)


def constrain(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Unit-norm decoder rows after each update."""
    return dictionary.constrain(params, cfg)


def update_buffers(params: dict, x: jax.Array, metrics: dict, step_index, cfg) -> dict:
    """Advances the AuxK firing counters."""
    del step_index, cfg
    return auxk.update_counters(params, metrics["fired"], x.size // x.shape[-1])


def to_jumprelu(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """TopK has no JumpReLU form (its threshold is per token)."""
    del params, cfg
    raise ValueError(
        "The 'topk' architecture has no JumpReLU inference form (its threshold differs per "
        "token); architectures with one: jumprelu, gated, batchtopk, matryoshka, relu."
    )
