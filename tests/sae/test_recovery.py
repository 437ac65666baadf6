"""Known-answer tests: SAEs trained from scratch with the short-run recipe recover dictionaries.

Three problems of benchmarks/recovery.py's grid, shrunk to run in seconds (`sae.synthetic`): 2x
overcomplete with uniform feature frequencies, 4x with Zipf-like frequencies, and 4x with
correlated feature pairs; d = 32, true L0 = 3, width 256 (one SAE per problem, stacked on a
vmapped axis so each architecture compiles once). Each architecture trains with
`sae.recipes.short_run` (what docs/sae.md, the demo and the benchmark recommend) through the real
training step, and must find the true features among its decoder rows (mean max cosine
similarity, MMCS) at about the true L0. The 4x problems fail the Gemma Scope init (W_enc = W_decᵀ
at unit norm) with these knobs (test_gemma_scopes_init_fails_the_4x_problems_in_a_short_run):
the problems are hard enough to tell a good recipe from a weak one.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gemmascope import sae
from gemmascope.sae import synthetic

BATCH, STEPS, N_TRAIN, N_EVAL, WIDTH = 256, 1000, 1 << 16, 1 << 12, 256
PROBLEMS = {
    "2x_uniform": synthetic.Problem(d=32, n_features=64, mean_l0=3.0),
    "4x_zipf": synthetic.Problem(d=32, n_features=128, mean_l0=3.0, frequency="zipf"),
    "4x_correlated": synthetic.Problem(d=32, n_features=128, mean_l0=3.0, correlated_fraction=0.5),
}
NAMES = tuple(PROBLEMS)
# (architecture, sweep value, config overrides beyond the recipe, relative L0 tolerance; TopK's
# L0 can fall below k only where a kept pre-activation is negative)
CASES = {
    "jumprelu": ("jumprelu", 0.03, {}, 0.3),
    "jumprelu_target_l0": ("jumprelu", 3.0, {"sparsity_form": "target_l0"}, 0.1),
    "gated": ("gated", 1.0, {}, 0.3),
    "topk": ("topk", 3, {"k": 3}, 0.1),
    "batchtopk": ("batchtopk", 3, {"k": 3}, 0.3),
    "matryoshka": ("matryoshka", 3, {"k": 3}, 0.3),
    "relu": ("relu", 1.0, {}, 0.5),
}
# MMCS bars per case on (2x_uniform, 4x_zipf, 4x_correlated), a few hundredths under what the
# short-run recipe measured at 1000 steps (docs/sae.md#recovery-tests has the table). The 4x Zipf
# problem's rarest features fire on ~0.4% of tokens; 1000 steps find 85-95% of them. The Gemma
# Scope init (W_enc = W_decᵀ, unit rows) reaches 0.64-0.67 on both 4x problems with JumpReLU
# and Gated, ReLU-L1 0.53-0.70 on all three.
MMCS_BARS = {
    "jumprelu": (0.97, 0.84, 0.92),
    "jumprelu_target_l0": (0.97, 0.80, 0.86),
    "gated": (0.97, 0.93, 0.95),  # 0.990, 0.956, 0.976 measured (aux_trains_decoder)
    "topk": (0.97, 0.94, 0.94),  # 0.994, 0.976, 0.973 measured (free decoder)
    "batchtopk": (0.97, 0.91, 0.95),  # 0.998, 0.946, 0.981
    "matryoshka": (0.96, 0.89, 0.89),  # 0.989, 0.929, 0.925
    "relu": (0.95, 0.75, 0.90),
}


@functools.lru_cache(maxsize=1)
def _data():
    """Every problem's (train x stacked (P, N_TRAIN, 32), eval x, true L0)."""
    train, evals, l0s = [], [], []
    for name in NAMES:
        x_train, _ = synthetic.sample(PROBLEMS[name], N_TRAIN, seed=1)
        x_eval, l0 = synthetic.sample(PROBLEMS[name], N_EVAL, seed=2)
        train.append(x_train)
        evals.append(x_eval)
        l0s.append(float(np.mean(l0)))
    return jnp.asarray(np.stack(train)), evals, l0s


def _config(name, overrides):
    overrides = dict(overrides)  # the JumpReLU sparsity form is part of the recipe (its clip)
    form = overrides.pop("sparsity_form", None)
    cfg = sae.ARCHITECTURES[name].default_config()
    cfg.update(sae.recipes.get("short_run", name, total_steps=STEPS, sparsity_form=form))
    cfg.update(overrides)
    if "dead_tokens" in cfg:
        cfg.dead_tokens = 100 * BATCH  # the trainer would link it to its dead window
    return cfg


def _train(name, cfg, value, steps=STEPS, n_problems=3):
    """One SAE per problem through the real training step, vmapped over the problems.

    Each member reads its own problem's batches, in order; ``n_problems`` < 3 trains on the first
    problems of NAMES only.
    """
    x_train = _data()[0][:n_problems]
    arch = sae.ARCHITECTURES[name]
    keys = jax.random.split(jax.random.key(0), len(NAMES))[:n_problems]
    params = jax.vmap(lambda k: arch.init(k, x_train.shape[-1], WIDTH, cfg))(keys)
    opt_state = jax.vmap(sae.optimizer(cfg).init)(params)
    run = _compiled_run(name, ml_collections.FrozenConfigDict(cfg), steps, n_problems)
    return run(params, opt_state, jnp.asarray(value))


@functools.cache
def _compiled_run(name, cfg, steps, n_problems):
    """The jitted scan of `steps` steps; the sweep value is traced, so λs share one program."""
    x_train = _data()[0][:n_problems]
    step = jax.vmap(sae.make_train_step(name, cfg), in_axes=(0, 0, 0, None, None))
    n_batches = x_train.shape[1] // BATCH

    def run(params, opt_state, value):
        def body(carry, t):
            x = jax.lax.dynamic_slice_in_dim(x_train, (t % n_batches) * BATCH, BATCH, axis=1)
            params, opt_state, _ = step(*carry, x, t, value)
            return (params, opt_state), None

        return jax.lax.scan(body, (params, opt_state), jnp.arange(steps))[0][0]

    return jax.jit(run)


def _latents(name, cfg, params, value, x):
    """The latents export would give (TopK: its per-token rule)."""
    if name == "topk":
        return np.asarray(sae.ARCHITECTURES["topk"].encode(params, x, cfg, k=int(value)))
    return np.asarray(sae.encode_training_form(sae.to_jumprelu(params, name, cfg), x))


@functools.cache
def _recover(case, **extra_overrides):
    """{problem: recovery dict} and the stacked params of one case (cached per test session)."""
    name, value, overrides, _ = CASES[case]
    cfg = _config(name, {**overrides, **extra_overrides})
    stacked = _train(name, cfg, value)
    _, evals, _ = _data()
    results = {}
    for i, problem_name in enumerate(NAMES):
        params = jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
        latents = _latents(name, cfg, params, value, evals[i])
        results[problem_name] = synthetic.recovery(PROBLEMS[problem_name], params["W_dec"], latents)
    return results, stacked


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_short_run_recipe_recovers_the_dictionary(case):
    _, value, overrides, l0_tolerance = CASES[case]
    results, stacked = _recover(case)
    _, _, true_l0s = _data()
    for problem_name, true_l0, bar in zip(NAMES, true_l0s, MMCS_BARS[case], strict=True):
        result = results[problem_name]
        assert result["mmcs"] >= bar, f"{case} on {problem_name}: {result}"
        # L0 against the target L0 or k where the SAE was given one, else the true L0.
        given = overrides.get("sparsity_form") == "target_l0" or case == "topk"
        target = value if given else true_l0
        assert abs(result["l0"] - target) <= l0_tolerance * target, (
            f"{case} on {problem_name}: L0 {result['l0']:.2f} vs {target:.2f}"
        )
    if _config(CASES[case][0], overrides).unit_norm_decoder:
        np.testing.assert_allclose(np.linalg.norm(stacked["W_dec"], axis=-1), 1.0, atol=1e-5)


# Gemma Scope 2's JumpReLU forms, on the 2x problem only (a few seconds each): (architecture,
# MMCS bar, relative L0 tolerance). Measured at 1000 steps, λ 0.1, target L0 3, unclipped as
# short_run trains the quadratic form: the quadratic penalty 0.992 @ L0 3.32, Matryoshka JumpReLU
# with it 0.960 @ 3.67 (on all three problems: 0.992 / 0.892 / 0.975 and 0.960 / 0.865 / 0.870;
# with the gradient clip 0.999 / 0.973 / 0.930 and 0.961 / 0.954 / 0.873, the one setting where
# the clip measured better: docs/sae.md#gradient-clip; benchmarks/recovery.py has the grid).
GS2_CASES = {
    "jumprelu": (0.97, 0.3),
    "matryoshka_jumprelu": (0.93, 0.3),
}


@pytest.mark.parametrize("name", sorted(GS2_CASES))
def test_the_quadratic_l0_forms_recover_the_2x_dictionary_near_the_target(name):
    """The quadratic L0 penalty (plain and Matryoshka JumpReLU) finds the 2x problem's features.

    The quadratic form pulls each token's L0 toward the target from both sides, so the L0 ends
    near the target (3, the true L0), if not on it at a fixed λ.
    """
    bar, l0_tolerance = GS2_CASES[name]
    target = 3.0
    cfg = _config(name, {"sparsity_form": "quadratic", "sparsity_coeff": 0.1})
    params = jax.tree.map(lambda leaf: leaf[0], _train(name, cfg, target, n_problems=1))
    _, evals, _ = _data()
    latents = _latents(name, cfg, params, target, evals[0])
    result = synthetic.recovery(PROBLEMS[NAMES[0]], params["W_dec"], latents)
    assert result["mmcs"] >= bar, f"{name}: {result}"
    assert abs(result["l0"] - target) <= l0_tolerance * target, f"{name}: {result}"


@pytest.mark.parametrize("case", ["jumprelu"])
def test_gemma_scopes_init_fails_the_4x_problems_in_a_short_run(case):
    """The oracle problems are hard enough: the init issue 12 diagnosed does not pass them.

    Only the flagship runs in the suite (20 s each); Gated and ReLU-L1 measured 0.67-0.69 and
    0.53-0.60 on the 4x problems with the tied init (docs/sae.md#recovery-tests).
    """
    gemma_scope_init = dict(encoder_init_scale=1.0, decoder_init_norm=1.0, unit_norm_decoder=True)
    results, _ = _recover(case, **gemma_scope_init)
    failed = [p for p, bar in zip(NAMES, MMCS_BARS[case], strict=True) if results[p]["mmcs"] < bar]
    assert {"4x_zipf", "4x_correlated"} <= set(failed), f"{case} with the tied init: {results}"


def test_larger_coefficient_gives_smaller_l0():
    cfg = _config("jumprelu", {})
    _, evals, _ = _data()
    l0s = []
    for coeff in (0.003, 0.03, 0.3):
        params = jax.tree.map(lambda leaf: leaf[0], _train("jumprelu", cfg, coeff, steps=400))
        latents = _latents("jumprelu", cfg, params, coeff, evals[0])
        l0s.append(synthetic.recovery(PROBLEMS[NAMES[0]], params["W_dec"], latents)["l0"])
    assert all(np.diff(l0s) < 0), f"L0 not decreasing in λ: {l0s}"
    assert l0s[0] > 1.5 * l0s[-1], f"the coefficient barely moved L0: {l0s}"
