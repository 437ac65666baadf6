"""One pure training step for one SAE, ready to be vmapped over a sweep axis and jitted.

Synopsis::

    step = make_train_step("jumprelu", cfg)
    opt_state = optim.optimizer(cfg).init(params)       # gemmascope.sae.optim
    params, opt_state, metrics = step(params, opt_state, x, step_index, sweep_value)
    params, opt_state, metrics = step(params, opt_state, (x, y), step_index, sweep_value)
    # ^ a transcoder (cfg.d_out set): x (B, d_in) in, y (B, d_out) reconstructed

The step (docs/recipe.md#optimiser): loss coefficients for this step (warmed-up λ, with
``sweep_value`` overriding ``cfg[arch.sweep_field(cfg)]`` as a traced scalar) -> loss and gradient
of the trainable params -> optimizer (decoder-gradient projection, Adam, lr schedule) ->
``constrain`` (decoder renormalisation) -> buffer updates (BatchTopK running threshold, AuxK firing
counters). It closes over ``cfg`` only, so ``jax.vmap(step, in_axes=(0, 0, None, None, 0))`` trains
a stack of SAEs that share each batch.

Every matmul of the step, forward, backward (custom VJPs included) and AuxK, runs at
``cfg.matmul_precision``: the step traces its body inside ``jax.default_matmul_precision``, which
JAX resolves at trace time into each ``dot_general``'s precision, so it holds whatever the caller's
jit, vmap or ambient precision is.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gemmascope.sae import optim, registry, token_blocks


def split_buffers(params: dict) -> tuple[dict, dict]:
    """Splits a params dict into (trainable, buffers) by :data:`optim.BUFFER_KEYS`."""
    trainable = {k: v for k, v in params.items() if k not in optim.BUFFER_KEYS}
    buffers = {k: v for k, v in params.items() if k in optim.BUFFER_KEYS}
    return trainable, buffers


def split_batch(batch) -> tuple[jax.Array, jax.Array | None]:
    """(input, target) of a batch; the target is None for an SAE's batch (one array).

    A transcoder's batch is the pair (input (B, d_in), target (B, d_out)) a paired source yields.
    """
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"a transcoder batch is an (input, target) pair, got {len(batch)}")
        return batch[0], batch[1]
    return batch, None


def batch_loss(arch, params: dict, batch, coeffs: dict, cfg: ml_collections.ConfigDict):
    """``arch.loss`` of one batch: an SAE's array, or a transcoder's (input, target) pair."""
    x, target = split_batch(batch)
    if target is None:
        return arch.loss(params, x, coeffs, cfg)
    return arch.loss(params, x, coeffs, cfg, target=target)


def check_sweep_values(name: str, cfg: ml_collections.ConfigDict, values, width=None) -> None:
    """Checks sweep values the traced step cannot check itself.

    Args:
      name: architecture name.
      cfg: its config (``cfg.k_max`` bounds a k sweep).
      values: the sweep values, one per member.
      width: the SAE width, to check k <= width (optional).

    Raises:
      KeyError: unknown architecture.
      ValueError: a negative coefficient, a non-positive target L0, or a k that is not an integer
        in [1, min(k_max, width)].
    """
    arch = registry.get(name)
    field = arch.sweep_field(cfg)
    for value in values:
        if field == "k":
            bound = cfg.k if cfg.k_max is None else cfg.k_max
            if width is not None:
                bound = min(bound, width)
            if int(value) != value or not 1 <= value <= bound:
                raise ValueError(
                    f"{name} sweep value k = {value!r} must be an integer in [1, {bound}] "
                    "(k <= cfg.k_max, which defaults to cfg.k, and k <= width)."
                )
        elif field == "target_l0" and not value > 0:
            raise ValueError(f"{name} sweep value target_l0 = {value!r} must be > 0.")
        elif not value >= 0:
            raise ValueError(f"{name} sweep value {field} = {value!r} must be >= 0.")


def make_train_step(name: str, cfg: ml_collections.ConfigDict, block_tokens: int = 0) -> Callable:
    """Builds ``step(params, opt_state, x, step_index, sweep_value)``.

    The step returns ``(params, opt_state, metrics)``.

    Args:
      name: architecture name (a key of ``ARCHITECTURES``).
      cfg: that architecture's config; validated here.
      block_tokens: 0 takes the loss's gradient over the whole batch at once; n > 0 (dividing
        the batch) over blocks of n tokens whenever ``arch.token_separable`` holds
        (:mod:`gemmascope.sae.token_blocks`: the same step to fp32 rounding, faster on CPU).
        Where it is a traced bool (AuxK), a ``lax.cond`` picks per step: under ``vmap`` that
        computes both ways, so block only where members run one at a time.

    Returns:
      A pure function for ONE SAE. ``metrics`` holds the scalars loss, recon_loss, sparsity_loss,
      aux_loss, l0, fvu, lr, sparsity_coeff (plus architecture extras) and ``fired`` (M,) int32.

    Raises:
      KeyError: unknown architecture.
      ValueError: invalid config.
    """
    arch = registry.get(name)
    arch.validate(cfg)
    registry.check_transcoder_support(name, cfg)
    # Its type and sign here; that it divides the batch, when the step is traced.
    token_blocks.check_block_tokens(block_tokens, block_tokens or 1)
    tx = optim.optimizer(cfg)

    def step(params, opt_state, x, step_index, sweep_value):
        with jax.default_matmul_precision(cfg.matmul_precision):
            return precise_step(params, opt_state, x, step_index, sweep_value)

    def precise_step(params, opt_state, x, step_index, sweep_value):
        coeffs = arch.coeffs(cfg, step_index, sweep_value)
        trainable, buffers = split_buffers(params)

        def loss_of_trainable(trainable_params, batch):
            return batch_loss(arch, {**trainable_params, **buffers}, batch, coeffs, cfg)

        def whole_batch():
            return jax.value_and_grad(loss_of_trainable, has_aux=True)(trainable, x)

        def in_blocks():
            return token_blocks.value_and_grad(loss_of_trainable, trainable, x, block_tokens)

        separable = arch.token_separable(params, cfg) if block_tokens else False
        if separable is False:
            (_, metrics), grads = whole_batch()
        elif separable is True:
            (_, metrics), grads = in_blocks()
        else:  # traced (AuxK: no latent dead this step)
            (_, metrics), grads = jax.lax.cond(separable, in_blocks, whole_batch)
        grads = {**grads, **{k: jnp.zeros_like(v) for k, v in buffers.items()}}
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_params = {**new_params, **buffers}  # buffers change only in update_buffers
        new_params = arch.constrain(new_params, cfg)
        new_params = arch.update_buffers(new_params, split_batch(x)[0], metrics, step_index, cfg)
        metrics = {
            **metrics,
            "lr": optim.learning_rate(cfg, step_index),
            # The coefficient the loss used (an architecture whose λ is a buffer reports it).
            "sparsity_coeff": jnp.asarray(
                metrics.get("sparsity_coeff", coeffs.get("sparsity_coeff", 0.0)), jnp.float32
            ),
        }
        return new_params, opt_state, metrics

    return step
