"""The sparse support path (issue 14) against autodiff of the dense JumpReLU products.

The oracle is the dense form the training loss used before: π = (x − b_dec) W_enc + b_enc,
``ste.jumprelu_and_fired`` / ``ste.step`` for the latents and their counts, f W_dec, all
differentiated by JAX. Every cotangent the loss can send (decoded, fired, l0, π) is made non-zero
with random weights, and θ is placed so that many entries fall in the STE window.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.sae import sparse_support, ste

B, D, M, EPS = 48, 12, 200, 0.05


def _problem(seed=0, fire_fraction=0.04, d_out=D):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    w_enc = jnp.asarray(rng.normal(size=(D, M)) / np.sqrt(D), jnp.float32)
    b_enc = jnp.asarray(0.1 * rng.normal(size=(M,)), jnp.float32)
    b_dec = jnp.asarray(0.1 * rng.normal(size=(D,)), jnp.float32)
    w_dec = jnp.asarray(rng.normal(size=(M, d_out)) / np.sqrt(M), jnp.float32)
    pi = (x - b_dec) @ w_enc + b_enc
    # θ per latent at the (1 − fire_fraction) quantile: about fire_fraction·M latents per token.
    theta = jnp.quantile(pi, 1.0 - fire_fraction, axis=0)
    shapes = ((B, d_out), (M,), (B,), (B, M))
    weights = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    return (x, w_enc, b_enc, b_dec, theta, w_dec), weights


def _dense(x, w_enc, b_enc, b_dec, theta, w_dec, centre=True):
    pi = ((x - b_dec) if centre else x) @ w_enc + b_enc
    f, fired = ste.jumprelu_and_fired(pi, theta, EPS)
    l0 = jnp.sum(ste.step(pi, theta, EPS), axis=-1)
    return f @ w_dec, fired, l0, pi


def _scalar(outputs, weights, with_pi):
    decoded, fired, l0, pi = outputs
    total = jnp.sum(decoded * weights[0]) + jnp.sum(fired * weights[1]) + jnp.sum(l0 * weights[2])
    return total + (jnp.sum(pi * weights[3]) if with_pi else 0.0)


# Both implementations of the listing and the sparse products: XLA's gathers and scatter-adds,
# and sparse_cpu's compiled loops (the default on the CPU backend).
KERNELS = ["xla", "cpu"]


def _sparse_fn(capacity, with_pi, centre=True, kernels="xla"):
    def fn(*args):
        return sparse_support.encode_decode(
            *args,
            bandwidth=EPS,
            capacity=capacity,
            centre=centre,
            with_pi=with_pi,
            kernels=kernels,
        )

    return fn


def _check(args, weights, capacity, with_pi, kernels, centre=True):
    def dense_loss(*a):
        outputs = _dense(*a, centre=centre)
        return _scalar(outputs, weights, with_pi), outputs

    def sparse_loss(*a):
        outputs = _sparse_fn(capacity, with_pi, centre, kernels)(*a)
        return _scalar(outputs, weights, with_pi), outputs

    argnums = (1, 2, 3, 4, 5)
    (want_value, want_out), want = jax.jit(jax.value_and_grad(dense_loss, argnums, True))(*args)
    (got_value, got_out), got = jax.jit(jax.value_and_grad(sparse_loss, argnums, True))(*args)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-5, atol=1e-4)
    for g, w in zip(got_out, want_out, strict=True):
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("W_enc", "b_enc", "b_dec", "theta", "W_dec"), got, want, strict=True):
        scale = float(jnp.max(jnp.abs(w)))
        assert scale > 0 or (name == "b_dec" and not centre), name  # every gradient is exercised
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("width", [200, 64, 37])
def test_row_support_lists_each_rows_true_columns_in_order(width):
    rng = np.random.default_rng(width)
    mask = rng.random((9, width)) < 0.15
    mask[0] = False  # an empty row
    mask[1] = True  # a row fuller than the capacity
    capacity = 20
    got = np.asarray(jax.jit(sparse_support.row_support, static_argnums=1)(mask, capacity))
    for row, found in zip(mask, got, strict=True):
        want = np.flatnonzero(row)[:capacity]
        np.testing.assert_array_equal(found[: len(want)], want)
        assert np.all(found[len(want) :] == width)


def _window_entries(args):
    x, w_enc, b_enc, b_dec, theta, _ = args
    pi = (x - b_dec) @ w_enc + b_enc
    return int(jnp.sum(ste.rectangle((pi - theta) / EPS)))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("with_pi", [False, True])
def test_sparse_batch_matches_dense_autodiff(with_pi, kernels):
    args, weights = _problem(seed=1)
    assert _window_entries(args) > B  # θ's STE gradient really has entries
    pi = (args[0] - args[3]) @ args[1] + args[2]
    counts = np.sum(sparse_support.support_mask(pi, args[4], EPS), axis=-1)
    # Two tokens fuller than the capacity: the crowded-row part runs too, not the fallback.
    capacity = int(np.sort(counts)[-3])
    assert np.sum(counts > capacity) == 2 <= sparse_support.crowded_rows_limit(B)
    assert not sparse_support.overflows(pi, args[4], EPS, capacity)  # the sparse branch runs
    _check(args, weights, capacity, with_pi, kernels)


@pytest.mark.parametrize("kernels", KERNELS)
def test_overflowing_batch_falls_back_to_dense_exactly(kernels):
    args, weights = _problem(seed=2, fire_fraction=0.3)
    capacity = 12
    pi = (args[0] - args[3]) @ args[1] + args[2]
    assert sparse_support.overflows(pi, args[4], EPS, capacity)
    _check(args, weights, capacity, with_pi=True, kernels=kernels)


@pytest.mark.parametrize("kernels", KERNELS)
def test_transcoder_shapes_without_centring(kernels):
    args, weights = _problem(seed=3, d_out=7)
    _check(args, weights, capacity=40, with_pi=False, kernels=kernels, centre=False)


@pytest.mark.parametrize("kernels", KERNELS)
def test_vmapped_members_with_and_without_overflow(kernels):
    (a0, w0), (a1, _) = _problem(seed=4), _problem(seed=5, fire_fraction=0.4)
    stacked = jax.tree.map(lambda *v: jnp.stack(v), a0, a1)
    capacity = 30

    def loss_of(fn):
        def member(*a):
            return _scalar(fn(*a), w0, True)

        return jax.vmap(jax.value_and_grad(member, (1, 2, 3, 4, 5)))

    want = jax.jit(loss_of(_dense))(*stacked)
    got = jax.jit(loss_of(_sparse_fn(capacity, True, kernels=kernels)))(*stacked)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))))
