"""PairedSource: (input, target) batches of the same tokens, from arrays, the cache and the model.

Oracles: the model's own mlp_in/mlp_out of every kept token (a direct forward pass), against which
every (input, target) row pair of a batch must be one token's; an uninterrupted stream, which a
restored one must continue bitwise.
"""

import itertools

import jax
import numpy as np
import pytest
from activation_setup import LightTokenizer, study_config
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope import activations, data, model

IN, OUT = "mlp_in/1", "mlp_out/1"


def _sharding():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    return NamedSharding(mesh, P("data", None))


@pytest.fixture(scope="module")
def direct(model_path):
    """The model's (mlp_in, mlp_out) of every kept token, and what the sources need."""
    cfg, params = model.load_hf(model_path)
    seqs = data.sequences(study_config(model_path).data, LightTokenizer(model_path), "train")
    acts = jax.jit(lambda p, t: model.forward(cfg, p, t, capture=[IN, OUT])[1])(params, seqs)
    keep = ~np.isin(seqs, cfg.special_token_ids)
    return cfg, params, seqs, np.asarray(acts[IN])[keep], np.asarray(acts[OUT])[keep]


def _assert_rows_are_tokens(x, y, src, tokens_in, tokens_out):
    """Every (x, y) row pair, in raw units, is the (mlp_in, mlp_out) of one token."""
    x = np.asarray(x, np.float64) * src.norm_scale
    y = np.asarray(y, np.float64) * src.target_norm_scale
    distance = np.sum((x[:, None, :] - tokens_in[None, :, :]) ** 2, axis=-1)
    token = np.argmin(distance, axis=1)
    np.testing.assert_allclose(x, tokens_in[token], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, tokens_out[token], rtol=1e-4, atol=1e-4)


def _batches(src, n, size=32):
    return [jax.device_get(b) for b in itertools.islice(src.iter_batches(size, _sharding()), n)]


def _check_resume(make, n_first=3, n_total=7):
    uninterrupted = _batches(make(), n_total)
    first = make()
    it = first.iter_batches(32, _sharding())
    for _ in range(n_first):
        next(it)
    resumed = make()
    resumed.restore(first.state())
    rest = _batches(resumed, n_total - n_first)
    for got, want in zip(rest, uninterrupted[n_first:], strict=True):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    return uninterrupted


def test_array_pairs_are_the_same_rows_and_resume_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    y = np.concatenate([x[:, :2] * 3, np.arange(500)[:, None]], axis=1).astype(np.float32)

    def make():
        return activations.PairedSource(
            activations.ArraySource(x, seed=4), activations.ArraySource(y, seed=4, norm_scale=1)
        )

    src = make()
    assert (src.d_in, src.d_out, src.n_tokens) == (6, 3, 500)
    assert src.target_norm_scale == 1.0
    held_x, held_y = src.hold_out(20)
    np.testing.assert_array_equal(held_y[:, 2], np.arange(480, 500))  # the same last rows
    np.testing.assert_allclose(held_x * src.norm_scale, x[480:], rtol=1e-6)
    seen = []
    for bx, by in _batches(src, 15):
        rows = by[:, 2].astype(int)
        np.testing.assert_allclose(bx * src.norm_scale, x[rows], rtol=1e-6)
        seen += rows.tolist()
    assert sorted(seen[:480]) == list(range(480))  # one epoch: every training row once
    batches = _check_resume(make)
    assert not np.array_equal(batches[0][1][:, 2], np.arange(32))  # shuffled


def test_cached_pairs_are_one_tokens_sites_and_resume_exactly(reference_cache, direct):
    _, workdir = reference_cache
    _, _, _, tokens_in, tokens_out = direct
    src = activations.open_paired_source(workdir, IN, OUT, seed=2, window_tokens=256)
    assert src.n_tokens == len(tokens_in)
    held_x, held_y = src.hold_out(64)
    _assert_rows_are_tokens(held_x, held_y, src, tokens_in, tokens_out)
    for bx, by in _batches(src, 4):
        _assert_rows_are_tokens(bx, by, src, tokens_in, tokens_out)
    _check_resume(
        lambda: activations.open_paired_source(workdir, IN, OUT, seed=2, window_tokens=256)
    )


def test_streamed_pairs_are_one_tokens_sites_and_resume_exactly(direct):
    cfg, params, seqs, tokens_in, tokens_out = direct

    def make():
        kwargs = dict(seed=1, buffer_tokens=160)
        return activations.PairedSource(
            activations.StreamingSource(cfg, params, seqs, IN, **kwargs),
            activations.StreamingSource(cfg, params, seqs, OUT, **kwargs),
        )

    for bx, by in _check_resume(make, n_first=2, n_total=4):
        _assert_rows_are_tokens(bx, by, make(), tokens_in, tokens_out)


def test_sources_that_would_not_pair_tokens_are_refused(reference_cache):
    x = np.ones((100, 4), np.float32)
    with pytest.raises(ValueError, match="would not yield the same tokens"):
        activations.PairedSource(activations.ArraySource(x, 0), activations.ArraySource(x, 1))
    with pytest.raises(ValueError, match="would not yield the same tokens"):
        activations.PairedSource(activations.ArraySource(x), activations.ArraySource(x[:99]))
    _, workdir = reference_cache
    with pytest.raises(ValueError, match="would not yield the same tokens"):
        activations.PairedSource(
            activations.open_source(workdir, IN, seed=0),
            activations.open_source(workdir, OUT, seed=0, window_tokens=64),
        )
    with pytest.raises(TypeError, match="is not an activation source"):
        activations.PairedSource(activations.ArraySource(x), object())
