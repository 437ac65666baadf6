"""Matmul precision: evaluation is full fp32, training runs at the SAE config's `matmul_precision`.

On CPU every precision computes fp32, so numbers alone cannot catch a matmul left at JAX's default
(one bf16 pass on TPU, TF32 on GPU). Two oracles that can:

- the jaxpr: JAX resolves the precision of every ``dot_general`` at trace time, so each one's
  ``precision`` parameter says what an accelerator would run. Traced under a *different* ambient
  ``jax.default_matmul_precision``, every product must still carry the requested one.
- XLA:CPU refuses to compile the ``TF32_TF32_F32`` dot algorithm. Under that ambient setting a
  whole evaluation only compiles if every one of its products asks for its own precision; its
  metrics must then equal a float64 numpy oracle.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import gemmascope.mesh
from gemmascope import eval as gs_eval
from gemmascope import model, sae
from gemmascope.eval import metrics
from gemmascope.sae import inference
from gemmascope.train import step as train_step_lib

HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
DEFAULT = (jax.lax.Precision.DEFAULT, jax.lax.Precision.DEFAULT)
D_IN, WIDTH, BATCH = 8, 24, 16


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):  # a Jaxpr
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):  # a ClosedJaxpr
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def dot_precisions(fn, *args) -> list:
    """The ``precision`` of every dot_general in ``fn``'s jaxpr, nested jaxprs included."""
    found, pending = [], [jax.make_jaxpr(fn)(*args).jaxpr]
    while pending:
        for eqn in pending.pop().eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for value in eqn.params.values():
                pending.extend(_sub_jaxprs(value))
    return found


def _dead_params(arch, cfg):
    """Params with every other latent dead, so AuxK's branch (and its matmul) is traced too."""
    params = arch.init(jax.random.key(0), D_IN, WIDTH, cfg)
    if "tokens_since_fired" in params:
        dead = jnp.arange(WIDTH) % 2 == 0
        params["tokens_since_fired"] = jnp.where(dead, 10**8, 0).astype(jnp.int32)
    return params


@pytest.mark.parametrize("name", sorted(sae.ARCHITECTURES))
@pytest.mark.parametrize("precision,expected", [("highest", HIGHEST), ("bfloat16", DEFAULT)])
def test_every_matmul_of_the_train_step_runs_at_the_configured_precision(name, precision, expected):
    arch = sae.ARCHITECTURES[name]
    cfg = arch.default_config()
    assert cfg.matmul_precision == "highest"  # the default: full fp32, as Gemma Scope trains
    cfg.matmul_precision = precision
    if "k" in cfg:
        cfg.k = 4
    params = _dead_params(arch, cfg)
    opt_state = sae.optimizer(cfg).init(params)
    x = jax.random.normal(jax.random.key(1), (BATCH, D_IN))
    step = jax.vmap(sae.make_train_step(name, cfg), in_axes=(0, 0, None, None, 0))
    stack = lambda tree: jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), tree)
    value = cfg[arch.sweep_field(cfg)]
    values = jnp.asarray([value, value])
    with jax.default_matmul_precision("tensorfloat32"):  # the step must override the ambient one
        found = dot_precisions(jax.jit(step), stack(params), stack(opt_state), x, 3, values)
    # Forward encoder and decoder, their backward products (custom VJPs included), AuxK.
    assert len(found) >= 4, found
    assert all(p == expected for p in found), found


def test_the_trainers_compiled_step_keeps_the_configured_precision():
    cfg = sae.ARCHITECTURES["topk"].default_config()
    cfg.k = 4
    mesh = gemmascope.mesh.make_mesh([("data", 1), ("model", 1)], jax.devices()[:1])
    found, heldout = [], []
    # Vmapped members, members one after another, and in blocks of tokens (a scan and AuxK's
    # lax.cond around the gradient).
    for members_per_pass, block_tokens in ((0, 0), (1, 0), (1, BATCH // 2)):
        shape = train_step_lib.JobShape(
            arch="topk",
            sae_cfg=cfg,
            d_in=D_IN,
            width=WIDTH,
            n_members=2,
            batch_size=BATCH,
            dead_window=4,
            sweep_dtype="int32",
            mesh=mesh,
            members_per_pass=members_per_pass,
            block_tokens=block_tokens,
        )
        fns = train_step_lib.compiled_functions(shape)
        batch = jax.ShapeDtypeStruct((BATCH, D_IN), jnp.float32)
        with jax.default_matmul_precision("bfloat16"):
            found += dot_precisions(fns.train_step, fns.abstract_state, batch)
            heldout += dot_precisions(fns.heldout, fns.abstract_state, batch)
    assert len(found) >= 12 and all(p == HIGHEST for p in found), found
    # The held-out metrics (a forward pass of the same loss) run at the same precision.
    assert len(heldout) >= 4 and all(p == HIGHEST for p in heldout), heldout


def test_sae_config_refuses_an_unknown_precision():
    cfg = sae.ARCHITECTURES["jumprelu"].default_config()
    cfg.matmul_precision = "fp8"
    with pytest.raises(ValueError, match="'matmul_precision' must be one of .*'highest'"):
        sae.make_train_step("jumprelu", cfg)


def test_released_and_training_form_functions_request_highest():
    rng = np.random.default_rng(0)
    w_enc, w_dec = rng.normal(size=(D_IN, WIDTH)), rng.normal(size=(WIDTH, D_IN))
    released = {
        "W_enc": w_enc,
        "W_dec": w_dec,
        "b_enc": np.zeros(WIDTH),
        "b_dec": np.zeros(D_IN),
        "threshold": np.zeros(WIDTH),
    }
    released = {k: jnp.asarray(v, jnp.float32) for k, v in released.items()}
    x = jnp.asarray(rng.normal(size=(2, 3, D_IN)), jnp.float32)
    f = jnp.ones((2, 3, WIDTH))
    cfg = ml_collections.ConfigDict({"pre_encoder_bias": False, "unit_norm_decoder": True})
    params = {"W_dec": released["W_dec"], "b_dec": released["b_dec"]}
    form = inference.jumprelu_form(params, released["W_enc"], released["b_enc"], 0.0, cfg)
    keep = jnp.ones((2, 3), bool)
    calls = [
        (metrics.encode_released, released, x),
        (metrics.decode_released, released, f),
        (lambda p, a: metrics.topk_encode_released(p, a, 2, 3), released, x),
        (lambda a, k: metrics.site_sums(a, k, jnp.zeros(D_IN)), x, keep),
        (sae.encode_training_form, form, x),
        (sae.decode_training_form, form, f),
        (lambda p, w: inference.jumprelu_form(p, w, jnp.zeros(WIDTH), 0.0, cfg), params, w_enc),
    ]
    for fn, *args in calls:
        with jax.default_matmul_precision("bfloat16"):
            found = dot_precisions(fn, *args)
        assert found and all(p == HIGHEST for p in found), (fn, found)


def _cpu_refuses_tf32() -> bool:
    try:
        with jax.default_matmul_precision("TF32_TF32_F32"):
            jax.jit(lambda a: a @ a).lower(jnp.ones((2, 2))).compile()
    except ValueError:
        return True
    return False


def test_evaluation_compiles_and_matches_float64_under_an_unsupported_ambient_precision():
    if not _cpu_refuses_tf32():
        pytest.skip("this backend compiles TF32 dot algorithms; the jaxpr tests above still apply")
    cfg = model.presets.tiny(num_hidden_layers=1)
    site, d = "resid_post/0", cfg.hidden_size
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    lm_params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.1, s.dtype), shapes)
    tokens = rng.integers(3, cfg.vocab_size, size=(3, 10)).astype(np.int32)
    tokens[:, 0] = cfg.bos_token_id
    released = {
        "W_enc": rng.normal(size=(d, 2 * d)) / np.sqrt(d),
        "W_dec": rng.normal(size=(2 * d, d)) / np.sqrt(2 * d),
        "b_enc": rng.normal(size=2 * d) * 0.1,
        "b_dec": rng.normal(size=d) * 0.1,
        "threshold": np.full(2 * d, 0.3),
    }
    entry = gs_eval.SaeEntry(
        folder="/fake/sae",
        config={
            "site": site,
            "kind": "resid_post",
            "layer": 0,
            "d_in": d,
            "width": 2 * d,
            "architecture": "test",
        },
        params={k: np.asarray(v, np.float32) for k, v in released.items()},
    )
    eval_cfg = gs_eval.default_config()
    with jax.default_matmul_precision("TF32_TF32_F32"):
        [(got, _)] = gs_eval.evaluate_saes(cfg, lm_params, tokens, [entry], eval_cfg)

    # float64 oracle of the reconstruction metrics on the captured (fp32, HIGHEST) activations.
    _, acts = model.forward(cfg, lm_params, tokens, capture=[site])
    x = np.asarray(acts[site], np.float64)[:, 1:].reshape(-1, d)  # every position but BOS
    p = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in released.items()}
    pre = x @ p["W_enc"] + p["b_enc"]
    f = np.where(pre > p["threshold"], np.maximum(pre, 0.0), 0.0)
    err = np.sum((x - (f @ p["W_dec"] + p["b_dec"])) ** 2, axis=-1)
    assert 0 < np.mean(f > 0) < 1
    np.testing.assert_allclose(got["mse"], err.mean() / d, rtol=1e-5)
    np.testing.assert_allclose(got["fvu"], err.sum() / np.sum((x - x.mean(0)) ** 2), rtol=1e-5)
    np.testing.assert_allclose(got["l0"], np.mean(np.sum(f > 0, -1)), rtol=1e-6)
