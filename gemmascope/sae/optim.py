"""The optimiser and schedules: decoder-gradient projection, Adam, lr warmup.

The recipe is docs/recipe.md#optimiser and #decoder-constraint.

Synopsis::

    tx = optimizer(cfg)             # optax: [project W_dec grads] -> [clip] -> Adam -> -lr(t)
    opt_state = tx.init(params)     # params may contain buffers (BUFFER_KEYS): never updated
    lr = learning_rate(cfg, t)      # η·(s + (1 − s)·(1 − cos(π t / T_w))/2) for t < T_w, else η
    lam = linear_warmup(coeff, t, cfg.sparsity_warmup_steps)

Buffers (non-trained state kept in the params dict so a trainer needs no extra state, e.g.
BatchTopK's running threshold and AuxK's tokens-since-fired counters) are named in
:data:`BUFFER_KEYS`; the optimiser gives them zero updates and the train step overwrites them.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gemmascope.sae import dictionary

# Param names that hold buffers, not trained parameters, in any architecture.
BUFFER_KEYS = frozenset({"running_threshold", "tokens_since_fired", "log_sparsity_coeff"})


def learning_rate(cfg: ml_collections.ConfigDict, step_index) -> jax.Array:
    """Cosine warmup from ``lr_warmup_start·lr`` to ``lr`` over ``lr_warmup_steps``, then flat."""
    t = jnp.asarray(step_index, jnp.float32)
    if cfg.lr_warmup_steps == 0:
        return jnp.full_like(t, cfg.lr)
    progress = jnp.clip(t / cfg.lr_warmup_steps, 0.0, 1.0)
    cosine_ramp = 0.5 * (1.0 - jnp.cos(math.pi * progress))
    return cfg.lr * (cfg.lr_warmup_start + (1.0 - cfg.lr_warmup_start) * cosine_ramp)


def linear_warmup(value, step_index, warmup_steps: int) -> jax.Array:
    """``value·min(1, t / warmup_steps)``; ``value`` when warmup_steps is 0 (the λ warmup)."""
    value = jnp.asarray(value, jnp.float32)
    if warmup_steps == 0:
        return value
    t = jnp.asarray(step_index, jnp.float32)
    return value * jnp.minimum(1.0, t / warmup_steps)


def project_decoder_gradient() -> optax.GradientTransformation:
    """Removes from each ``W_dec`` row gradient its component along the current row.

    docs/recipe.md#decoder-constraint.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project_decoder_gradient needs params: call tx.update(g, s, params).")
        updates = dict(updates)
        updates["W_dec"] = dictionary.project_out_parallel(updates["W_dec"], params["W_dec"])
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def _trainable_chain(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    parts = []
    if cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(optax.scale_by_adam(b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps))
    parts.append(optax.scale_by_learning_rate(lambda count: learning_rate(cfg, count)))
    return optax.chain(*parts)


def _labels(params):
    return {name: "buffer" if name in BUFFER_KEYS else "train" for name in params}


def optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The SAE optimiser for one architecture config (one SAE, or vmapped over a sweep axis).

    Order per docs/recipe.md#decoder-constraint: project the decoder-row gradients (when
    ``cfg.unit_norm_decoder``), optional global-norm clip, Adam(b1, b2, eps), learning-rate
    schedule. Buffers get zero updates. The caller renormalises the decoder afterwards with
    ``arch.constrain``.

    Args:
      cfg: an architecture config (``arch.default_config()`` with overrides).

    Returns:
      An optax transformation whose ``update`` requires ``params``.
    """
    trainable = _trainable_chain(cfg)
    if cfg.unit_norm_decoder:
        trainable = optax.chain(project_decoder_gradient(), trainable)
    return optax.multi_transform(
        {"train": trainable, "buffer": optax.set_to_zero()}, param_labels=_labels
    )
