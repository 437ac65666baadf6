"""BatchTopK SAE with AuxK and its running inference threshold (docs/recipe.md#batchtopk).

Training forward: a = relu(π), π = (x − b_dec) W_enc + b_enc; keep the B·k largest entries of the
whole (B, M) batch (so the *mean* L0 is k, per-token L0 varies):
    f = a ⊙ 1[a >= (B·k)-th largest of a],   x̂ = f W_dec + b_dec.
Loss: mean_b ||x − x̂||² + AuxK.

Inference: batch top-k is replaced by one global threshold θ, the running estimate of the
smallest positive kept activation, kept in the buffer ``running_threshold`` (starts at −1, "not
yet estimated"; set to the batch value at the first update at or after ``threshold_start_step``,
then θ ← decay·θ + (1 − decay)·min_pos; DL: decay 0.999 from step 1,000). :func:`encode` is the
inference form ``relu(π)·1[π > max(θ, 0)]``, identical to :func:`to_jumprelu`'s JumpReLU.

k is traced; the B·k-th largest activation is found by bisection (:mod:`selection`);
``cfg.k_max`` is the validated bound of a k sweep, as for TopK.

Synopsis::

    f_train = batch_topk_activations(pi, k, cfg)   # training (what loss uses)
    f = encode(params, x, cfg)                     # inference, global threshold
"""

import jax
import jax.numpy as jnp
import ml_collections

from gemmascope.sae import auxk, dictionary, inference, losses, selection, topk
from gemmascope.sae import config as config_lib

NAME = "batchtopk"
SWEEP_FIELD = "k"


def add_threshold_fields(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The running-threshold fields shared by BatchTopK and Matryoshka."""
    # EMA decay of the inference threshold (DL: 0.999; SAELens: 0.99).
    cfg.threshold_decay = 0.999
    # First step whose batch updates the inference threshold (DL: 1,000).
    cfg.threshold_start_step = 1_000
    return cfg


def default_config() -> ml_collections.ConfigDict:
    """Gemma Scope optimiser defaults plus k, AuxK and running-threshold fields."""
    cfg = topk.add_k_fields(config_lib.base_config())
    return add_threshold_fields(auxk.add_config_fields(cfg))


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    topk.validate(cfg)
    config_lib.check_positive(cfg, "threshold_start_step", allow_zero=True)
    if not 0.0 <= cfg.threshold_decay < 1.0:
        raise ValueError(
            f"SAE config field 'threshold_decay' must be in [0, 1), got {cfg.threshold_decay!r}."
        )


def sweep_field(cfg: ml_collections.ConfigDict) -> str:
    """BatchTopK sweeps k (the mean L0)."""
    del cfg
    return SWEEP_FIELD


def init(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """TopK's init plus the ``running_threshold`` buffer (−1: not yet estimated)."""
    params = topk.init(key, d_in, width, cfg)
    validate(cfg)
    return {**params, "running_threshold": jnp.full((), -1.0, jnp.float32)}


def batch_topk_activations(pi: jax.Array, k, cfg: ml_collections.ConfigDict) -> jax.Array:
    """relu(π) on the B·k largest entries of the whole batch (B, M); traced k."""
    del cfg  # k needs no static bound here (selection.bisection_mask)
    acts = jax.nn.relu(pi)
    n_tokens = acts.size // acts.shape[-1]
    keep = selection.bisection_mask(acts, n_tokens * jnp.asarray(k, jnp.int32))
    return acts * keep.astype(acts.dtype)


def min_positive(f: jax.Array) -> jax.Array:
    """Smallest positive entry of f (the batch's effective threshold); +inf if none."""
    return jnp.min(jnp.where(f > 0, jax.lax.stop_gradient(f), jnp.inf))


def inference_threshold(params: dict) -> jax.Array:
    """The global JumpReLU threshold: the running estimate, or 0 before the first estimate."""
    return jnp.maximum(params["running_threshold"], 0.0)


def encode(params: dict, x: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Inference encoding relu(π)·1[π > θ] with the running global threshold θ."""
    pi = dictionary.pre_activations(params, x, cfg)
    return jax.nn.relu(pi) * (pi > inference_threshold(params)).astype(pi.dtype)


def decode(params: dict, f: jax.Array, cfg: ml_collections.ConfigDict, x=None) -> jax.Array:
    """Reconstruction x̂ = f W_dec + b_dec (+ x W_skip for a skip-transcoder, given x)."""
    del cfg
    return dictionary.decode(params, f, x)


coeffs = topk.coeffs


def loss(params: dict, x: jax.Array, coeffs: dict, cfg: ml_collections.ConfigDict, target=None):
    """Reconstruction + AuxK for a batch x (B, d); metrics add ``batch_threshold``.

    A transcoder reconstructs ``target`` (B, d_out) instead of x.
    """
    target = x if target is None else target
    pi = dictionary.pre_activations(params, x, cfg)
    f = batch_topk_activations(pi, coeffs["k"], cfg)
    x_hat = dictionary.decode(params, f, x)
    recon = jnp.mean(losses.squared_error(target, x_hat))
    aux = auxk.auxk_loss(params, pi, target, x_hat, cfg)
    total = recon + aux
    metrics = losses.batch_metrics(
        target, x_hat, f, loss=total, recon_loss=recon, sparsity_loss=0.0, aux_loss=aux
    )
    metrics["batch_threshold"] = min_positive(f)
    return total, metrics


def token_separable(params: dict, cfg: ml_collections.ConfigDict) -> bool:
    """No: the batch's k·B largest activations decide every token's latents."""
    del params, cfg
    return False


def constrain(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Unit-norm decoder rows after each update."""
    return dictionary.constrain(params, cfg)


def update_running_threshold(params: dict, metrics: dict, step_index, cfg) -> dict:
    """EMA of the batch's smallest kept activation, from ``threshold_start_step`` on."""
    running = params["running_threshold"]
    batch = metrics["batch_threshold"]
    ema = jnp.where(
        running < 0, batch, cfg.threshold_decay * running + (1 - cfg.threshold_decay) * batch
    )
    update = (jnp.asarray(step_index) >= cfg.threshold_start_step) & jnp.isfinite(batch)
    return {**params, "running_threshold": jnp.where(update, ema, running).astype(jnp.float32)}


def update_buffers(params: dict, x: jax.Array, metrics: dict, step_index, cfg) -> dict:
    """Advances the AuxK counters and the running inference threshold."""
    params = auxk.update_counters(params, metrics["fired"], x.size // x.shape[-1])
    return update_running_threshold(params, metrics, step_index, cfg)


def to_jumprelu(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """The JumpReLU form: every latent gets the global running threshold."""
    theta = inference_threshold(params)
    return inference.jumprelu_form(params, params["W_enc"], params["b_enc"], theta, cfg)
