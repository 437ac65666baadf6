"""JumpReLU and Heaviside step with rectangle-kernel straight-through estimators.

The estimators are docs/recipe.md#jumprelu-ste.

Both functions take pre-activations ``z`` of shape (..., M) and a per-latent threshold ``theta`` of
shape (M,). Their forward passes are exact; their backward passes are ``jax.custom_vjp`` rules:

- ``jumprelu(z, θ) = z·H(z − θ)``: ∂/∂z = H(z − θ); ð/ðθ = −(θ/ε)·K((z − θ)/ε).
- ``step(z, θ) = H(z − θ)``:         ∂/∂z = 0;        ð/ðθ = −(1/ε)·K((z − θ)/ε).

with ``K(u) = 1[−1/2 < u < 1/2]`` and H(0) = 0 (strict ``>``). The θ cotangent is summed over
every leading (batch / sequence) axis of ``z`` and never over the latent axis, so it has shape (M,)
and stays per-member correct when the function is vmapped over a sweep axis.

Synopsis::

    f = jumprelu(pi, theta, bandwidth)          # (B, M)
    l0 = step(pi, theta, bandwidth).sum(-1)      # (B,)
    f, fired = jumprelu_and_fired(pi, theta, bandwidth)   # both at once; fired (M,) = Σ_B step

``jumprelu_and_fired`` is what the training loss uses: the same values and gradients as the two
functions above, in fewer passes over the (B, M) arrays (on XLA:CPU every reduction reads a
materialised array, so each pass saved is a write and a read of B·M floats).

``bandwidth`` (ε) is a static Python float (a nondiff argument), 1e-3 in Gemma Scope.
"""

import functools

import jax
import jax.numpy as jnp


def rectangle(u: jax.Array) -> jax.Array:
    """The rectangle kernel K(u) = 1[−1/2 < u < 1/2], in u's dtype."""
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _sum_to_latents(cotangent: jax.Array, theta: jax.Array) -> jax.Array:
    """Sums a (..., M) cotangent over its leading axes to theta's shape (M,)."""
    return cotangent.reshape(-1, theta.shape[-1]).sum(axis=0).astype(theta.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """JumpReLU z·H(z − θ) with the rectangle STE for θ (see module docstring)."""
    return z * (z > theta).astype(z.dtype)


def _jumprelu_fwd(z, theta, bandwidth):
    return jumprelu(z, theta, bandwidth), (z, theta)


def _jumprelu_bwd(bandwidth, residuals, g):
    z, theta = residuals
    grad_z = (z > theta).astype(g.dtype) * g
    grad_theta = -(theta / bandwidth) * rectangle((z - theta) / bandwidth) * g
    return grad_z, _sum_to_latents(grad_theta, theta)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(z: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """Heaviside step H(z − θ) with the rectangle STE for θ and zero gradient for z."""
    return (z > theta).astype(z.dtype)


def _step_fwd(z, theta, bandwidth):
    return step(z, theta, bandwidth), (z, theta)


def _step_bwd(bandwidth, residuals, g):
    z, theta = residuals
    grad_theta = -(1.0 / bandwidth) * rectangle((z - theta) / bandwidth) * g
    return jnp.zeros_like(z), _sum_to_latents(grad_theta, theta)


step.defvjp(_step_fwd, _step_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu_and_fired(z: jax.Array, theta: jax.Array, bandwidth: float):
    """``(jumprelu(z, θ), Σ_leading step(z, θ))``: the latents and each latent's firing count.

    The count (M,), in z's dtype, is the step function summed over every leading axis, so
    ``sum(count) / n_tokens`` is the batch's mean L0, and ``λ · that`` the L0 penalty, with the
    step's estimator: the backward pass is the two functions' rules fused into one pass,
    ∂/∂z = H(z − θ)·g_f and ð/ðθ = Σ −(1/ε)·K((z − θ)/ε)·(θ·g_f + g_count).
    """
    on = z > theta
    f = jnp.where(on, z, jnp.zeros((), z.dtype))
    return f, _sum_to_latents(on.astype(z.dtype), theta).astype(z.dtype)


def _jumprelu_and_fired_fwd(z, theta, bandwidth):
    return jumprelu_and_fired(z, theta, bandwidth), (z, theta)


def _jumprelu_and_fired_bwd(bandwidth, residuals, cotangents):
    z, theta = residuals
    g_f, g_count = cotangents
    grad_z = jnp.where(z > theta, g_f, jnp.zeros((), g_f.dtype))
    kernel = rectangle((z - theta) / bandwidth)
    grad_theta = (-1.0 / bandwidth) * kernel * (theta * g_f + g_count)
    return grad_z, _sum_to_latents(grad_theta, theta)


jumprelu_and_fired.defvjp(_jumprelu_and_fired_fwd, _jumprelu_and_fired_bwd)
