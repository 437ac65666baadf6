"""The forward pass against HF transformers' torch Gemma 2 and Gemma 3 (eager), site by site."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_oracle import CASES, torch_forward

from gemmascope import model

TOL = 1e-4


def jit_forward(cfg, params, tokens, **kwargs):
    """model.forward under jit, as callers use it (eager op-by-op dispatch is far slower)."""
    return jax.jit(lambda p, t: model.forward(cfg, p, t, **kwargs))(params, tokens)


def jit_forward_from(cfg, params, site, resid, **kwargs):
    return jax.jit(lambda p, r: model.forward_from(cfg, p, site, r, **kwargs))(params, resid)


@pytest.fixture(scope="module")
def loaded(hf_cases):
    """Each case loaded through load_hf in fp32."""
    return {name: model.load_hf(case.path) for name, case in hf_cases.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_every_site_match_hf(hf_cases, loaded, name):
    case = hf_cases[name]
    cfg, params = loaded[name]
    logits, acts = jit_forward(cfg, params, case.tokens, capture="*/*")
    assert logits.dtype == jnp.float32
    assert logits.shape == case.logits.shape
    np.testing.assert_allclose(np.asarray(logits), case.logits, atol=TOL, rtol=0)
    assert sorted(acts) == sorted(case.acts) == sorted(model.sites.all_sites(cfg))
    for site, ref in case.acts.items():
        assert acts[site].shape == (*case.tokens.shape, model.sites.dim(cfg, site)), site
        np.testing.assert_allclose(np.asarray(acts[site]), ref, atol=TOL, rtol=0, err_msg=site)


def test_sliding_window_really_binds(hf_cases, loaded):
    """Guards the test's power: ignoring the window would change the logits noticeably."""
    import dataclasses

    case = hf_cases["window"]
    cfg, params = loaded["window"]
    unwindowed = dataclasses.replace(cfg, sliding_window=None)
    logits, _ = jit_forward(unwindowed, params, case.tokens)
    assert np.abs(np.asarray(logits) - case.logits).max() > 1e-2


# Measured max deviation of bf16 compute from the fp32 oracle over the six cases (docs/model.md):
# logits 0.138 absolute (g3_scalar; logits up to ~7); sites 0.040 of the site's max |value|.
# HF's own bf16 models deviate by the same amounts (0.137 and 0.046).
BF16_LOGITS_ATOL = 0.15
BF16_SITE_REL = 0.06


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_compute_within_documented_tolerance_of_fp32(hf_cases, name):
    case = hf_cases[name]
    cfg, params = model.load_hf(case.path, dtype=jnp.bfloat16)
    assert params["layers"][0]["q"].dtype == jnp.bfloat16
    logits, acts = jit_forward(cfg, params, case.tokens, capture="*/*")
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), case.logits, atol=BF16_LOGITS_ATOL, rtol=0)
    for site, ref in case.acts.items():
        assert acts[site].dtype == jnp.bfloat16
        err = np.abs(np.asarray(acts[site], np.float32) - ref).max() / np.abs(ref).max()
        assert err <= BF16_SITE_REL, (site, err)


def test_dtype_argument_casts_fp32_params_like_loading_in_bf16(hf_cases, loaded):
    case = hf_cases["single_kv"]
    cfg, params32 = loaded["single_kv"]
    _, params16 = model.load_hf(case.path, dtype=jnp.bfloat16)
    cast, acts = jit_forward(cfg, params32, case.tokens, dtype=jnp.bfloat16, capture="mlp_out/1")
    native, _ = jit_forward(cfg, params16, case.tokens)
    assert acts["mlp_out/1"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(cast), np.asarray(native))


@pytest.mark.parametrize("name", ["window", "g3_scaled"])
def test_identity_replace_leaves_logits_exactly_unchanged(hf_cases, loaded, name):
    case = hf_cases[name]
    cfg, params = loaded[name]
    clean, _ = jit_forward(cfg, params, case.tokens)
    every = {site: (lambda x: x) for site in model.sites.all_sites(cfg)}
    same, _ = jit_forward(cfg, params, case.tokens, replace=every)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(clean))


@pytest.mark.parametrize(
    "name, site",
    [
        ("window", "attn_z/1"),
        ("window", "mlp_in/1"),
        ("window", "mlp_out/1"),
        ("window", "resid_post/0"),
        ("g3_scaled", "attn_z/2"),
        ("g3_scaled", "mlp_in/1"),
        ("g3_scaled", "mlp_out/0"),
        ("g3_scaled", "resid_post/1"),
    ],
)
def test_zero_replace_equals_hf_with_a_zeroing_hook(hf_cases, loaded, name, site):
    case = hf_cases[name]
    cfg, params = loaded[name]
    ref_logits, ref_acts = torch_forward(case.torch_model, case.tokens, zero_site=site)
    logits, acts = jit_forward(
        cfg, params, case.tokens, capture=[site], replace={site: jnp.zeros_like}
    )
    assert np.abs(np.asarray(logits) - case.logits).max() > 1e-2  # the splice matters
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)
    # Captured values are taken before the replacement.
    np.testing.assert_allclose(np.asarray(acts[site]), case.acts[site], atol=TOL, rtol=0)
    assert np.abs(ref_acts[site]).max() == 0  # the torch hook really zeroed it


def test_replace_must_keep_the_shape(hf_cases, loaded):
    case = hf_cases["window"]
    cfg, params = loaded["window"]
    with pytest.raises(ValueError, match=r"replace\['mlp_out/0'\] returned shape"):
        jit_forward(cfg, params, case.tokens, replace={"mlp_out/0": lambda x: x[..., :3]})


def test_forward_from_a_resid_site_continues_the_pass(hf_cases, loaded):
    case = hf_cases["window"]
    cfg, params = loaded["window"]
    acts = jax.jit(lambda p, t: model.collect_sites(cfg, p, t, "resid_post/0"))(params, case.tokens)
    logits, later = jit_forward_from(
        cfg, params, "resid_post/0", acts["resid_post/0"], capture="*/1"
    )
    np.testing.assert_allclose(np.asarray(logits), case.logits, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(later["mlp_out/1"]), case.acts["mlp_out/1"], atol=TOL)
    ref_logits, _ = torch_forward(case.torch_model, case.tokens, zero_site="mlp_out/1")
    spliced, _ = jit_forward_from(
        cfg, params, "resid_post/0", acts["resid_post/0"], replace={"mlp_out/1": jnp.zeros_like}
    )
    np.testing.assert_allclose(np.asarray(spliced), ref_logits, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="starts from a resid_post site"):
        model.forward_from(cfg, params, "mlp_out/0", acts["resid_post/0"])
    with pytest.raises(ValueError, match="come before or at"):
        model.forward_from(cfg, params, "resid_post/1", acts["resid_post/0"], capture="attn_z/1")


def test_collect_sites_returns_just_the_requested_sites(hf_cases, loaded):
    case = hf_cases["window"]
    cfg, params = loaded["window"]
    acts = jax.jit(lambda p, t: model.collect_sites(cfg, p, t, ["resid_post/1", "attn_z/0"]))(
        params, case.tokens
    )
    assert sorted(acts) == ["attn_z/0", "resid_post/1"]
    for site, value in acts.items():
        np.testing.assert_allclose(np.asarray(value), case.acts[site], atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "capture, replace",
    [(["resid_post/99"], None), (["bogus/1"], None), ([], {"attn_z/2": jnp.zeros_like})],
)
def test_unknown_site_error_lists_valid_sites(hf_cases, loaded, capture, replace):
    case = hf_cases["window"]
    cfg, params = loaded["window"]
    with pytest.raises(ValueError) as error:
        model.forward(cfg, params, case.tokens, capture=capture, replace=replace)
    message = str(error.value)
    assert "valid sites" in message
    for site in ("resid_post/0", "mlp_out/0", "attn_z/1", "resid_post/1"):
        assert site in message


@pytest.mark.parametrize(
    "tokens, match",
    [
        (np.array([[2, 64]], np.int32), "token id 64 is out of the vocabulary range"),
        (np.array([[2, -1]], np.int32), "token id -1 is out of the vocabulary range"),
        (np.array([2, 5], np.int32), r"shape \(batch, seq\)"),
        (np.array([[2.0, 5.0]], np.float32), "must be integers"),
    ],
)
def test_bad_tokens_raise_clear_errors(loaded, tokens, match):
    cfg, params = loaded["window"]
    with pytest.raises(ValueError, match=match):
        model.forward(cfg, params, tokens)


def test_out_of_vocab_tokens_under_jit_give_nan_not_a_wrong_row(loaded):
    cfg, params = loaded["window"]
    tokens = np.array([[2, 64], [2, 5]], np.int32)
    logits, _ = jit_forward(cfg, params, tokens)
    assert np.isnan(np.asarray(logits)[0, 1]).all()
    assert np.isfinite(np.asarray(logits)[1]).all()  # other sequences are unaffected


def test_special_mask_marks_bos_eos_and_pad():
    cfg = model.presets.tiny(eos_token_id=(1, 107))
    tokens = np.array([[2, 5, 1, 0, 107, 9]], np.int32)
    expected = np.array([[True, False, True, True, True, False]])
    np.testing.assert_array_equal(np.asarray(model.special_mask(cfg, tokens)), expected)


@pytest.mark.parametrize(
    "preset, fp32, bf16",
    [
        (model.presets.gemma2_2b, 48.0, 48.0),
        (model.presets.gemma2_9b, 59.86652, 59.75),
        (model.presets.gemma2_27b, 67.88225, 68.0),
    ],
)
def test_embedding_scale_is_rounded_to_the_compute_dtype(preset, fp32, bf16):
    """sqrt(d_model) is cast to the activation dtype before multiplying.

    docs/recipe.md#gemma-2-forward, step 1.
    """
    import dataclasses

    cfg = dataclasses.replace(preset(), vocab_size=3)
    for dtype, expected in ((jnp.float32, fp32), (jnp.bfloat16, bf16)):
        params = {"embed": jnp.ones((3, cfg.hidden_size), dtype)}
        scaled = model.embed(cfg, params, np.array([[2]], np.int32))
        assert scaled.dtype == dtype
        np.testing.assert_allclose(np.asarray(scaled, np.float32), expected, rtol=1e-6)


def test_params_that_do_not_fit_the_config_are_refused(loaded):
    import dataclasses

    cfg, params = loaded["window"]
    tokens = np.array([[2, 5]], np.int32)
    with pytest.raises(ValueError, match="params have 2 layers but the config has 3"):
        model.forward(
            dataclasses.replace(cfg, num_hidden_layers=3, layer_types=None), params, tokens
        )
    wider = dataclasses.replace(cfg, intermediate_size=64)
    with pytest.raises(ValueError, match=r"params\['layers', 0, 'gate'\] has shape \(32, 48\)"):
        model.forward(wider, params, tokens)
