"""Matryoshka BatchTopK SAE: nested prefix reconstruction losses (docs/recipe.md#matryoshka).

The latents are split into ordered groups of sizes M·``group_fractions`` (author config
[1/16, 1/16, 1/8, 1/4, 1/2]). One BatchTopK encoding f of the whole dictionary is computed
(:mod:`gemmascope.sae.batchtopk`); prefix j reconstructs with the latents of groups <= j only:
    x̂_j = b_dec + Σ_{g <= j} f_g W_dec,g,
    L = Σ_j w_j·mean_b ||x − x̂_j||² + AuxK(on the full residual x − x̂_G),
with weights ``group_weights`` (default 1/G each, so L is the mean prefix loss). ``recon_loss`` in
the metrics is the full-dictionary term. Inference, buffers, k and the JumpReLU form are
BatchTopK's.

Synopsis::

    sizes = group_sizes(width, cfg)       # e.g. 64 -> (4, 4, 8, 16, 32)
    loss, metrics = loss(params, x, coeffs(cfg, t), cfg)
"""

import jax
import jax.numpy as jnp
import ml_collections

from gemmascope.sae import auxk, batchtopk, dictionary, losses

NAME = "matryoshka"
SWEEP_FIELD = "k"


def default_config() -> ml_collections.ConfigDict:
    """BatchTopK's config plus the nested-group fields (author config)."""
    return add_group_fields(batchtopk.default_config())


def add_group_fields(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The nested-group fields (author config), shared with Matryoshka JumpReLU."""
    # Fraction of the width in each nested group, smallest (most general) first; sums to 1.
    cfg.group_fractions = (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
    # Weight of each prefix loss; None means 1/G each.
    cfg.group_weights = None
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    batchtopk.validate(cfg)
    validate_groups(cfg)


def validate_groups(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError unless group_fractions and group_weights are valid."""
    fractions = tuple(cfg.group_fractions)
    if not fractions or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            "SAE config field 'group_fractions' must be positive fractions summing to 1, "
            f"got {fractions!r}."
        )
    if cfg.group_weights is not None:
        weights = tuple(cfg.group_weights)
        if len(weights) != len(fractions) or any(w < 0 for w in weights):
            raise ValueError(
                "SAE config field 'group_weights' must be None or one weight >= 0 per group "
                f"({len(fractions)}), got {weights!r}."
            )


def group_sizes(width: int, cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Latents per nested group: rounded fractions of the width, the last takes the remainder."""
    sizes = [round(f * width) for f in cfg.group_fractions[:-1]]
    sizes.append(width - sum(sizes))
    if any(s < 1 for s in sizes):
        raise ValueError(
            f"SAE width {width} is too small for group_fractions {tuple(cfg.group_fractions)}: "
            f"group sizes {sizes} must all be >= 1."
        )
    return tuple(sizes)


def _weights(cfg) -> tuple[float, ...]:
    n = len(cfg.group_fractions)
    return tuple(cfg.group_weights) if cfg.group_weights is not None else (1.0 / n,) * n


def sweep_field(cfg: ml_collections.ConfigDict) -> str:
    """Matryoshka sweeps k (the mean L0)."""
    del cfg
    return SWEEP_FIELD


def init(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """BatchTopK's init, after checking that every group gets at least one latent."""
    validate(cfg)
    if isinstance(width, int) and width > 0:
        group_sizes(width, cfg)
    return batchtopk.init(key, d_in, width, cfg)


encode = batchtopk.encode
decode = batchtopk.decode
coeffs = batchtopk.coeffs
token_separable = batchtopk.token_separable
constrain = batchtopk.constrain
update_buffers = batchtopk.update_buffers
to_jumprelu = batchtopk.to_jumprelu


def nested_reconstruction(params: dict, x: jax.Array, f: jax.Array, cfg) -> tuple:
    """(Σ_j w_j·mean_b ||x − x̂_j||², the full reconstruction x̂_G) of latents f (B, M)."""
    x_hat = jnp.broadcast_to(params["b_dec"], x.shape).astype(jnp.float32)
    weighted = jnp.zeros((), jnp.float32)
    start = 0
    for size, weight in zip(group_sizes(f.shape[-1], cfg), _weights(cfg), strict=True):
        x_hat = x_hat + f[..., start : start + size] @ params["W_dec"][start : start + size]
        weighted = weighted + weight * jnp.mean(losses.squared_error(x, x_hat))
        start += size
    return weighted, x_hat


def loss(params: dict, x: jax.Array, coeffs: dict, cfg: ml_collections.ConfigDict):
    """Weighted nested prefix reconstruction losses + AuxK for a batch x (B, d)."""
    pi = dictionary.pre_activations(params, x, cfg)
    f = batchtopk.batch_topk_activations(pi, coeffs["k"], cfg)
    weighted, x_hat = nested_reconstruction(params, x, f, cfg)
    recon = jnp.mean(losses.squared_error(x, x_hat))
    aux = auxk.auxk_loss(params, pi, x, x_hat, cfg)
    total = weighted + aux
    metrics = losses.batch_metrics(
        x, x_hat, f, loss=total, recon_loss=recon, sparsity_loss=0.0, aux_loss=aux
    )
    metrics["batch_threshold"] = batchtopk.min_positive(f)
    return total, metrics
