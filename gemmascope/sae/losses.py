"""Reconstruction losses and the batch metrics every architecture reports.

The reconstruction loss is the Gemma Scope one (docs/recipe.md#jumprelu-loss): squared error summed
over the d input dimensions, averaged over the batch. With inputs normalised to E||x||² = 1
(docs/recipe.md#normalisation) it is on the same scale as the fraction of variance unexplained.

Synopsis::

    rec = squared_error(x, x_hat)        # (B,) per-token Σ_d (x − x̂)²
    metrics = batch_metrics(x, x_hat, f, loss=..., recon_loss=..., sparsity_loss=..., aux_loss=...)
    # -> loss, recon_loss, sparsity_loss, aux_loss, l0, fvu (scalars) and fired (M,) int32
"""

import jax
import jax.numpy as jnp


def squared_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Per-token squared error summed over the last (feature) axis."""
    return jnp.sum(jnp.square(x - x_hat), axis=-1)


def fvu(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Batch fraction of variance unexplained: Σ||x − x̂||² / Σ||x − mean_batch(x)||²."""
    flat_x = x.reshape(-1, x.shape[-1])
    flat_hat = x_hat.reshape(-1, x.shape[-1])
    return fvu_from_error(jnp.sum(jnp.square(flat_x - flat_hat)), x)


def fvu_from_error(squared_error: jax.Array, x: jax.Array) -> jax.Array:
    """FVU of a batch ``x`` whose reconstruction's summed squared error is ``squared_error``."""
    flat_x = x.reshape(-1, x.shape[-1])
    total = jnp.sum(jnp.square(flat_x - jnp.mean(flat_x, axis=0)))
    return squared_error / jnp.maximum(total, 1e-30)


def fired_counts(f: jax.Array) -> jax.Array:
    """Number of tokens on which each latent is non-zero, (..., M) -> (M,) int32.

    Counted in float32 (exact below 2^24 tokens per batch) and converted: XLA:CPU reduces an
    int32 (B, M) array in two materialised stages, a float32 one in one.
    """
    counts = jnp.sum(f.reshape(-1, f.shape[-1]) != 0, axis=0, dtype=jnp.float32)
    return counts.astype(jnp.int32)


def batch_metrics(
    x: jax.Array,
    x_hat: jax.Array,
    f: jax.Array,
    *,
    loss: jax.Array,
    recon_loss: jax.Array,
    sparsity_loss,
    aux_loss=0.0,
    fired: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """The metric dict returned by every ``arch.loss`` (see docs/internals.md "sae").

    Args:
      x: input batch (B, d).
      x_hat: reconstruction (B, d).
      f: latent activations (B, M), or None when ``fired`` is given (the sparse path never
        forms them; the token count is then read from x).
      loss: the total training loss.
      recon_loss: mean per-token squared error.
      sparsity_loss: the sparsity penalty term (already multiplied by its coefficient).
      aux_loss: auxiliary losses (Gated's frozen-decoder reconstruction, AuxK), 0 if none.
      fired: (M,) float counts of the tokens each latent is non-zero on, when the loss has them
        already (JumpReLU's `ste.jumprelu_and_fired`); else counted here from f.

    Returns:
      Scalars loss, recon_loss, sparsity_loss, aux_loss, l0, fvu and the (M,) int32 ``fired``.
    """
    x_hat = jax.lax.stop_gradient(x_hat)
    if fired is None:
        fired = fired_counts(f)
    fired = jax.lax.stop_gradient(fired)
    n_tokens = (x if f is None else f).size // (x if f is None else f).shape[-1]
    return {
        "loss": loss,
        "recon_loss": recon_loss,
        "sparsity_loss": jnp.asarray(sparsity_loss, jnp.float32),
        "aux_loss": jnp.asarray(aux_loss, jnp.float32),
        "l0": jnp.sum(fired.astype(jnp.float32)) / n_tokens,
        "fvu": fvu(x, x_hat),
        "fired": fired.astype(jnp.int32),
    }
