"""JumpReLU with ``sparse_capacity`` > 0 against the dense loss (autodiff of the dense products).

Loss, metrics and the gradient of every trainable param (θ as log θ and as raw θ) on batches
whose support fits the capacity and on batches that overflow it (the dense fallback); whole
training steps, vmapped over a sweep axis; and the trainer's step with the latent axis sharded on
a (2, 4) mesh of host devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gemmascope.mesh
from gemmascope import sae
from gemmascope.sae import jumprelu, sparse_support
from gemmascope.train import step as step_lib

D_IN, WIDTH, BATCH, EPS = 16, 96, 64, 0.05


def _batch(seed=0):
    return jax.random.normal(jax.random.key(seed), (BATCH, D_IN)) / np.sqrt(D_IN)


def _cfg(form="coeff", param="log", auxk=False, capacity=0):
    cfg = jumprelu.default_config()
    cfg.update(sparsity_form=form, threshold_param=param, bandwidth=EPS, target_l0=3.0)
    cfg.update(sparse_capacity=capacity, lr=1e-2, lr_warmup_steps=1, sparsity_warmup_steps=1)
    # Adam's g / (√v + ε) turns the rounding of a gradient that sums to ~0 (1e-9 either way) into
    # a step of up to lr at ε = 1e-8; at 1e-4 the steps compare the gradients, not their noise.
    cfg.adam_eps = 1e-4
    if auxk:
        cfg.update(auxk_alpha=1.0 / 32.0, k_aux=8, dead_tokens=100)
    return cfg


def _params(cfg, fire_fraction, dead=False, seed=0):
    """Init params with θ per latent at the (1 − fire_fraction) quantile of its pre-activations."""
    params = jumprelu.init(jax.random.key(seed), D_IN, WIDTH, cfg)
    params["b_enc"] = 0.05 * jax.random.normal(jax.random.key(seed + 1), (WIDTH,))
    params["b_dec"] = 0.05 * jax.random.normal(jax.random.key(seed + 2), (D_IN,))
    pi = (_batch() - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    theta = jnp.maximum(jnp.quantile(pi, 1.0 - fire_fraction, axis=0), 1e-3)
    if cfg.threshold_param == "log":
        params["log_threshold"] = jnp.log(theta)
    else:
        params["threshold"] = theta
    if dead:  # a third of the latents dead: AuxK's term and its π gradient are not zero
        params["tokens_since_fired"] = jnp.where(jnp.arange(WIDTH) % 3 == 0, 1000, 0).astype(
            jnp.int32
        )
    return params


def _loss_and_grads(cfg, params, x, step_index=5):
    coeffs = jumprelu.coeffs(cfg, step_index)
    trainable, buffers = sae.train_step.split_buffers(params)

    def loss(p):
        return jumprelu.loss({**p, **buffers}, x, coeffs, cfg)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(trainable)


def _assert_same(sparse_cfg, dense_cfg, params, x):
    (want_loss, want_metrics), want = _loss_and_grads(dense_cfg, params, x)
    (got_loss, got_metrics), got = _loss_and_grads(sparse_cfg, params, x)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for name, value in want_metrics.items():
        np.testing.assert_allclose(got_metrics[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    for name, value in want.items():
        scale = float(jnp.max(jnp.abs(value)))
        assert scale > 0, name
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize(
    "form, param, auxk",
    [("coeff", "log", False), ("target_l0", "raw", True), ("quadratic", "raw", False)],
)
def test_loss_metrics_and_gradients_match_dense_on_a_sparse_batch(form, param, auxk):
    dense_cfg = _cfg(form, param, auxk)
    params = _params(dense_cfg, fire_fraction=0.05, dead=auxk)
    pi = (_batch() - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    capacity = 32
    assert not sparse_support.overflows(pi, jumprelu.threshold(params, dense_cfg), EPS, capacity)
    _assert_same(_cfg(form, param, auxk, capacity), dense_cfg, params, _batch())


def test_overflowing_batch_matches_dense_through_the_fallback():
    dense_cfg = _cfg("quadratic", "log", auxk=True)
    params = _params(dense_cfg, fire_fraction=0.4, dead=True)
    _assert_same(_cfg("quadratic", "log", True, capacity=4), dense_cfg, params, _batch())


def _run_steps(cfg, params, n_steps=3, vmapped=False):
    step = sae.make_train_step("jumprelu", cfg)
    value = cfg[jumprelu.sweep_field(cfg)]
    if vmapped:
        step = jax.vmap(step, in_axes=(0, 0, None, None, 0))
    step = jax.jit(step)
    opt_state = (jax.vmap(sae.optimizer(cfg).init) if vmapped else sae.optimizer(cfg).init)(params)
    values = jnp.full((2,), value) if vmapped else value
    for i in range(n_steps):
        params, opt_state, _ = step(params, opt_state, _batch(i), i, values)
    return params


def test_training_steps_match_dense():
    """Three Adam steps (short_run-like: raw θ, AuxK with dead latents) of two vmapped SAEs.

    The second member overflows the capacity, so each branch runs (one SAE alone is the first
    member's case; the suite keeps the vmapped one, which covers it).
    """
    vmapped = True
    dense_cfg = _cfg("target_l0", "raw", auxk=True)
    params = _params(dense_cfg, fire_fraction=0.05, dead=True)
    crowded = _params(dense_cfg, fire_fraction=0.5, dead=True, seed=3)
    params = jax.tree.map(lambda *v: jnp.stack(v), params, crowded)
    want = _run_steps(dense_cfg, params, vmapped=vmapped)
    got = _run_steps(_cfg("target_l0", "raw", True, capacity=32), params, vmapped=vmapped)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=2e-5, atol=2e-6, err_msg=name)
    assert not np.allclose(want["threshold"], params["threshold"])  # θ really trained


def test_trainer_step_with_sharded_latents_matches_dense():
    """The trainer's step with members one after another (the CPU default).

    That is where the sparse branch really runs; vmapped members are covered by
    test_training_steps_match_dense. Both kernel sets: XLA's gathers and scatter-adds partitioned
    over the mesh, and the CPU kernels (host callbacks, run once with the whole arrays).
    """
    members_per_pass = 1
    mesh = gemmascope.mesh.make_mesh((("data", 2), ("model", 4)))
    states = {}
    for capacity, kernels in ((0, "auto"), (16, "xla"), (16, "cpu")):
        cfg = _cfg("coeff", "raw", auxk=True, capacity=capacity)
        cfg.sparse_kernels = kernels
        # π ~ N(0, 1/16) at init: θ = 0.5 fires on about 2% of the latents.
        cfg.update(threshold_init=0.5, dead_tokens=64, sparsity_coeff=1e-3)
        shape = step_lib.JobShape(
            arch="jumprelu",
            sae_cfg=cfg,
            d_in=D_IN,
            width=WIDTH,
            n_members=2,
            batch_size=BATCH,
            dead_window=2,
            sweep_dtype="float32",
            mesh=mesh,
            members_per_pass=members_per_pass,
        )
        fns = step_lib.compiled_functions(shape)
        state = fns.init(np.array([0, 1], np.int32), np.array([1e-3, 3e-2], np.float32))
        member = jax.tree.map(lambda v: jax.device_get(v)[0], state["params"])
        pi = (_batch() - member["b_dec"]) @ member["W_enc"] + member["b_enc"]
        assert not sparse_support.overflows(pi, member["threshold"], EPS, 16)  # sparse at first
        for i in range(3):
            batch = jax.device_put(_batch(i), fns.batch_sharding)
            state, metrics = fns.train_step(state, batch)
        assert len(state["params"]["W_dec"].sharding.device_set) == 8
        states[kernels] = (jax.device_get(state["params"]), jax.device_get(metrics))
    want, want_metrics = states["auto"]  # dense
    for kernels in ("xla", "cpu"):
        got, got_metrics = states[kernels]
        for name, value in want.items():
            np.testing.assert_allclose(
                got[name], value, rtol=2e-5, atol=2e-6, err_msg=f"{kernels}: {name}"
            )
        for name, value in want_metrics.items():
            np.testing.assert_allclose(
                got_metrics[name], value, rtol=1e-5, atol=1e-7, err_msg=f"{kernels}: {name}"
            )


def test_bad_capacity_and_matryoshka_are_refused():
    cfg = _cfg(capacity=-1)
    with pytest.raises(ValueError, match="sparse_capacity"):
        jumprelu.validate(cfg)
    cfg = sae.ARCHITECTURES["matryoshka_jumprelu"].default_config()
    cfg.sparse_capacity = 8
    with pytest.raises(ValueError, match="sparse_capacity"):
        sae.ARCHITECTURES["matryoshka_jumprelu"].validate(cfg)
