"""Each metric against a hand (numpy, float64) computation on small arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.eval import metrics


def _case(seed=0, b=2, t=5, d=3, m=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, t, d)) + np.array([5.0, -2.0, 1.0])  # a large mean, as in resid_post
    x_hat = x + rng.normal(size=(b, t, d)) * 0.3
    x_hat[0, 1] = 0.0  # a zero reconstruction: cosine defined as 0 there
    f = np.maximum(rng.normal(size=(b, t, m)), 0.0)
    keep = np.ones((b, t), bool)
    keep[:, 0] = False  # BOS
    keep[1, 4] = False  # a pad
    return x, x_hat, f, keep


@jax.jit
def _device_sums(x, x_hat, f, keep, reference):
    recon = metrics.reconstruction_sums(x, x_hat, f, keep)
    return recon, metrics.site_sums(x, keep, reference)


def _totals(x, x_hat, f, keep, reference=None):
    """Per-batch device sums (one compiled program per shape), as float64 numpy."""
    reference = x[0, 1] if reference is None else reference
    recon, site = _device_sums(
        *(jnp.asarray(a, jnp.float32) for a in (x, x_hat, f)),
        jnp.asarray(keep),
        jnp.asarray(reference, jnp.float32),
    )
    return (
        {k: np.asarray(v, np.float64) for k, v in recon.items()},
        {k: np.asarray(v, np.float64) for k, v in site.items()},
    )


def test_reconstruction_metrics_match_hand_computation():
    x, x_hat, f, keep = _case()
    recon, site = _totals(x, x_hat, f, keep)
    lm = {"delta_ce": 1.0, "kl": 0.5}
    got = metrics.finalize(
        recon, site, lm, clean_ce=2.0, zero_delta_ce=4.0, d_in=3, n_lm=4.0, dense_threshold=0.5
    )
    xs, xh, fs = x[keep], x_hat[keep], f[keep]  # (N, d), the evaluated tokens only
    n = len(xs)
    err = np.sum((xs - xh) ** 2, axis=1)
    # FVU: Σ||x − x̂||² / Σ||x − μ||², μ the per-dimension mean over the same tokens.
    fvu = err.sum() / np.sum((xs - xs.mean(axis=0)) ** 2)
    cos = np.array(
        [
            a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) if np.linalg.norm(b) > 0 else 0.0
            for a, b in zip(xs, xh, strict=True)
        ]
    )
    gamma = np.sum(xh * xh) / np.sum(xh * xs)  # argmin_γ Σ||x̂/γ − x||²
    grid = np.linspace(0.5, 1.5, 20001)
    brute = grid[np.argmin([np.sum((xh / g - xs) ** 2) for g in grid])]
    assert gamma == pytest.approx(brute, abs=1e-4)
    freq = (fs > 0).mean(axis=0)
    np.testing.assert_allclose(got["fvu"], fvu, rtol=1e-5)
    np.testing.assert_allclose(got["mse"], np.mean((xs - xh) ** 2), rtol=1e-5)
    np.testing.assert_allclose(got["recon_loss"], err.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["cosine_similarity"], cos.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["relative_reconstruction_bias"], gamma, rtol=1e-5)
    np.testing.assert_allclose(got["l0"], np.sum(fs > 0) / n, rtol=1e-6)
    assert got["frac_dead"] == np.mean(freq == 0)
    assert got["frac_dense"] == np.mean(freq > 0.5)
    assert got["clean_loss"] == 0.5 and got["spliced_loss"] == 0.75
    assert got["delta_loss"] == 0.25 and got["kl_div"] == 0.125
    assert got["zero_ablation_loss"] == 1.5
    assert got["loss_recovered"] == pytest.approx((6.0 - 3.0) / (6.0 - 2.0))
    # By position: Σ over kept sequences of ||x − x̂||² per position.
    by_pos = np.sum(np.sum((x - x_hat) ** 2, -1) * keep, axis=0)
    np.testing.assert_allclose(recon["sq_err_by_position"], by_pos, rtol=1e-5)
    np.testing.assert_array_equal(site["count_by_position"], keep.sum(0))


def test_fvu_is_streaming_exact_across_batches():
    x, x_hat, f, keep = _case(seed=1, b=4, t=5)
    totals_recon, totals_site = {}, {}
    for rows in (slice(0, 2), slice(2, 4)):  # two batches, one shift for all
        recon, site = _totals(x[rows], x_hat[rows], f[rows], keep[rows], reference=x[0, 2])
        for src, dst in ((recon, totals_recon), (site, totals_site)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
    lm = {"delta_ce": 0.0, "kl": 0.0}
    got = metrics.finalize(totals_recon, totals_site, lm, 0.0, 0.0, 3, 1.0, 0.1)
    xs, xh = x[keep], x_hat[keep]
    np.testing.assert_allclose(
        got["fvu"], np.sum((xs - xh) ** 2) / np.sum((xs - xs.mean(0)) ** 2), rtol=1e-5
    )


def test_encode_released_matches_gemma_scope_formula():
    rng = np.random.default_rng(2)
    p = {
        "W_enc": rng.normal(size=(3, 5)),
        "b_enc": rng.normal(size=5),
        "threshold": np.array([0.0, 0.5, 1.0, -1.0, 0.2]),
    }
    x = rng.normal(size=(7, 3))
    pre = x @ p["W_enc"] + p["b_enc"]
    expected = np.maximum(pre, 0) * (pre > p["threshold"])
    got = metrics.encode_released(
        {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}, jnp.asarray(x, jnp.float32)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_lm_sums_match_hand_cross_entropy_and_kl():
    rng = np.random.default_rng(3)
    b, t, v = 2, 4, 6
    clean_logits = rng.normal(size=(b, t, v))
    spliced_logits = rng.normal(size=(b, t, v))
    tokens = rng.integers(0, v, size=(b, t))
    keep = np.array([[False, True, True, True], [False, True, True, False]])
    keep_lm = np.asarray(metrics.lm_keep(jnp.asarray(keep)))
    # Position t counts iff tokens t and t+1 both count.
    np.testing.assert_array_equal(keep_lm, [[False, True, True], [False, True, False]])

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = log_softmax(clean_logits), log_softmax(spliced_logits)
    ce_q = ce_p = kl = 0.0
    for i in range(b):
        for j in range(t - 1):
            if keep_lm[i, j]:
                ce_q -= lq[i, j, tokens[i, j + 1]]
                ce_p -= lp[i, j, tokens[i, j + 1]]
                kl += np.sum(np.exp(lp[i, j]) * (lp[i, j] - lq[i, j]))
    clean_logp = metrics.next_token_logp(jnp.asarray(clean_logits, jnp.float32))
    got = metrics.lm_sums(
        clean_logp,
        jnp.asarray(spliced_logits, jnp.float32),
        jnp.asarray(tokens),
        jnp.asarray(keep_lm),
    )
    np.testing.assert_allclose(got["delta_ce"], ce_q - ce_p, rtol=1e-5)
    np.testing.assert_allclose(got["kl"], kl, rtol=1e-5)
    same = metrics.lm_sums(
        clean_logp,
        jnp.asarray(clean_logits, jnp.float32),
        jnp.asarray(tokens),
        jnp.asarray(keep_lm),
    )
    assert float(same["delta_ce"]) == 0.0 and float(same["kl"]) == 0.0


def test_firing_histogram_counts_dead_separately():
    fired = np.array([0, 1, 10, 100, 1000, 0])
    hist = metrics.firing_histogram(fired, n_tokens=1000, bins=3, min_log10=-3.0)
    assert hist["dead"] == 2
    # log10 frequencies: -3, -2, -1, 0 on bins [-3,-2), [-2,-1), [-1,0].
    assert hist["counts"] == [1, 1, 2]
    assert hist["edges"] == [-3.0, -2.0, -1.0, 0.0]


def test_no_evaluated_tokens_is_a_clear_error():
    x, x_hat, f, _ = _case()
    recon, site = _totals(x, x_hat, f, np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="no evaluated tokens"):
        metrics.finalize(recon, site, {"delta_ce": 0, "kl": 0}, 0, 0, 3, 0.0, 0.1)


@pytest.mark.parametrize("width", [256, 1100])  # the bisection's rows and lax.top_k's
def test_topk_encoder_keeps_each_rows_k_largest_against_a_sort(width):
    rng = np.random.default_rng(width)
    d, k_max = 16, 32
    params = {
        "W_enc": jnp.asarray(rng.normal(size=(d, width)) / 4, jnp.float32),
        "b_enc": jnp.asarray(rng.normal(size=width) * 0.1, jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(3, 7, d)), jnp.float32)
    pre = np.asarray(x @ params["W_enc"] + params["b_enc"])  # the same float32 products
    encode = jax.jit(metrics.topk_encode_released, static_argnums=3)
    for k in (1, 5, k_max):  # traced k below the static bound, as members of one group
        got = np.asarray(encode(params, x, jnp.asarray(k), k_max))
        kth = np.sort(pre, axis=-1)[..., -k, None]
        want = np.where(pre >= kth, np.maximum(pre, 0.0), 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert ((got != 0).sum(-1) <= k).all() and ((pre >= kth).sum(-1) == k).all()
