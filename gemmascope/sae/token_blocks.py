"""One step's loss and gradient over the batch in blocks of tokens (docs/sae.md#token-blocks).

Every architecture's loss is a mean over the batch's tokens. Where each token's term depends on
that token alone (``arch.token_separable``), the batch's gradient is the mean of the gradients
of equal blocks of it, so the step can run its forward and backward pass block by block in a
``lax.scan`` and sum the gradients: the same update to fp32 rounding, with (block, width)
arrays in place of (batch, width) ones. On a CPU those stay in cache between the forward pass
and the backward pass, which makes the step 1.1-2.4x faster (docs/benchmarks.md#token-blocks);
everywhere they take less memory.

A block takes every ``n_blocks``-th token (a strided split of the batch axis), so a batch
sharded over devices keeps each device's tokens local.

The metrics are combined as the whole batch's: ``fired`` summed, ``fvu`` from the summed squared
error over the whole batch's variance, ``loss``, ``recon_loss``, ``sparsity_loss``, ``aux_loss``
and ``l0`` averaged; every other metric is a per-step value (λ, a target L0) taken from the
last block.

Synopsis::

    n = block_tokens_for(batch_size, width, requested=None, platform="cpu")  # 0: whole batch
    (loss, metrics), grads = value_and_grad(loss_fn, trainable, batch, n)
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gemmascope.sae import losses

# Tokens per block when the trainer chooses (CPU): 256-512 measured best from width 1024 to
# 16384 (docs/benchmarks.md#token-blocks).
DEFAULT_BLOCK_TOKENS = 256
# ... when the whole batch's (batch, width) arrays have at least this many elements (4 MiB).
MIN_BLOCKED_ELEMENTS = 2**20
# Metrics that are means over the batch's tokens (averaged over equal blocks).
_TOKEN_MEANS = ("loss", "recon_loss", "sparsity_loss", "aux_loss", "l0")


def check_block_tokens(block_tokens, batch_size: int) -> None:
    """Raises ValueError unless ``block_tokens`` is 0 (whole batch) or divides ``batch_size``."""
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 0:
        raise ValueError(
            f"block_tokens must be an int >= 0 (0: the whole batch at once; n: blocks of n "
            f"tokens), got {block_tokens!r}."
        )
    if block_tokens and batch_size % block_tokens:
        raise ValueError(
            f"block_tokens = {block_tokens} does not divide the batch of {batch_size} tokens: "
            f"use a divisor of the batch size, or 0 for the whole batch at once."
        )


def block_tokens_for(
    batch_size: int, width: int, requested, platform: str, data_shards: int = 1
) -> int:
    """Tokens per block: ``requested`` (checked), or for None the platform's choice.

    None picks :data:`DEFAULT_BLOCK_TOKENS` on a CPU whose batch is not split over devices, has
    at least two such blocks and a (batch, width) array of :data:`MIN_BLOCKED_ELEMENTS` or
    more (smaller ones stay in cache anyway: blocks were 0.84x at 512 x 256, 1.09x at
    1024 x 1024, 1.95x at 2048 x 1024); else 0. On GPU/TPU XLA fuses the step's reductions into
    their producers and the whole batch is the default (not measured: no accelerator was lent).
    """
    if requested is not None:
        check_block_tokens(requested, batch_size)
        return 0 if requested == batch_size else requested
    blocks = batch_size // DEFAULT_BLOCK_TOKENS
    if (
        platform != "cpu"
        or data_shards != 1
        or blocks < 2
        or batch_size % DEFAULT_BLOCK_TOKENS
        or batch_size * width < MIN_BLOCKED_ELEMENTS
    ):
        return 0
    return DEFAULT_BLOCK_TOKENS


def _blocks(batch, n_blocks: int):
    """(B, ...) arrays -> (n_blocks, B / n_blocks, ...), block j holding tokens j, j + n, ..."""

    def split(a):
        strided = a.reshape(a.shape[0] // n_blocks, n_blocks, *a.shape[1:])
        return jnp.swapaxes(strided, 0, 1)

    return jax.tree.map(split, batch)


def _target(batch):
    """What the SAE reconstructs: the batch, or a transcoder's target (second of the pair)."""
    return batch[1] if isinstance(batch, (tuple, list)) else batch


def value_and_grad(loss_fn: Callable, trainable: dict, batch, block_tokens: int):
    """``jax.value_and_grad(loss_fn, has_aux=True)(trainable, batch)``, block by block.

    Args:
      loss_fn: ``(trainable, batch) -> (loss, metrics)``, a mean over the batch's tokens of
        per-token terms (the caller checks ``arch.token_separable``), its metrics those of
        ``losses.batch_metrics`` (``recon_loss`` the mean squared error ``fvu`` is taken from).
      trainable: the params differentiated.
      batch: a (B, d) array or a transcoder's (input, target) pair of them.
      block_tokens: tokens per block, dividing B; 0 or B: one block (plain value_and_grad).

    Returns:
      ((loss, metrics), grads) of the whole batch, to fp32 rounding.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    n_tokens = jax.tree.leaves(batch)[0].shape[0]
    if not block_tokens or block_tokens == n_tokens:
        return grad_fn(trainable, batch)
    check_block_tokens(block_tokens, n_tokens)
    n_blocks = n_tokens // block_tokens
    blocked = _blocks(batch, n_blocks)
    first = jax.tree.map(lambda a: a[0], blocked)
    out_shapes = jax.eval_shape(grad_fn, trainable, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shapes)

    def add_block(total, block):
        (loss, metrics), grads = grad_fn(trainable, block)
        (total_loss, total_metrics), total_grads = total
        summed = {
            name: total_metrics[name] + value if name in (*_TOKEN_MEANS, "fired") else value
            for name, value in metrics.items()
        }
        grads = jax.tree.map(jnp.add, total_grads, grads)
        return ((total_loss + loss, summed), grads), None

    (loss, metrics), grads = jax.lax.scan(add_block, zeros, blocked)[0]
    scale = 1.0 / n_blocks
    grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)
    metrics = {
        name: value * scale if name in _TOKEN_MEANS else value for name, value in metrics.items()
    }
    squared_error = metrics["recon_loss"] * n_tokens
    metrics["fvu"] = losses.fvu_from_error(squared_error, _target(batch))
    return (loss * scale, metrics), grads
