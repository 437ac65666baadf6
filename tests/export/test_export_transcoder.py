"""Exporting a trained transcoder: the folded raw-unit folder against the training form in numpy.

Oracle: the training form applied in numpy to x / C_in, its output times C_out. The exported
folder, loaded back as the evaluation loads it, must give the same output on raw activations and
latents C_out times the training ones (the folding rule of docs/transcoders.md).
"""

import fake_training_run
import numpy as np
import pytest

from gemmascope import export
from gemmascope.eval import metrics
from gemmascope.eval.sweep_eval import SaeEntry

D_IN, D_OUT, WIDTH, C_IN, C_OUT = 8, 6, 16, 3.0, 0.5


@pytest.mark.parametrize("skip", [False, True])
def test_exported_transcoder_equals_the_training_form_on_raw_activations(tmp_path, skip):
    name, params = fake_training_run.fake_transcoder_run(
        str(tmp_path), "jumprelu", skip, d_in=D_IN, d_out=D_OUT, width=WIDTH, c_in=C_IN, c_out=C_OUT
    )
    (folder,) = export.export_run(str(tmp_path), name)
    kind = "transcoder_affine" if skip else "transcoder"
    assert f"/saes/{kind}/layer_1/" in folder
    entry = SaeEntry.load(folder)
    assert entry.target_site == "mlp_out/1" and entry.group_key.is_transcoder
    assert ("W_skip" in entry.params) == skip
    x = np.random.default_rng(1).normal(size=(50, D_IN)).astype(np.float32) * 4
    # Numpy oracle: training units x / C_in -> y / C_out.
    xs = x.astype(np.float64) / C_IN
    pre = xs @ params["W_enc"] + params["b_enc"]
    f = np.where(pre > params["threshold"], pre, 0.0)
    y = f @ params["W_dec"] + params["b_dec"] + (xs @ params["W_skip"] if skip else 0.0)
    assert np.count_nonzero(f) > 20
    got_f = np.asarray(metrics.encode_released(entry.params, x))
    got_y = np.asarray(metrics.decode_released(entry.params, got_f, x))
    np.testing.assert_allclose(got_f, C_OUT * f, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_y, C_OUT * y, rtol=1e-4, atol=1e-5)
    # The free decoder's rows came out unit-norm (the released convention).
    np.testing.assert_allclose(np.linalg.norm(entry.params["W_dec"], axis=1), 1.0, rtol=1e-5)
    assert entry.config["d_out"] == D_OUT and entry.config["kind"] == kind
