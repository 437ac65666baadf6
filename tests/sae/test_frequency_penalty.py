"""JumpReLU's frequency penalty against dense latents (docs/sae.md#frequency-penalty).

The penalty in both forms, c·Σ_i p_i²/ω and c·Σ_i relu(p_i − ω)²/ω (p_i: latent i's firing
frequency in the batch), its threshold gradient through the step's STE and its own metric
``freq_penalty`` are checked against numpy; a synthetic problem on which a short-run JumpReLU SAE
at a small λ grows dense latents shows that the penalty removes them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import sae
from gemmascope.sae import jumprelu, synthetic

D_IN, WIDTH, BATCH = 8, 32, 64


def _setup(**overrides):
    cfg = jumprelu.default_config()
    cfg.update(threshold_param="raw", bandwidth=0.5, **overrides)
    rng = np.random.default_rng(0)
    params = jumprelu.init(jax.random.key(0), D_IN, WIDTH, cfg)
    params = {
        name: jnp.asarray(np.asarray(v) + 0.3 * rng.normal(size=np.shape(v)), jnp.float32)
        for name, v in params.items()
    }
    params["threshold"] = jnp.abs(params["threshold"])
    x = jnp.asarray(rng.normal(size=(BATCH, D_IN)) / np.sqrt(D_IN), jnp.float32)
    return cfg, params, x


def _numpy_penalty(params, x, cfg, c):
    """(c·Σ q²/ω, its θ gradient (2c·q_i/ω)·(1/B)·Σ_b −(1/ε)·K((π_bi − θ_i)/ε)) in float64.

    q = p in the quadratic form, relu(p − ω) in the hinge form.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    pi = (np.asarray(x, np.float64) - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    theta, scale = p["threshold"], cfg.freq_penalty_scale
    frequency = np.mean(pi > theta, axis=0)
    window = (np.abs((pi - theta) / cfg.bandwidth) < 0.5).astype(np.float64)
    assert window.sum() > 50 and np.sum((frequency > 0) & (frequency < 1)) > WIDTH // 2
    if cfg.freq_penalty_form == "hinge":
        frequency = np.maximum(frequency - scale, 0.0)
    penalty = c * np.sum(frequency**2) / scale
    grad = (2 * c * frequency / scale) * (-(1.0 / cfg.bandwidth) * window.mean(axis=0))
    return penalty, grad


def _penalty_and_theta_grad(params, x, cfg, coeffs):
    """The ``freq_penalty`` metric and the penalty's θ gradient (with it minus without it).

    Also checks that the penalty is its own term: ``sparsity_loss`` is the same without it, and
    the total loss grows by exactly ``freq_penalty``.
    """
    off = cfg.copy_and_resolve_references()
    off.freq_penalty_scale, off.freq_penalty_coeff = 0.0, None

    def value_and_grad(config):
        def loss(p):
            return jumprelu.loss(p, x, coeffs, config)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, with_metrics), with_grads = value_and_grad(cfg)
    (_, off_metrics), off_grads = value_and_grad(off)
    assert "freq_penalty" not in off_metrics
    np.testing.assert_allclose(with_metrics["sparsity_loss"], off_metrics["sparsity_loss"])
    penalty = float(with_metrics["freq_penalty"])
    np.testing.assert_allclose(
        with_metrics["loss"] - off_metrics["loss"], penalty, rtol=1e-4, atol=1e-7
    )
    theta = np.asarray(with_grads["threshold"]) - np.asarray(off_grads["threshold"])
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):  # the penalty reaches θ only
        np.testing.assert_allclose(with_grads[name], off_grads[name], atol=1e-6)
    return penalty, theta


def _coefficient_form_against_numpy(scale, form, lam=0.2):
    """Penalty and θ gradient with c = λ of the coefficient form, checked against numpy."""
    cfg, params, x = _setup(freq_penalty_scale=scale, freq_penalty_form=form)
    penalty, theta = _penalty_and_theta_grad(params, x, cfg, {"sparsity_coeff": lam})
    expected, expected_theta = _numpy_penalty(params, x, cfg, lam)
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)
    np.testing.assert_allclose(theta, expected_theta, rtol=1e-4, atol=1e-6)
    return cfg, params, x, theta, expected, expected_theta


def test_penalty_and_threshold_gradient_match_numpy_with_the_sparsity_coefficient():
    """With freq_penalty_coeff None, c is the coefficient form's λ: GDM's λ·Σ_i p_i(1 + p_i/ω)."""
    *_, expected_theta = _coefficient_form_against_numpy(0.1, "quadratic")
    # The θ gradient is negative where latents fire: descent raises their thresholds, most for
    # the most frequent.
    assert np.all(expected_theta <= 0)


def test_hinge_form_matches_numpy_and_spares_latents_below_the_scale():
    """c·Σ relu(p − ω)²/ω: value and θ gradient as numpy; no gradient where p <= ω."""
    lam = 0.2
    cfg, params, x, theta, expected, expected_theta = _coefficient_form_against_numpy(
        0.4, "hinge", lam
    )
    # Both kinds of latent are in the batch, and the spared ones are in their STE window (so a
    # quadratic form would move their thresholds): the zeros are the hinge's, not the window's.
    quadratic = cfg.copy_and_resolve_references()
    quadratic.freq_penalty_form = "quadratic"
    _, quadratic_theta = _numpy_penalty(params, x, quadratic, lam)
    spared = expected_theta == 0
    assert 4 <= spared.sum() <= WIDTH - 4
    assert np.sum(spared & (quadratic_theta < 0)) >= 4
    assert np.all(theta[spared] == 0)
    assert 0 < expected < 0.5 * _numpy_penalty(params, x, quadratic, lam)[0]


def test_own_coefficient_is_warmed_up_and_composes_with_the_quadratic_form():
    cfg, params, x = _setup(
        freq_penalty_scale=0.25,
        freq_penalty_coeff=0.8,
        sparsity_form="quadratic",
        target_l0=5.0,
        sparsity_warmup_steps=100,
    )
    coeffs = jumprelu.coeffs(cfg, 25, 5.0)
    np.testing.assert_allclose(coeffs["freq_penalty_coeff"], 0.8 * 25 / 100)
    penalty, theta = _penalty_and_theta_grad(params, x, cfg, coeffs)
    expected, expected_theta = _numpy_penalty(params, x, cfg, 0.2)
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)
    np.testing.assert_allclose(theta, expected_theta, rtol=1e-4, atol=1e-6)


def test_target_l0_form_uses_the_steered_coefficient():
    cfg, params, x = _setup(freq_penalty_scale=0.1, sparsity_form="target_l0", target_l0=4.0)
    params["log_sparsity_coeff"] = jnp.log(jnp.float32(0.05))
    coeffs = jumprelu.coeffs(cfg, 10**6, 4.0)  # after the warmup: factor 1
    penalty, _ = _penalty_and_theta_grad(params, x, cfg, coeffs)
    expected, _ = _numpy_penalty(params, x, cfg, 0.05)
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"freq_penalty_scale": -0.1}, "freq_penalty_scale"),
        ({"freq_penalty_scale": 2.0}, "freq_penalty_scale"),
        ({"freq_penalty_scale": 0.1, "freq_penalty_coeff": -1.0}, "freq_penalty_coeff"),
        ({"freq_penalty_coeff": 0.5}, "turns the frequency penalty off"),
        ({"freq_penalty_scale": 0.1, "freq_penalty_form": "tanh"}, "freq_penalty_form"),
    ],
)
def test_bad_frequency_penalty_fields_are_refused(overrides, message):
    cfg = jumprelu.default_config()
    cfg.update(overrides)
    with pytest.raises(ValueError, match=message):
        sae.make_train_step("jumprelu", cfg)


def test_off_by_default_and_matryoshka_jumprelu_has_it():
    assert jumprelu.default_config().freq_penalty_scale == 0.0
    assert jumprelu.default_config().freq_penalty_form == "hinge"
    assert sae.ARCHITECTURES["matryoshka_jumprelu"].default_config().freq_penalty_scale == 0.0


STEPS, TRAIN_BATCH, SMALL_LAMBDA = 600, 256, 0.003


def _dense_fraction_after_training(scale):
    """A short-run JumpReLU SAE (width 128) on the 2x problem at a too-small λ; its dense share.

    Returns (fraction of latents firing on > 10% of held-out tokens, L0, MMCS).
    """
    problem = synthetic.Problem(d=32, n_features=64, mean_l0=3.0)
    x, _ = synthetic.sample(problem, 1 << 16, seed=1)
    x_eval, _ = synthetic.sample(problem, 4096, seed=2)
    cfg = jumprelu.default_config()
    cfg.update(sae.recipes.get("short_run", "jumprelu", total_steps=STEPS))
    cfg.update(dead_tokens=100 * TRAIN_BATCH, freq_penalty_scale=scale)
    params = jumprelu.init(jax.random.key(0), 32, 128, cfg)
    step = sae.make_train_step("jumprelu", cfg)
    batches = jnp.asarray(x).reshape(-1, TRAIN_BATCH, 32)

    def body(carry, t):  # the steps in one scan: no per-step dispatch
        params, opt, _ = step(*carry, batches[t % len(batches)], t, SMALL_LAMBDA)
        return (params, opt), None

    run = jax.jit(lambda p, o: jax.lax.scan(body, (p, o), jnp.arange(STEPS))[0][0])
    params = run(params, sae.optimizer(cfg).init(params))
    f = np.asarray(jumprelu.encode(params, jnp.asarray(x_eval), cfg))
    frequency = np.mean(f != 0, axis=0)
    mmcs = synthetic.mean_max_cosine(problem, np.asarray(params["W_dec"]))
    return float(np.mean(frequency > 0.1)), float(np.mean(np.sum(f != 0, -1))), mmcs


def test_penalty_removes_the_dense_latents_a_small_lambda_grows():
    """A small λ grows dense latents; the default (hinge) penalty at ω = 0.05 removes them.

    Measured: without it 58 of 128 latents dense (L0 16.1, MMCS 0.75); with it 2 (L0 5.7, 0.96).
    (GDM's quadratic form at ω = 0.1: 2 dense, L0 5.5, MMCS 0.95.)
    """
    dense_off, l0_off, mmcs_off = _dense_fraction_after_training(0.0)
    dense_on, l0_on, mmcs_on = _dense_fraction_after_training(0.05)
    assert dense_off > 0.3, (dense_off, l0_off)
    assert dense_on < 0.06, (dense_on, l0_on)
    assert mmcs_on > mmcs_off + 0.1  # the dense latents were a worse dictionary, not a better one


def test_the_sparse_path_gives_the_same_penalty_and_threshold_gradient():
    """The sparse path's fired counts carry the same θ pseudo-gradient (docs/sae.md#sparse-path)."""
    cfg, params, x = _setup(freq_penalty_scale=0.1)
    sparse = cfg.copy_and_resolve_references()
    sparse.sparse_capacity = 32

    def value_and_grad(config):
        def loss(p):
            return jumprelu.loss(p, x, {"sparsity_coeff": 0.2}, config)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, dense_metrics), dense_grads = value_and_grad(cfg)
    (_, sparse_metrics), sparse_grads = value_and_grad(sparse)
    expected, _ = _numpy_penalty(params, x, cfg, 0.2)
    assert expected > 0  # some latents fire on more than ω of the batch
    np.testing.assert_allclose(dense_metrics["freq_penalty"], expected, rtol=1e-5)
    for name in ("sparsity_loss", "freq_penalty"):
        np.testing.assert_allclose(sparse_metrics[name], dense_metrics[name], rtol=1e-6)
    np.testing.assert_allclose(sparse_grads["threshold"], dense_grads["threshold"], atol=1e-5)
