"""The training step: decoder constraint, gradient projection, vmap over a sweep axis."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gemmascope import sae
from gemmascope.sae import dictionary, optim

D_IN, WIDTH, BATCH = 16, 48, 64


def _batch(seed):
    return jax.random.normal(jax.random.key(seed), (BATCH, D_IN)) / np.sqrt(D_IN)


def _small_cfg(name):
    cfg = sae.ARCHITECTURES[name].default_config()
    cfg.lr = 1e-2  # large enough that the decoder visibly leaves the unit sphere without renorm
    cfg.lr_warmup_steps = 3
    cfg.sparsity_warmup_steps = 1
    return cfg


ALL = sorted(sae.ARCHITECTURES)
# The step is compiled twice per architecture here; these four cover every code path the others
# reuse (custom VJPs, r_mag params, traced k, buffers and the global selection).
VMAPPED = ["batchtopk", "gated", "jumprelu", "topk"]


def test_projected_gradient_is_orthogonal_to_each_row():
    key_w, key_g = jax.random.split(jax.random.key(3))
    w_dec = jax.random.normal(key_w, (WIDTH, D_IN)) * 3.0  # deliberately not unit norm
    grad = jax.random.normal(key_g, (WIDTH, D_IN))
    projected = dictionary.project_out_parallel(grad, w_dec)
    cosines = jnp.sum(projected * w_dec, -1) / (
        dictionary.row_norms(projected) * dictionary.row_norms(w_dec)
    )
    np.testing.assert_allclose(cosines, 0.0, atol=1e-5)
    # Only the parallel part was removed: the difference is parallel to the row.
    removed = grad - projected
    cross = removed[:, :, None] * w_dec[:, None, :] - removed[:, None, :] * w_dec[:, :, None]
    np.testing.assert_allclose(cross, 0.0, atol=1e-5)


def test_optimizer_projects_before_adam():
    cfg = _small_cfg("jumprelu")
    params = sae.ARCHITECTURES["jumprelu"].init(jax.random.key(0), D_IN, WIDTH, cfg)
    grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
    tx = optim.project_decoder_gradient()
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(jnp.sum(updates["W_dec"] * params["W_dec"], -1), 0.0, atol=1e-5)
    np.testing.assert_array_equal(updates["W_enc"], grads["W_enc"])


def _numpy_optimizer_steps(params, grad_steps, cfg):
    """The optimizer written out by hand (docs/recipe.md#optimiser, #decoder-constraint), float64.

    Per step: project each W_dec row's gradient off that row; clip the global norm of the
    trainable gradients; Adam with bias correction (optax's scale_by_adam, eps outside the root);
    the cosine lr warmup from lr_warmup_start·lr. Buffers never move.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    trainable = [k for k in p if k not in sae.BUFFER_KEYS]
    m = {k: np.zeros_like(p[k]) for k in trainable}
    v = {k: np.zeros_like(p[k]) for k in trainable}
    history, clipped = [], []
    for t, grads in enumerate(grad_steps):
        g = {k: np.asarray(grads[k], np.float64) for k in trainable}
        row = p["W_dec"] / np.linalg.norm(p["W_dec"], axis=-1, keepdims=True)
        g["W_dec"] = g["W_dec"] - np.sum(g["W_dec"] * row, -1, keepdims=True) * row
        norm = np.sqrt(sum(np.sum(g[k] ** 2) for k in trainable))
        clipped.append(norm > cfg.max_grad_norm)
        if clipped[-1]:
            g = {k: g[k] * cfg.max_grad_norm / norm for k in trainable}
        warm = 0.5 * (1 - np.cos(np.pi * min(t / cfg.lr_warmup_steps, 1.0)))
        lr = cfg.lr * (cfg.lr_warmup_start + (1 - cfg.lr_warmup_start) * warm)
        for k in trainable:
            m[k] = cfg.adam_b1 * m[k] + (1 - cfg.adam_b1) * g[k]
            v[k] = cfg.adam_b2 * v[k] + (1 - cfg.adam_b2) * g[k] ** 2
            m_hat = m[k] / (1 - cfg.adam_b1 ** (t + 1))
            v_hat = v[k] / (1 - cfg.adam_b2 ** (t + 1))
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + cfg.adam_eps)
        history.append({k: value.copy() for k, value in p.items()})
    return history, clipped


def test_optimizer_is_projection_then_clip_then_adam_then_the_lr_schedule():
    """`sae.optimizer` against a hand-written update over 5 steps, every knob off its default.

    b1 != 0 and b2 far from 1 (a swapped pair changes every step), a large eps, a clip that
    triggers on some steps only, and a warmup that ends inside the run; a non-unit decoder so the
    projection must use the current rows. BatchTopK's params carry both buffers.
    """
    cfg = _small_cfg("batchtopk")
    cfg.update(
        k=2,
        lr=0.05,
        lr_warmup_steps=3,
        lr_warmup_start=0.2,
        adam_b1=0.6,
        adam_b2=0.9,
        adam_eps=1e-3,
        max_grad_norm=4.0,
    )
    rng = np.random.default_rng(7)
    params = dict(sae.ARCHITECTURES["batchtopk"].init(jax.random.key(0), D_IN, WIDTH, cfg))
    params["W_dec"] = params["W_dec"] * jnp.asarray(rng.uniform(0.5, 2.0, (WIDTH, 1)), jnp.float32)
    params["running_threshold"] = jnp.asarray(0.3, jnp.float32)
    grad_steps = [
        {
            k: jnp.asarray(rng.normal(size=np.shape(v)) * scale, jnp.asarray(v).dtype)
            for k, v in params.items()
        }
        for scale in (0.1, 0.5, 0.2, 1.0, 0.3)
    ]
    expected, clipped = _numpy_optimizer_steps(params, grad_steps, cfg)
    assert any(clipped) and not all(clipped)
    tx = sae.optimizer(cfg)
    update = jax.jit(tx.update)
    state, current = tx.init(params), params
    for t, grads in enumerate(grad_steps):
        updates, state = update(grads, state, current)
        current = optax.apply_updates(current, updates)
        for name, value in expected[t].items():
            np.testing.assert_allclose(
                current[name], value, rtol=2e-5, atol=1e-7, err_msg=f"{name} at step {t}"
            )


def test_learning_rate_and_sparsity_warmup_schedules():
    cfg = sae.ARCHITECTURES["jumprelu"].default_config()  # Gemma Scope numbers
    lr = [float(optim.learning_rate(cfg, t)) for t in (0, 500, 1000, 5000)]
    np.testing.assert_allclose(lr, [7e-6, 7e-5 * 0.55, 7e-5, 7e-5], rtol=1e-5)
    lam = [
        float(optim.linear_warmup(1e-3, t, cfg.sparsity_warmup_steps))
        for t in (0, 2500, 10_000, 20_000)
    ]
    np.testing.assert_allclose(lam, [0.0, 2.5e-4, 1e-3, 1e-3], rtol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_constrain_renormalises_decoder_rows(name):
    cfg = sae.ARCHITECTURES[name].default_config()
    params = sae.ARCHITECTURES[name].init(jax.random.key(0), D_IN, WIDTH, cfg)
    scales = jnp.linspace(0.2, 3.0, WIDTH)[:, None]
    constrained = sae.ARCHITECTURES[name].constrain(
        {**params, "W_dec": params["W_dec"] * scales}, cfg
    )
    np.testing.assert_allclose(dictionary.row_norms(constrained["W_dec"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(constrained["W_dec"], params["W_dec"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", VMAPPED)
def test_vmap_over_sweep_axis_equals_separate_calls_and_keeps_unit_rows(name):
    """Two updates of a stack of 4 SAEs == two updates of each SAE alone.

    Decoder rows stay unit norm after every update.
    """
    cfg = _small_cfg(name)
    arch = sae.ARCHITECTURES[name]
    base = cfg[arch.SWEEP_FIELD]
    sweep = jnp.asarray([base * 0.5, base, base * 2, base * 4], jnp.float32)
    if arch.SWEEP_FIELD == "k":
        sweep = jnp.asarray([1, 2, 3, 4], jnp.int32)
        cfg.k, cfg.k_max = 2, 4
    keys = jax.random.split(jax.random.key(1), 4)
    members = [arch.init(k, D_IN, WIDTH, cfg) for k in keys]
    tx = sae.optimizer(cfg)
    opt_states = [tx.init(p) for p in members]
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    step = sae.make_train_step(name, cfg)
    vmapped = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None, 0)))
    single = jax.jit(step)
    v_params, v_opt = stack(members), stack(opt_states)
    for t in range(2):
        x = _batch(t)
        before = v_params["W_dec"]
        v_params, v_opt, v_metrics = vmapped(v_params, v_opt, x, t, sweep)
        assert not np.allclose(v_params["W_dec"], before), "the decoder did not move"
        np.testing.assert_allclose(dictionary.row_norms(v_params["W_dec"]), 1.0, atol=1e-6)
        for s in range(4):
            members[s], opt_states[s], metrics = single(members[s], opt_states[s], x, t, sweep[s])
            for key in members[s]:
                np.testing.assert_allclose(v_params[key][s], members[s][key], rtol=2e-5, atol=1e-6)
            for key in metrics:
                np.testing.assert_allclose(v_metrics[key][s], metrics[key], rtol=2e-5, atol=1e-6)
    assert set(v_metrics) >= {"loss", "recon_loss", "sparsity_loss", "aux_loss", "l0", "fvu"}
    assert v_metrics["fired"].shape == (4, WIDTH) and v_metrics["fired"].dtype == jnp.int32
    # The sweep value reached each member's loss.
    reached = v_metrics["l0"] if arch.SWEEP_FIELD == "k" else v_metrics["sparsity_coeff"]
    assert len({float(v) for v in reached}) == 4
