"""Matryoshka JumpReLU SAE: JumpReLU's encoder and sparsity with nested prefix losses.

Gemma Scope 2 trained its JumpReLU SAEs with Matryoshka losses (its release notes: "a
quadratic L0 penalty ... Matryoshka training"). The latents are split into ordered groups as in
:mod:`gemmascope.sae.matryoshka` (sizes M·``group_fractions``); one JumpReLU encoding f of the
whole dictionary is computed, and prefix j reconstructs with the latents of groups <= j only:
    x̂_j = b_dec + Σ_{g <= j} f_g W_dec,g,
    L = Σ_j w_j·mean_b ||x − x̂_j||² + JumpReLU's sparsity term + AuxK (full residual),
the sparsity term in any of JumpReLU's forms (coefficient, target L0, quadratic). Params, init,
threshold parameterisation, buffers, the target-L0 controller and the inference form are
JumpReLU's, so export and evaluation treat it as a JumpReLU SAE. ``recon_loss`` in the metrics is
the full-dictionary term.

Synopsis::

    cfg = default_config(); cfg.sparsity_form = "quadratic"
    params = init(key, d_in, width, cfg)
    loss, metrics = loss(params, x, coeffs(cfg, t, target_l0), cfg)
"""

import jax
import ml_collections

from gemmascope.sae import jumprelu, matryoshka

NAME = "matryoshka_jumprelu"
SWEEP_FIELD = jumprelu.SWEEP_FIELD


def default_config() -> ml_collections.ConfigDict:
    """JumpReLU's config plus Matryoshka's nested-group fields."""
    return matryoshka.add_group_fields(jumprelu.default_config())


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    jumprelu.validate(cfg)
    matryoshka.validate_groups(cfg)
    if cfg.get("sparse_capacity", 0):
        raise ValueError(
            f"SAE config field 'sparse_capacity' is {cfg.sparse_capacity!r}, but "
            "matryoshka_jumprelu has no sparse path (its nested prefix losses read the dense "
            "latents): set it to 0."
        )


def init(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """JumpReLU's init, after checking that every group gets at least one latent."""
    validate(cfg)
    if isinstance(width, int) and width > 0:
        matryoshka.group_sizes(width, cfg)
    return jumprelu.init(key, d_in, width, cfg)


sweep_field = jumprelu.sweep_field
encode = jumprelu.encode
decode = jumprelu.decode
coeffs = jumprelu.coeffs
token_separable = jumprelu.token_separable
constrain = jumprelu.constrain
update_buffers = jumprelu.update_buffers
to_jumprelu = jumprelu.to_jumprelu


def loss(params: dict, x: jax.Array, coeffs: dict, cfg: ml_collections.ConfigDict):
    """Nested prefix reconstruction losses + JumpReLU's sparsity + AuxK for a batch x (B, d)."""

    def nested(f):
        weighted, x_hat = matryoshka.nested_reconstruction(params, x, f, cfg)
        return x_hat, weighted

    return jumprelu.loss(params, x, coeffs, cfg, reconstruct=nested)
