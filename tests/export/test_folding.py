"""Folding C and b_dec (docs/recipe.md#folding): hand computation, training-time forward."""

import numpy as np
import pytest

from gemmascope import export, sae


def _jumprelu(x, w_enc, b_enc, threshold):
    pre = x @ w_enc + b_enc
    return np.where(pre > threshold, np.maximum(pre, 0.0), 0.0)


def test_fold_by_hand_on_a_two_by_two():
    jr = sae.TrainingForm(
        W_enc=np.array([[1.0, 2.0], [3.0, 4.0]]),
        W_dec=np.array([[0.6, 0.8], [1.0, 0.0]]),
        b_enc=np.array([0.5, -0.5]),
        b_dec=np.array([1.0, -1.0]),
        threshold=np.array([0.1, 0.2]),
    )
    folded = export.fold(jr, norm_scale=2.0)
    # b_dec @ W_enc = [1 - 3, 2 - 4] = [-2, -2]; b_enc' = 2*[0.5, -0.5] - 2*[-2, -2] = [5, 3].
    np.testing.assert_allclose(folded["b_enc"], [5.0, 3.0])
    np.testing.assert_allclose(folded["b_dec"], [2.0, -2.0])
    np.testing.assert_allclose(folded["threshold"], [0.2, 0.4])
    np.testing.assert_array_equal(folded["W_enc"], jr["W_enc"].astype(np.float32))
    assert all(v.dtype == np.float32 for v in folded.values())


def test_folded_sae_on_raw_inputs_equals_scaled_training_forward():
    rng = np.random.default_rng(0)
    d, m, c = 8, 16, 37.5
    jr = sae.TrainingForm(
        W_enc=rng.normal(size=(d, m)) / np.sqrt(d),
        W_dec=rng.normal(size=(m, d)),
        b_enc=rng.normal(size=m) * 0.1,
        b_dec=rng.normal(size=d) * 0.1,
        threshold=rng.uniform(0.0, 0.3, size=m),
    )
    x_raw = rng.normal(size=(32, d)) * c
    x = x_raw / c
    f_train = _jumprelu(x - jr["b_dec"], jr["W_enc"], jr["b_enc"], jr["threshold"])
    x_hat_raw = c * (f_train @ jr["W_dec"] + jr["b_dec"])
    folded = {k: v.astype(np.float64) for k, v in export.fold(jr, c).items()}
    f_raw = _jumprelu(x_raw, folded["W_enc"], folded["b_enc"], folded["threshold"])
    assert (f_train > 0).any() and (f_train == 0).any()  # both branches exercised
    np.testing.assert_allclose(f_raw, c * f_train, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        f_raw @ folded["W_dec"] + folded["b_dec"], x_hat_raw, rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_norm_scale_is_refused(scale):
    jr = sae.TrainingForm(
        W_enc=np.eye(2),
        W_dec=np.eye(2),
        b_enc=np.zeros(2),
        b_dec=np.zeros(2),
        threshold=np.zeros(2),
    )
    with pytest.raises(ValueError, match="norm_scale must be a positive finite number"):
        export.fold(jr, scale)
