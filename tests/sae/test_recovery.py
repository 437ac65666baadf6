"""Known-answer tests: SAEs trained from scratch recover a known sparse dictionary.

The sparsity knobs move L0 where they should.

Synthetic data: 128 random unit-norm true features in d = 64; each feature is active independently
with probability 4/128 (true L0 ≈ 4) with magnitude U(0.5, 1.5); x = codes @ D, scaled so
E||x||² ≈ 1 (docs/recipe.md#normalisation). Runs are short, so they use the knobs that
docs/recipe.md#short-runs describes (raw θ, a larger lr and bandwidth, short warmups).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import sae

D_IN, N_TRUE, TRUE_L0, WIDTH = 64, 128, 4.0, 256
BATCH, N_TRAIN, N_EVAL = 256, 32_768, 4_096


@functools.lru_cache(maxsize=1)
def _problem():
    """(true dictionary (N_TRUE, D_IN), train x, eval x, eval true L0)."""
    key_dict, key_train, key_eval = jax.random.split(jax.random.key(2024), 3)
    true_dict = jax.random.normal(key_dict, (N_TRUE, D_IN))
    true_dict = true_dict / jnp.linalg.norm(true_dict, axis=-1, keepdims=True)

    def sample(key, n):
        key_on, key_mag = jax.random.split(key)
        active = jax.random.bernoulli(key_on, TRUE_L0 / N_TRUE, (n, N_TRUE))
        codes = active * jax.random.uniform(key_mag, (n, N_TRUE), minval=0.5, maxval=1.5)
        scale = 1.0 / np.sqrt(TRUE_L0 * (1.0 + 1.0 / 12.0))  # E[a²] = 1 + 1/12 for U(0.5, 1.5)
        return codes @ true_dict * scale, jnp.sum(active, axis=-1)

    x_train, _ = sample(key_train, N_TRAIN)
    x_eval, eval_l0 = sample(key_eval, N_EVAL)
    return true_dict, x_train, x_eval, float(jnp.mean(eval_l0))


def _short_run_cfg(name, **overrides):
    cfg = sae.ARCHITECTURES[name].default_config()
    cfg.lr = 3e-3
    cfg.lr_warmup_steps = 50
    cfg.sparsity_warmup_steps = 200
    cfg.update(overrides)
    return cfg


def _train(name, cfg, steps, sweep_values, seed=0):
    """Trains len(sweep_values) SAEs stacked on a sweep axis (the trainer's vmap).

    Returns the stacked params.
    """
    arch = sae.ARCHITECTURES[name]
    _, x_train, _, _ = _problem()
    n_members = len(sweep_values)
    keys = jax.random.split(jax.random.key(seed), n_members)
    params = jax.vmap(lambda k: arch.init(k, D_IN, WIDTH, cfg))(keys)
    opt_state = jax.vmap(sae.optimizer(cfg).init)(params)
    step = jax.vmap(sae.make_train_step(name, cfg), in_axes=(0, 0, None, None, 0))
    if n_members == 1:  # unbatched, so AuxK's lax.cond really skips while nothing is dead
        single = sae.make_train_step(name, cfg)
        unstack = lambda tree: jax.tree.map(lambda leaf: leaf[0], tree)
        stack = lambda tree: jax.tree.map(lambda leaf: leaf[None], tree)
        step = lambda p, o, x, t, v: stack(single(unstack(p), unstack(o), x, t, v[0]))
    n_batches = N_TRAIN // BATCH

    def body(carry, t):
        x = jax.lax.dynamic_slice_in_dim(x_train, (t % n_batches) * BATCH, BATCH)
        params, opt_state, _ = step(*carry, x, t, jnp.asarray(sweep_values))
        return (params, opt_state), None

    run = jax.jit(lambda p, o: jax.lax.scan(body, (p, o), jnp.arange(steps))[0][0])
    return run(params, opt_state)


def _member(params, s):
    return {key: value[s] for key, value in params.items()}


def _eval_l0(name, params, cfg):
    _, _, x_eval, _ = _problem()
    f = sae.ARCHITECTURES[name].encode(params, x_eval, cfg)
    return float(jnp.mean(jnp.sum(f != 0, axis=-1)))


def _mean_max_cosine(params):
    true_dict, _, _, _ = _problem()
    learned = params["W_dec"] / jnp.linalg.norm(params["W_dec"], axis=-1, keepdims=True)
    return float(jnp.mean(jnp.max(true_dict @ learned.T, axis=1)))


RECOVERY = {
    "jumprelu": (
        dict(threshold_param="raw", bandwidth=0.01, sparsity_coeff=0.03),
        700,
    ),
    "gated": (dict(sparsity_coeff=0.7), 800),
    "topk": (dict(k=4), 300),
    "batchtopk": (dict(k=4, threshold_start_step=0, threshold_decay=0.99), 400),
}


@pytest.mark.parametrize("name", sorted(RECOVERY))
def test_known_dictionary_is_recovered(name):
    overrides, steps = RECOVERY[name]
    cfg = _short_run_cfg(name, **overrides)
    arch = sae.ARCHITECTURES[name]
    params = _member(_train(name, cfg, steps, [cfg[arch.SWEEP_FIELD]]), 0)
    _, _, _, true_l0 = _problem()
    mmcs = _mean_max_cosine(params)
    l0 = _eval_l0(name, params, cfg)
    assert mmcs >= 0.9, f"{name}: mean max cosine similarity {mmcs:.3f} < 0.9"
    assert abs(l0 - true_l0) <= 0.3 * true_l0, f"{name}: L0 {l0:.2f} vs true {true_l0:.2f}"
    np.testing.assert_allclose(jnp.linalg.norm(params["W_dec"], axis=-1), 1.0, atol=1e-5)


def test_target_l0_form_lands_near_its_targets():
    cfg = _short_run_cfg(
        "jumprelu", sparsity_form="target_l0", threshold_param="raw", bandwidth=0.01
    )
    params = _train("jumprelu", cfg, 300, [8.0, 32.0])
    for s, target in enumerate((8.0, 32.0)):
        l0 = _eval_l0("jumprelu", _member(params, s), cfg)
        assert abs(l0 - target) <= 0.3 * target, f"target L0 {target}: got {l0:.2f}"


def test_larger_coefficient_gives_smaller_l0():
    cfg = _short_run_cfg("jumprelu", threshold_param="raw", bandwidth=0.01)
    coefficients = [0.003, 0.01, 0.03, 0.1]
    params = _train("jumprelu", cfg, 300, coefficients)
    l0s = [_eval_l0("jumprelu", _member(params, s), cfg) for s in range(len(coefficients))]
    assert all(np.diff(l0s) < 0), f"L0 not decreasing in λ: {l0s}"
    assert l0s[0] > 1.5 * l0s[-1], f"the coefficient barely moved L0: {l0s}"
