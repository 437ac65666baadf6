"""Per-architecture math against hand computations, the JumpReLU inference forms, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import sae
from gemmascope.sae import auxk, batchtopk, dictionary, gated, matryoshka, relu

D_IN, WIDTH, BATCH = 8, 32, 16


# Test data comes from numpy: eager jax.random calls each cost a compile on a loaded CPU.
def _x(seed=0, n=BATCH):
    return jnp.asarray(
        np.random.default_rng(seed).normal(size=(n, D_IN)) / np.sqrt(D_IN), jnp.float32
    )


def _perturbed(params, seed=5, scale=0.3):
    """Random non-zero values for every float param, so biases and scales matter in checks."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in sorted(params.items()):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and name != "running_threshold":
            value = value + scale * rng.normal(size=value.shape)
        out[name] = jnp.asarray(value, params[name].dtype)
    if "W_dec" in out:
        w_dec = np.asarray(out["W_dec"])
        out["W_dec"] = jnp.asarray(w_dec / np.linalg.norm(w_dec, axis=-1, keepdims=True))
    return out


def _jit_loss(arch, cfg):
    return jax.jit(lambda params, x, coeffs: arch.loss(params, x, coeffs, cfg))


def test_init_matches_gemma_scope():
    cfg = sae.ARCHITECTURES["jumprelu"].default_config()
    params = sae.ARCHITECTURES["jumprelu"].init(jax.random.key(0), D_IN, WIDTH, cfg)
    np.testing.assert_allclose(dictionary.row_norms(params["W_dec"]), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(params["W_enc"], params["W_dec"].T)
    np.testing.assert_array_equal(params["b_enc"], 0.0)
    np.testing.assert_array_equal(params["b_dec"], 0.0)
    np.testing.assert_allclose(jnp.exp(params["log_threshold"]), 1e-3, rtol=1e-6)
    assert params["log_threshold"].dtype == jnp.float32


def test_jumprelu_loss_matches_hand_computation():
    arch = sae.ARCHITECTURES["jumprelu"]
    cfg = arch.default_config()
    params = _perturbed(arch.init(jax.random.key(0), D_IN, WIDTH, cfg))
    params["log_threshold"] = jnp.log(jnp.full((WIDTH,), 0.2))
    x = _x()
    p = jax.tree.map(np.asarray, params)
    pi = (np.asarray(x) - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = pi * (pi > 0.2)
    rec = np.sum((np.asarray(x) - (f @ p["W_dec"] + p["b_dec"])) ** 2, -1).mean()
    l0 = (pi > 0.2).sum(-1).mean()
    loss, metrics = _jit_loss(arch, cfg)(params, x, {"sparsity_coeff": 0.05})
    np.testing.assert_allclose(loss, rec + 0.05 * l0, rtol=1e-5)
    np.testing.assert_allclose(metrics["l0"], l0, rtol=1e-6)
    # The target_l0 form is the same loss with λ = warmup factor · exp(log_sparsity_coeff).
    cfg.sparsity_form = "target_l0"
    params["log_sparsity_coeff"] = jnp.log(jnp.float32(0.04))
    loss, metrics = _jit_loss(arch, cfg)(params, x, {"sparsity_coeff": 0.5, "target_l0": 5.0})
    np.testing.assert_allclose(loss, rec + 0.5 * 0.04 * l0, rtol=1e-5)
    np.testing.assert_allclose(metrics["sparsity_coeff"], 0.02, rtol=1e-6)


@pytest.mark.parametrize("l0, step_index, expected_log_step", [
    (10.0, 100, 0.02 * np.log(10.0 / 5.0)),   # L0 above target: λ grows by rate·log(L0/t)
    (1.0, 100, -0.02),                        # log(1/5) < -1 is clipped: λ shrinks by rate
    (0.0, 100, -0.02),                        # an empty batch is a finite step, not -inf
    (10.0, 49, 0.0),                          # frozen during the sparsity warmup (50 steps)
])  # fmt: skip
def test_target_l0_steers_log_lambda_by_dual_ascent(l0, step_index, expected_log_step):
    arch = sae.ARCHITECTURES["jumprelu"]
    cfg = arch.default_config()
    cfg.update(sparsity_form="target_l0", target_l0_rate=0.02, sparsity_warmup_steps=50)
    params = {"log_sparsity_coeff": jnp.log(jnp.float32(0.01))}
    metrics = {"l0": jnp.float32(l0), "target_l0": jnp.float32(5.0)}
    new = arch.update_buffers(params, jnp.zeros((4, D_IN)), metrics, step_index, cfg)
    np.testing.assert_allclose(
        new["log_sparsity_coeff"] - params["log_sparsity_coeff"], expected_log_step, atol=1e-6
    )


def test_centred_affine_gradients_equal_autodiff_of_the_plain_formula():
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.normal(size=(2, 5, D_IN))), jnp.asarray(rng.normal(size=(D_IN, WIDTH)))
    b, b_dec = jnp.asarray(rng.normal(size=WIDTH)), jnp.asarray(rng.normal(size=D_IN))
    g = jnp.asarray(rng.normal(size=(2, 5, WIDTH)))

    def plain(*args):
        return jnp.sum(g * ((args[0] - args[3]) @ args[1] + args[2]))

    def custom(*args):
        return jnp.sum(g * dictionary.centred_affine(*args))

    expected = jax.grad(plain, argnums=(0, 1, 2, 3))(x, w, b, b_dec)
    got = jax.grad(custom, argnums=(0, 1, 2, 3))(x, w, b, b_dec)
    for e, r in zip(expected, got, strict=True):
        np.testing.assert_allclose(r, e, rtol=1e-5, atol=1e-5)


def test_gated_aux_term_trains_only_the_gate_path():
    cfg = gated.default_config()
    params = _perturbed(gated.init(jax.random.key(0), D_IN, WIDTH, cfg))
    x = _x()

    def aux_only(p):
        return gated.loss(p, x, {"sparsity_coeff": 0.0}, cfg)[1]["aux_loss"]

    grads = jax.jit(jax.grad(aux_only))(params)
    np.testing.assert_array_equal(grads["W_dec"], 0.0)
    np.testing.assert_array_equal(grads["b_dec"] != 0, True)  # only via the encoder input
    np.testing.assert_array_equal(grads["r_mag"], 0.0)
    np.testing.assert_array_equal(grads["b_mag"], 0.0)
    assert float(jnp.abs(grads["W_gate"]).sum()) > 0
    # The reconstruction term gives the gate nothing (the Heaviside gate has zero derivative).
    cfg.aux_coeff = 0.0
    grads = jax.jit(jax.grad(lambda p: gated.loss(p, x, {"sparsity_coeff": 0.0}, cfg)[0]))(params)
    np.testing.assert_array_equal(grads["b_gate"], 0.0)


def test_gated_aux_trains_decoder_adds_the_analytic_decoder_gradient():
    """SAELens's variant: the aux term's gradient also reaches W_dec, by d/dW ||x − aW − b||²."""
    cfg = gated.default_config()
    cfg.aux_trains_decoder = True
    params = _perturbed(gated.init(jax.random.key(0), D_IN, WIDTH, cfg))
    x = _x()

    def aux_only(p):
        return gated.loss(p, x, {"sparsity_coeff": 0.0}, cfg)[1]["aux_loss"]

    grads = jax.jit(jax.grad(aux_only))(params)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x64 = np.asarray(x, np.float64)
    gate_acts = np.maximum((x64 - p["b_dec"]) @ p["W_gate"] + p["b_gate"], 0.0)
    residual = gate_acts @ p["W_dec"] + p["b_dec"] - x64
    expected = 2.0 * gate_acts.T @ residual / len(x64)
    np.testing.assert_allclose(grads["W_dec"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["jumprelu", "gated", "batchtopk", "matryoshka", "relu"])
def test_inference_form_gives_identical_encodings(name):
    arch = sae.ARCHITECTURES[name]
    cfg = arch.default_config()
    if name == "jumprelu":
        cfg.threshold_param = "raw"
    params = _perturbed(arch.init(jax.random.key(0), D_IN, WIDTH, cfg))
    if name in ("batchtopk", "matryoshka"):
        params["running_threshold"] = jnp.asarray(0.15, jnp.float32)
    if name == "jumprelu":
        params["threshold"] = jnp.abs(params["threshold"])
    x = _x(1, 256)
    jr = sae.to_jumprelu(params, name, cfg)
    assert set(jr) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    assert jr["threshold"].shape == (WIDTH,) and bool(jnp.all(jr["threshold"] >= 0))
    f_arch = arch.encode(params, x, cfg)
    f_jr = sae.encode_training_form(jr, x)
    fires = f_arch != 0
    assert 0.05 < float(jnp.mean(fires)) < 0.95, "the test should exercise both sides"
    np.testing.assert_array_equal(fires, f_jr != 0)
    np.testing.assert_allclose(f_jr, f_arch, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        sae.decode_training_form(jr, f_jr), arch.decode(params, f_arch, cfg), rtol=1e-5, atol=1e-6
    )


def test_gated_threshold_equivalence_with_negative_and_positive_thresholds():
    cfg = gated.default_config()
    params = _perturbed(gated.init(jax.random.key(3), D_IN, WIDTH, cfg), scale=0.5)
    theta = params["b_mag"] - jnp.exp(params["r_mag"]) * params["b_gate"]
    assert bool(jnp.any(theta < 0)) and bool(jnp.any(theta > 0))
    x = _x(2, 512)
    jr = sae.to_jumprelu(params, "gated", cfg)
    np.testing.assert_allclose(
        sae.encode_training_form(jr, x), gated.encode(params, x, cfg), rtol=1e-5, atol=1e-6
    )


def test_relu_decoder_norm_weighted_form():
    cfg = relu.default_config()
    cfg.unit_norm_decoder = False
    params = relu.init(jax.random.key(0), D_IN, WIDTH, cfg)
    norms = jnp.linspace(0.5, 2.0, WIDTH)
    params = {**_perturbed(params), "b_dec": jnp.full((D_IN,), 0.1)}
    params["W_dec"] = params["W_dec"] * norms[:, None]
    x = _x()
    f = relu.encode(params, x, cfg)
    _, metrics = _jit_loss(relu, cfg)(params, x, {"sparsity_coeff": 0.1})
    np.testing.assert_allclose(metrics["sparsity_loss"], 0.1 * jnp.mean(f @ norms), rtol=1e-5)
    # No renormalisation in this form; the inference form folds the norms into the encoder.
    np.testing.assert_allclose(
        dictionary.row_norms(relu.constrain(params, cfg)["W_dec"]), norms, rtol=1e-5
    )
    jr = sae.to_jumprelu(params, "relu", cfg)
    np.testing.assert_allclose(dictionary.row_norms(jr["W_dec"]), 1.0, rtol=1e-5)
    x_hat = sae.decode_training_form(jr, sae.encode_training_form(jr, x))
    np.testing.assert_allclose(x_hat, relu.decode(params, f, cfg), rtol=1e-5, atol=1e-6)


def test_batchtopk_keeps_batch_times_k_and_updates_running_threshold():
    cfg = batchtopk.default_config()
    cfg.k, cfg.threshold_start_step, cfg.threshold_decay = 3, 10, 0.9
    params = _perturbed(batchtopk.init(jax.random.key(0), D_IN, WIDTH, cfg))
    x = _x()
    _, metrics = _jit_loss(batchtopk, cfg)(params, x, {"k": 3})
    f = batchtopk.batch_topk_activations(dictionary.pre_activations(params, x, cfg), 3, cfg)
    acts = np.asarray(jax.nn.relu(dictionary.pre_activations(params, x, cfg))).ravel()
    kept = np.sort(acts)[::-1][: BATCH * 3]
    np.testing.assert_allclose(np.sort(np.asarray(f).ravel())[::-1][: BATCH * 3], kept, rtol=1e-6)
    assert int(jnp.sum(f != 0)) == BATCH * 3 and float(metrics["l0"]) == 3.0
    np.testing.assert_allclose(metrics["batch_threshold"], kept[-1], rtol=1e-6)
    # Before threshold_start_step nothing changes; then the first value is taken, then EMA.
    updated = batchtopk.update_running_threshold(params, {"batch_threshold": 0.5}, 9, cfg)
    assert float(updated["running_threshold"]) == -1.0
    updated = batchtopk.update_running_threshold(params, {"batch_threshold": 0.5}, 10, cfg)
    assert float(updated["running_threshold"]) == 0.5
    updated = batchtopk.update_running_threshold(updated, {"batch_threshold": 0.3}, 11, cfg)
    np.testing.assert_allclose(updated["running_threshold"], 0.9 * 0.5 + 0.1 * 0.3, rtol=1e-6)


def test_topk_keeps_exactly_k_per_token_for_a_traced_k():
    arch = sae.ARCHITECTURES["topk"]
    cfg = arch.default_config()
    cfg.k, cfg.k_max = 2, 5
    params = _perturbed(arch.init(jax.random.key(0), D_IN, WIDTH, cfg))
    x = _x()
    pi = np.asarray(dictionary.pre_activations(params, x, cfg))
    for k in (1, 3, 5):
        f = jax.jit(lambda p, x, k: arch.encode(p, x, cfg, k))(params, x, k)
        expected = np.where(pi >= np.sort(pi, -1)[:, -k][:, None], np.maximum(pi, 0), 0)
        np.testing.assert_allclose(f, expected, rtol=1e-6)


def test_matryoshka_loss_is_the_weighted_mean_of_prefix_losses():
    cfg = matryoshka.default_config()
    cfg.k, cfg.group_fractions = 4, (0.25, 0.25, 0.5)
    params = _perturbed(matryoshka.init(jax.random.key(0), D_IN, WIDTH, cfg))
    x = _x()
    assert matryoshka.group_sizes(WIDTH, cfg) == (8, 8, 16)
    f = np.asarray(
        batchtopk.batch_topk_activations(dictionary.pre_activations(params, x, cfg), 4, cfg)
    )
    w_dec, b_dec, xn = np.asarray(params["W_dec"]), np.asarray(params["b_dec"]), np.asarray(x)
    prefix_losses = [
        np.mean(np.sum((xn - (f[:, :end] @ w_dec[:end] + b_dec)) ** 2, -1)) for end in (8, 16, 32)
    ]
    loss, metrics = _jit_loss(matryoshka, cfg)(params, x, {"k": 4})
    np.testing.assert_allclose(loss, np.mean(prefix_losses), rtol=1e-5)
    np.testing.assert_allclose(metrics["recon_loss"], prefix_losses[-1], rtol=1e-5)


def test_auxk_models_the_residual_with_dead_latents_only():
    arch = sae.ARCHITECTURES["topk"]
    cfg = arch.default_config()
    cfg.k, cfg.k_aux, cfg.dead_tokens, cfg.auxk_alpha = 2, 3, 100, 0.5
    params = _perturbed(arch.init(jax.random.key(0), D_IN, WIDTH, cfg))
    x = _x()
    loss_fn = _jit_loss(arch, cfg)
    _, alive_metrics = loss_fn(params, x, {"k": 2})
    assert float(alive_metrics["aux_loss"]) == 0.0  # nothing dead yet
    dead = np.zeros(WIDTH, bool)
    dead[::4] = True
    params["tokens_since_fired"] = jnp.where(dead, 100, 99).astype(jnp.int32)
    p = jax.tree.map(np.asarray, params)
    xn = np.asarray(x)
    pi = (xn - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    x_hat = np.asarray(arch.decode(params, arch.encode(params, x, cfg), cfg))
    dead_pi = np.where(dead, pi, -np.inf)
    kth = np.sort(dead_pi, -1)[:, -3][:, None]
    f_aux = np.where(dead_pi >= kth, np.maximum(dead_pi, 0), 0)
    residual = xn - x_hat
    expected = np.mean(np.sum((residual - f_aux @ p["W_dec"]) ** 2, -1)) / np.mean(
        np.sum((residual - residual.mean(0)) ** 2, -1)
    )
    x_variance = np.mean(np.sum((xn - xn.mean(0)) ** 2, -1))  # in the units of recon_loss
    _, metrics = loss_fn(params, x, {"k": 2})
    np.testing.assert_allclose(metrics["aux_loss"], 0.5 * x_variance * expected, rtol=1e-5)

    def aux_of_encoder(w_enc):
        q = {**params, "W_enc": w_enc}
        return auxk.auxk_loss(q, dictionary.pre_activations(q, x, cfg), x, x_hat, cfg)

    grad_enc = np.asarray(jax.jit(jax.grad(aux_of_encoder))(params["W_enc"]))
    assert np.all(grad_enc[:, ~dead] == 0)
    assert np.any(grad_enc[:, dead] != 0)
    # Counters: reset where fired, advanced (by the token count) elsewhere.
    fired = jnp.arange(WIDTH) % 2
    updated = auxk.update_counters(params, fired, 16)
    np.testing.assert_array_equal(
        updated["tokens_since_fired"], np.where(fired > 0, 0, p["tokens_since_fired"] + 16)
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sae.ARCHITECTURES["nope"], "valid architectures"),
        (lambda: sae.make_train_step("nope", None), "valid architectures"),
        (
            lambda: sae.to_jumprelu({}, "topk", sae.ARCHITECTURES["topk"].default_config()),
            "no JumpReLU",
        ),
    ],
)
def test_unknown_architecture_and_missing_inference_form(call, message):
    with pytest.raises((KeyError, ValueError), match=message):
        call()


def _cfg(name, **overrides):
    cfg = sae.ARCHITECTURES[name].default_config()
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize(
    "name, d_in, width, overrides, message",
    [
        ("jumprelu", 8, 0, {}, "width must be a positive integer"),
        ("gated", 8, -4, {}, "width must be a positive integer"),
        ("relu", 0, 8, {}, "d_in must be a positive integer"),
        ("topk", 8, 16, {"k": 17, "k_max": 17}, "must not exceed the width 16"),
        ("batchtopk", 8, 16, {"k": 0}, "'k' must be an integer >= 1"),
        ("topk", 8, 16, {"k": 4, "k_max": 2}, "must be <= k_max"),
        ("jumprelu", 8, 16, {"sparsity_coeff": -1e-3}, "'sparsity_coeff' must be >= 0"),
        ("gated", 8, 16, {"sparsity_coeff": -1.0}, "'sparsity_coeff' must be >= 0"),
        ("relu", 8, 16, {"sparsity_coeff": -0.5}, "'sparsity_coeff' must be >= 0"),
        ("jumprelu", 8, 16, {"bandwidth": 0.0}, "'bandwidth' must be > 0"),
        ("jumprelu", 8, 16, {"threshold_param": "exp"}, "one of \\('log', 'raw'\\)"),
        ("jumprelu", 8, 16, {"sparsity_form": "l1"}, "'sparsity_form' must be one of"),
        ("jumprelu", 8, 16, {"lr": -1.0}, "'lr' must be > 0"),
        ("matryoshka", 8, 16, {"group_fractions": (0.5, 0.25)}, "summing to 1"),
        ("matryoshka", 8, 8, {}, "too small for group_fractions"),
    ],
)
def test_bad_input_raises_clear_errors(name, d_in, width, overrides, message):
    cfg = _cfg(name, **overrides)
    with pytest.raises(ValueError, match=message):
        sae.ARCHITECTURES[name].init(jax.random.key(0), d_in, width, cfg)


def test_bad_config_is_rejected_by_make_train_step_and_bad_sweep_values_by_the_check():
    with pytest.raises(ValueError, match="'sparsity_coeff' must be >= 0"):
        sae.make_train_step("jumprelu", _cfg("jumprelu", sparsity_coeff=-1.0))
    with pytest.raises(ValueError, match="must be >= 0"):
        sae.check_sweep_values("gated", _cfg("gated"), [1e-3, -1e-3])
    with pytest.raises(ValueError, match=r"integer in \[1, 16\]"):
        sae.check_sweep_values("topk", _cfg("topk", k_max=64), [8, 32], width=16)
    with pytest.raises(ValueError, match="target_l0 = 0"):
        sae.check_sweep_values("jumprelu", _cfg("jumprelu", sparsity_form="target_l0"), [8, 0])
    sae.check_sweep_values("batchtopk", _cfg("batchtopk", k_max=64), [8, 64], width=128)


def test_init_scales_set_the_encoder_and_decoder_norms():
    cfg = sae.ARCHITECTURES["jumprelu"].default_config()
    cfg.update(encoder_init_scale=0.1, decoder_init_norm=0.5, unit_norm_decoder=False)
    params = sae.ARCHITECTURES["jumprelu"].init(jax.random.key(0), D_IN, WIDTH, cfg)
    np.testing.assert_allclose(dictionary.row_norms(params["W_dec"]), 0.5, rtol=1e-6)
    np.testing.assert_allclose(params["W_enc"], 0.2 * params["W_dec"].T, rtol=1e-6)
    cfg.unit_norm_decoder = True
    with pytest.raises(ValueError, match="decoder_init_norm"):
        sae.ARCHITECTURES["jumprelu"].init(jax.random.key(0), D_IN, WIDTH, cfg)


@pytest.mark.parametrize("name", ["jumprelu", "gated", "relu", "batchtopk"])
def test_a_free_decoder_folds_into_unit_rows_with_the_same_latents_and_reconstruction(name):
    arch = sae.ARCHITECTURES[name]
    cfg = arch.default_config()
    cfg.unit_norm_decoder = False
    if name == "jumprelu":
        cfg.threshold_param = "raw"
    params = _perturbed(arch.init(jax.random.key(0), D_IN, WIDTH, cfg))
    norms = jnp.asarray(np.random.default_rng(3).uniform(0.05, 3.0, WIDTH), jnp.float32)
    unit_rows = params["W_dec"] / dictionary.row_norms(params["W_dec"])[:, None]
    params["W_dec"] = unit_rows * norms[:, None]
    if name == "jumprelu":
        params["threshold"] = jnp.full((WIDTH,), 0.05)
    if name == "batchtopk":
        params["running_threshold"] = jnp.float32(0.05)
    x = _x()
    form = sae.to_jumprelu(params, name, cfg)
    np.testing.assert_allclose(dictionary.row_norms(form["W_dec"]), 1.0, rtol=1e-5)
    f_train = np.asarray(arch.encode(params, x, cfg))
    f_form = np.asarray(sae.encode_training_form(form, x))
    np.testing.assert_array_equal(f_form != 0, f_train != 0)
    np.testing.assert_allclose(f_form, f_train * np.asarray(norms), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        sae.decode_training_form(form, f_form), arch.decode(params, f_train, cfg), atol=1e-5
    )


def test_jumprelu_quadratic_penalty_and_its_threshold_gradient_by_hand():
    """Gemma Scope 2's penalty λ·mean_b (2/T)(L0_b − T)² (SAELens's "quadratic"), in numpy."""
    from gemmascope.sae import jumprelu

    cfg = jumprelu.default_config()
    cfg.update(sparsity_form="quadratic", threshold_param="raw", bandwidth=0.5, target_l0=5.0)
    params = _perturbed(jumprelu.init(jax.random.key(0), D_IN, WIDTH, cfg))
    params["threshold"] = jnp.abs(params["threshold"])
    x = _x()
    lam, target = 0.3, 5.0

    def loss(p, coeff):
        return jumprelu.loss(p, x, {"sparsity_coeff": coeff, "target_l0": target}, cfg)

    (total, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params, lam)
    _, grads_without = jax.value_and_grad(loss, has_aux=True)(params, 0.0)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    pi = (np.asarray(x, np.float64) - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    theta = p["threshold"]
    l0 = np.sum(pi > theta, axis=-1)
    assert len(set(l0)) > 2  # tokens above and below the target
    expected = lam * np.mean(2.0 / target * (l0 - target) ** 2)
    np.testing.assert_allclose(float(metrics["sparsity_loss"]), expected, rtol=1e-5)
    # d/dθ_i: λ/B Σ_b (4/T)(L0_b − T) · (−1/ε) K((π_bi − θ_i)/ε); nothing reaches W_enc.
    window = (np.abs((pi - theta) / cfg.bandwidth) < 0.5).astype(np.float64)
    assert window.sum() > 10
    d_l0 = lam * 4.0 / target * (l0 - target) / len(l0)
    expected_theta = -(1.0 / cfg.bandwidth) * (window * d_l0[:, None]).sum(0)
    got_theta = np.asarray(grads["threshold"]) - np.asarray(grads_without["threshold"])
    np.testing.assert_allclose(got_theta, expected_theta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["W_enc"], grads_without["W_enc"], atol=1e-6)
    assert jumprelu.sweep_field(cfg) == "target_l0"


@pytest.mark.parametrize("form", ["coeff", "quadratic"])
def test_matryoshka_jumprelu_prefix_losses_match_numpy(form):
    """Gemma Scope 2's Matryoshka JumpReLU: nested prefix losses plus the sparsity term, in numpy.

    The prefixes share one JumpReLU encoding; the sparsity term is of the chosen form.
    """
    from gemmascope.sae import matryoshka_jumprelu as mjr

    cfg = mjr.default_config()
    cfg.update(sparsity_form=form, threshold_param="raw", target_l0=6.0)
    cfg.group_fractions = (0.25, 0.25, 0.5)
    cfg.group_weights = (0.5, 0.3, 0.2)
    params = _perturbed(mjr.init(jax.random.key(1), D_IN, WIDTH, cfg))
    params["threshold"] = jnp.abs(params["threshold"]) * 0.3
    x = _x(3)
    lam = 0.05
    coeffs = {"sparsity_coeff": lam, "target_l0": 6.0}
    total, metrics = jax.jit(lambda p: mjr.loss(p, x, coeffs, cfg))(params)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x64 = np.asarray(x, np.float64)
    pi = (x64 - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = np.where(pi > p["threshold"], pi, 0.0)
    assert 0 < np.mean(np.sum(f != 0, -1)) < WIDTH
    prefix_losses = []
    for end in (8, 16, 32):  # group sizes 8, 8, 16 of 32 latents
        x_hat = f[:, :end] @ p["W_dec"][:end] + p["b_dec"]
        prefix_losses.append(np.mean(np.sum((x64 - x_hat) ** 2, -1)))
    l0 = np.sum(f != 0, -1)
    sparsity = lam * (np.mean(l0) if form == "coeff" else np.mean(2 / 6.0 * (l0 - 6.0) ** 2))
    expected = float(np.dot((0.5, 0.3, 0.2), prefix_losses)) + sparsity
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["recon_loss"]), prefix_losses[-1], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["sparsity_loss"]), sparsity, rtol=1e-5)
    assert abs(prefix_losses[0] - prefix_losses[-1]) > 0.1  # the prefixes really differ
