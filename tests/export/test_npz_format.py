"""params.npz writer/reader: round trip, Gemma Scope layout, and clear errors on bad files."""

import os
import pickle

import numpy as np
import pytest

from gemmascope import export


def _params(d=6, m=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d, m)),
        "W_dec": rng.normal(size=(m, d)),
        "b_enc": rng.normal(size=m),
        "b_dec": rng.normal(size=d),
        "threshold": rng.uniform(0.1, 1.0, size=m),
    }


def test_round_trip_is_float32_uncompressed_and_exact(tmp_path):
    params = _params()
    path = tmp_path / "params.npz"
    export.save_npz(path, params)
    loaded = export.load_npz(path, d_in=6, width=10)
    assert sorted(loaded) == sorted(export.NPZ_KEYS)
    for key, value in params.items():
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], value.astype(np.float32))
    # Gemma Scope files are plain (stored, uncompressed) zip members.
    import zipfile

    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    assert not [f for f in os.listdir(tmp_path) if f != "params.npz"]  # no temp file left


def test_sl_w_prefixed_keys_and_unit_scaling_factor_are_tolerated(tmp_path):
    params = _params()
    path = tmp_path / "sl.npz"
    renamed = {
        ("w_enc" if k == "W_enc" else "w_dec" if k == "W_dec" else k): v for k, v in params.items()
    }
    np.savez(path, scaling_factor=np.ones(10), **renamed)
    loaded = export.load_npz(path)
    np.testing.assert_allclose(loaded["W_enc"], params["W_enc"].astype(np.float32))
    np.savez(path, scaling_factor=np.full(10, 2.0), **renamed)
    with pytest.raises(ValueError, match="scaling_factor"):
        export.load_npz(path)


def test_missing_key_is_a_clear_error(tmp_path):
    params = _params()
    del params["threshold"]
    path = tmp_path / "params.npz"
    np.savez(path, **params)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['threshold'\]"):
        export.load_npz(path)
    with pytest.raises(ValueError, match="missing key"):
        export.save_npz(tmp_path / "out.npz", params)


def test_wrong_shape_is_a_clear_error(tmp_path):
    params = _params()
    params["b_dec"] = np.zeros(7)
    path = tmp_path / "params.npz"
    np.savez(path, **params)
    with pytest.raises(ValueError, match=r"b_dec has shape \(7,\), expected \(6,\)"):
        export.load_npz(path)
    good = tmp_path / "good.npz"
    export.save_npz(good, _params())
    with pytest.raises(ValueError, match="d_in is 6 .* site needs 8"):
        export.load_npz(good, d_in=8)
    with pytest.raises(ValueError, match="width is 10"):
        export.load_npz(good, width=16)


def test_pickled_object_is_refused(tmp_path):
    params = _params()
    params["threshold"] = np.array([{"evil": 1}] * 10, dtype=object)
    path = tmp_path / "params.npz"
    np.savez(path, **params)  # numpy pickles object arrays
    with pytest.raises(ValueError, match="pickled object"):
        export.load_npz(path)


def test_not_an_npz_and_missing_file(tmp_path):
    path = tmp_path / "params.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        export.load_npz(path)
    with pytest.raises(FileNotFoundError):
        export.load_npz(tmp_path / "absent.npz")
    pickled = tmp_path / "pickled.npz"  # a whole-file pickle under an .npz name
    pickled.write_bytes(pickle.dumps(_params()))
    with pytest.raises(ValueError, match=r"not a readable .npz file .*pickled"):
        export.load_npz(pickled)


def test_non_finite_values_are_refused(tmp_path):
    params = _params()
    params["W_dec"][0, 0] = np.nan
    with pytest.raises(ValueError, match="W_dec contains NaN"):
        export.save_npz(tmp_path / "params.npz", params)
    assert not os.listdir(tmp_path)
