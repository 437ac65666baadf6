"""The inspected latents' encoder equals the evaluation's released-form rules."""

import numpy as np
import pytest

from gemmascope.eval import metrics
from gemmascope.inspect import latents


@pytest.mark.parametrize("blocks", [2, 4, 16])
def test_blocked_topk_equals_the_evaluation_topk(blocks):
    rng = np.random.default_rng(blocks)
    d, m, k = 8, 64, 5
    params = {
        "W_enc": rng.normal(size=(d, m)).astype(np.float32),
        "b_enc": rng.normal(size=m).astype(np.float32),
        "threshold": np.zeros(m, np.float32),
    }
    params["b_enc"][:10] += 30.0  # every token's top k in the first block: the hard case
    x = rng.normal(size=(3, 7, d)).astype(np.float32)
    expected = np.asarray(metrics.topk_encode_released(params, x, k, k))
    got = np.asarray(latents.encode(params, x, k=k, blocks=blocks))
    np.testing.assert_array_equal(got, expected)
    assert ((got > 0).sum(-1) == k).all()
    columns = np.array([1, 5, 40, 63], np.int32)
    sampled = np.asarray(latents.encode({**params, "columns": columns}, x, k=k, blocks=blocks))
    np.testing.assert_array_equal(sampled, expected[..., columns])


def test_jumprelu_encoder_is_the_released_rule_on_the_sampled_columns():
    rng = np.random.default_rng(0)
    d, m = 8, 32
    full = {
        "W_enc": rng.normal(size=(d, m)).astype(np.float32),
        "b_enc": rng.normal(size=m).astype(np.float32),
        "threshold": rng.uniform(0.0, 1.0, size=m).astype(np.float32),
    }
    ids = latents.sample_latents(m, 8, seed=3)
    cut = {"W_enc": full["W_enc"][:, ids], "b_enc": full["b_enc"][ids]}
    cut["threshold"] = full["threshold"][ids]
    x = rng.normal(size=(5, d)).astype(np.float32)
    expected = np.asarray(metrics.encode_released(full, x))[:, ids]
    got = np.asarray(latents.encode(cut, x, k=None))
    # A narrower matmul may round the last bit differently; the same latents fire.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.array_equal(got > 0, expected > 0) and (got > 0).any()
