"""The custom VJPs equal the pseudo-derivatives of docs/recipe.md#jumprelu-ste exactly."""

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.sae import ste

EPS = 0.1  # bandwidth: the kernel window is |z − θ| < 0.05
THETA = np.array([0.5, 1.0, 2.0], np.float32)
# Offsets z − θ: inside the window (±0.02, ±0.04), outside (±0.3, −0.07, 0.06), exactly 0.
OFFSETS = np.array(
    [
        [-0.02, 0.04, 0.3],
        [0.02, -0.3, -0.04],
        [0.06, 0.0, 0.01],
        [-0.07, 0.03, -0.6],
    ],
    np.float32,
)
Z = THETA + OFFSETS  # (B=4, M=3)
UPSTREAM = np.array(
    [[1.0, 2.0, -1.0], [0.5, 1.0, 3.0], [2.0, -1.5, 1.0], [1.0, 1.0, 1.0]], np.float32
)
# Hand-written window membership of OFFSETS (|offset| < 0.05), not computed by the code under test.
IN_WINDOW = np.array(
    [[1, 1, 0], [1, 0, 1], [0, 1, 1], [0, 1, 0]],
    np.float32,
)
ABOVE = np.array([[0, 1, 1], [1, 0, 0], [1, 0, 1], [0, 1, 0]], np.float32)  # z > θ, H(0) = 0


def _vjp(fn, z, theta, g):
    _, pullback = jax.vjp(lambda a, b: fn(a, b, EPS), z, theta)
    return pullback(g)


def test_forward_values_are_exact():
    np.testing.assert_array_equal(ste.jumprelu(Z, THETA, EPS), Z * ABOVE)
    np.testing.assert_array_equal(ste.step(Z, THETA, EPS), ABOVE)


def test_jumprelu_pseudo_derivatives():
    grad_z, grad_theta = _vjp(ste.jumprelu, Z, THETA, UPSTREAM)
    np.testing.assert_array_equal(grad_z, ABOVE * UPSTREAM)
    expected = -(THETA / EPS) * (IN_WINDOW * UPSTREAM).sum(0)
    np.testing.assert_allclose(grad_theta, expected, rtol=1e-6)
    assert grad_theta.shape == THETA.shape


def test_step_pseudo_derivatives():
    grad_z, grad_theta = _vjp(ste.step, Z, THETA, UPSTREAM)
    np.testing.assert_array_equal(grad_z, np.zeros_like(Z))
    expected = -(1.0 / EPS) * (IN_WINDOW * UPSTREAM).sum(0)
    np.testing.assert_allclose(grad_theta, expected, rtol=1e-6)


def test_theta_cotangent_sums_over_batch_and_sequence_axes_only():
    z = Z.reshape(2, 2, 3)  # (B, T, M)
    g = UPSTREAM.reshape(2, 2, 3)
    _, grad_theta = _vjp(ste.jumprelu, z, THETA, g)
    np.testing.assert_allclose(
        grad_theta, -(THETA / EPS) * (IN_WINDOW * UPSTREAM).sum(0), rtol=1e-6
    )


def test_vmap_over_a_sweep_axis_keeps_members_separate():
    # Member s has thresholds THETA * scale_s and inputs shifted with them.
    scales = np.array([1.0, 2.0, 0.5], np.float32)
    thetas = THETA[None] * scales[:, None]
    zs = thetas[:, None, :] + OFFSETS[None]
    gs = UPSTREAM[None] * np.array([1.0, -1.0, 2.0], np.float32)[:, None, None]
    for fn, factor in ((ste.jumprelu, thetas), (ste.step, np.ones_like(thetas))):
        loss = lambda z, t, g: jnp.sum(fn(z, t, EPS) * g)  # noqa: B023
        grad_theta = jax.vmap(jax.grad(loss, argnums=1))(zs, thetas, gs)
        expected = -(factor / EPS) * (IN_WINDOW[None] * gs).sum(1)
        np.testing.assert_allclose(grad_theta, expected, rtol=1e-5)


def test_jumprelu_and_fired_values_and_both_pseudo_derivatives():
    f, fired = ste.jumprelu_and_fired(Z, THETA, EPS)
    np.testing.assert_array_equal(f, Z * ABOVE)
    np.testing.assert_array_equal(fired, ABOVE.sum(0))
    g_count = np.array([0.5, -2.0, 3.0], np.float32)  # per-latent cotangent of the counts
    _, pullback = jax.vjp(lambda a, b: ste.jumprelu_and_fired(a, b, EPS), Z, THETA)
    grad_z, grad_theta = pullback((UPSTREAM, g_count))
    np.testing.assert_array_equal(grad_z, ABOVE * UPSTREAM)
    # The JumpReLU rule on g_f plus the step rule on g_count broadcast over the batch.
    expected = -(THETA / EPS) * (IN_WINDOW * UPSTREAM).sum(0) - (1.0 / EPS) * (
        IN_WINDOW * g_count
    ).sum(0)
    np.testing.assert_allclose(grad_theta, expected, rtol=1e-6)
    assert grad_theta.shape == THETA.shape
