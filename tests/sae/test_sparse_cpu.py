"""The sparse path's CPU kernels (gemmascope.sae.sparse_cpu) against NumPy oracles.

Their end-to-end exactness (values and every gradient against autodiff of the dense products, the
crowded rows, the dense fallback, vmap, transcoders) is tested with both kernel sets in
test_sparse_support.py, and through the trainer on a (2, 4) mesh in test_sparse_jumprelu.py. Here:
the listing's slots and counts exactly, the products in float64, and that no result depends on
how many threads computed it (a step must be reproducible on any machine).
"""

import jax
import numpy as np
import pytest

from gemmascope.sae import jumprelu, sparse_cpu, sparse_support

CAPACITY = 12


def _masks(width, rows=9, seed=0):
    rng = np.random.default_rng(seed)
    support = rng.random((rows, width)) < 0.08
    on = support & (rng.random((rows, width)) < 0.7)
    support[0] = on[0] = False  # an empty token
    support[1] = True  # a token fuller than the capacity: crowded, no slots
    on[1] = rng.random(width) < 0.5
    return support, on


@pytest.mark.parametrize("width", [200, 64, 37])
def test_listing_gives_each_tokens_support_ascending_and_the_counts(width):
    support, on = _masks(width)

    def listing(s, o):
        words = sparse_support.pack_bits(s), sparse_support.pack_bits(o)
        return sparse_cpu.listing(*words, capacity=CAPACITY, width=width)

    idx, counts, l0, fired = (np.asarray(a) for a in jax.jit(listing)(support, on))
    np.testing.assert_array_equal(counts, support.sum(axis=1))
    np.testing.assert_array_equal(l0, on.sum(axis=1))
    np.testing.assert_array_equal(fired, on.sum(axis=0))
    for row, found in zip(support, idx, strict=True):
        want = np.flatnonzero(row) if row.sum() <= CAPACITY else np.array([], int)
        np.testing.assert_array_equal(found[: len(want)], want)
        assert np.all(found[len(want) :] == width)
    assert np.all(idx[1] == width)  # the crowded token


def _products_problem(seed=1, rows=10, width=50, d_in=6, d_out=5):
    rng = np.random.default_rng(seed)
    idx = np.full((rows, CAPACITY), width, np.int32)
    for b in range(rows):
        n = rng.integers(0, CAPACITY + 1)
        idx[b, :n] = np.sort(rng.choice(width, n, replace=False))
    valid = idx < width
    f = np.where(valid, rng.normal(size=idx.shape), 0).astype(np.float32)
    on = valid & (rng.random(idx.shape) < 0.7)  # the rest: θ's STE window only (f = 0 there)
    f = np.where(on, f, 0).astype(np.float32)
    g_dec = rng.normal(size=(rows, d_out)).astype(np.float32)
    centred = rng.normal(size=(rows, d_in)).astype(np.float32)
    w_dec = rng.normal(size=(width, d_out)).astype(np.float32)
    return idx, f, on, g_dec, centred, w_dec


def test_decode_and_backward_products_match_float64_oracles():
    idx, f, on, g_dec, centred, w_dec = _products_problem()
    width = w_dec.shape[0]
    dense_f = np.zeros((idx.shape[0], width))  # the slots written back into (B, M)
    dense_gz_mask = np.zeros((idx.shape[0], width), bool)
    for b, c in zip(*np.nonzero(idx < width), strict=True):
        dense_f[b, idx[b, c]] = f[b, c]
        dense_gz_mask[b, idx[b, c]] = on[b, c]
    g_f_dense = g_dec.astype(np.float64) @ w_dec.T.astype(np.float64)
    g_z = np.where(dense_gz_mask, g_f_dense, 0.0)

    decoded = np.asarray(jax.jit(sparse_cpu.decode)(f, idx, w_dec))
    np.testing.assert_allclose(decoded, dense_f @ w_dec, rtol=1e-5, atol=1e-5)
    products = jax.jit(sparse_cpu.backward_products)(idx, f, on, g_dec, centred, w_dec)
    g_f, g_w_dec, g_w_enc, g_b_enc = (np.asarray(a) for a in products)
    at_slots = np.take_along_axis(g_f_dense, np.minimum(idx, width - 1), axis=1)
    want_g_f = np.where(idx < width, at_slots, 0)
    np.testing.assert_allclose(g_f, want_g_f, rtol=1e-5, atol=1e-5)  # window slots included
    np.testing.assert_allclose(g_w_dec, dense_f.T @ g_dec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_w_enc, centred.T @ g_z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_b_enc, g_z.sum(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 3])
def test_results_do_not_depend_on_the_thread_count(threads, monkeypatch):
    problem = _products_problem(seed=2, rows=31, width=97)
    support, on = _masks(97, rows=31, seed=3)
    words = [np.asarray(sparse_support.pack_bits(m)) for m in (support, on)]

    def run():
        return (
            sparse_cpu._host_decode(problem[1], problem[0], problem[5]),
            *sparse_cpu._host_backward(*problem),
            *sparse_cpu._host_listing(*words, capacity=CAPACITY, width=97),
        )

    want = run()  # this machine's thread count
    monkeypatch.setattr(sparse_cpu, "_n_threads", lambda: threads)
    for got, expected in zip(run(), want, strict=True):
        np.testing.assert_array_equal(got, expected)  # bit for bit


def test_kernel_choice_and_its_errors():
    assert sparse_support.kernels_for("auto") == "cpu"  # this suite runs on one CPU process
    assert sparse_support.kernels_for("xla") == "xla"
    with pytest.raises(ValueError, match=r"sparse_kernels must be one of \('auto', 'xla', 'cpu'\)"):
        sparse_support.kernels_for("numba")
    cfg = jumprelu.default_config()
    cfg.sparse_kernels = "gpu"
    with pytest.raises(ValueError, match=r"'sparse_kernels' must be one of .*got 'gpu'"):
        jumprelu.validate(cfg)
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"kernels must be one of \('xla', 'cpu'\), got 'gpu'"):
        sparse_support.encode_decode(
            x,
            np.zeros((3, 8), np.float32),
            np.zeros(8, np.float32),
            np.zeros(3, np.float32),
            np.ones(8, np.float32),
            np.zeros((8, 3), np.float32),
            bandwidth=0.1,
            capacity=4,
            centre=True,
            with_pi=False,
            kernels="gpu",
        )
