"""ArraySource: sharded global batches, x / C normalisation, per-epoch permutation, exact resume."""

import itertools

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope import activations
from gemmascope.activations import ArraySource


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))


def _data(n=96, d=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) * 3.0


def test_batches_are_sharded_global_arrays_of_one_permutation(mesh):
    x = _data()
    sharding = NamedSharding(mesh, P("data", None))
    src = ArraySource(x, seed=5)
    assert (src.d_in, src.n_tokens) == (12, 96)
    batches = list(itertools.islice(src.iter_batches(16, sharding), 6))  # exactly one epoch
    for b in batches:
        assert isinstance(b, jax.Array) and b.shape == (16, 12) and b.dtype == np.float32
        assert b.sharding == sharding
        assert b.addressable_shards[0].data.shape == (8, 12)
    epoch = np.concatenate([jax.device_get(b) for b in batches])
    expected = x / np.float32(src.norm_scale)
    # Every token exactly once: sorting rows of both gives the same set.
    order_e = np.lexsort(epoch.T[::-1])
    order_x = np.lexsort(expected.T[::-1])
    np.testing.assert_array_equal(epoch[order_e], expected[order_x])
    assert not np.array_equal(epoch, expected), "batches must be shuffled"


def test_norm_scale_gives_unit_mean_squared_norm(mesh):
    x = _data(n=64, d=8)
    src = ArraySource(x, seed=0)
    c = np.sqrt(np.mean(np.sum(x.astype(np.float64) ** 2, axis=1)))
    assert src.norm_scale == pytest.approx(c, rel=1e-12)
    epoch = jax.device_get(next(src.iter_batches(64, NamedSharding(mesh, P("data", None)))))
    assert np.mean(np.sum(epoch.astype(np.float64) ** 2, axis=1)) == pytest.approx(1.0, rel=1e-5)
    fixed = ArraySource(x, norm_scale=2.0)
    assert fixed.norm_scale == 2.0


def test_feature_axis_sharding_over_model(mesh):
    x = _data()
    src = ArraySource(x, seed=1, norm_scale=1.0)
    sharding = NamedSharding(mesh, P("data", "model"))
    b = next(src.iter_batches(8, sharding))
    assert b.addressable_shards[0].data.shape == (4, 3)
    reference = ArraySource(x, seed=1, norm_scale=1.0)
    expected = next(reference.iter_batches(8, NamedSharding(mesh, P())))
    np.testing.assert_array_equal(jax.device_get(b), jax.device_get(expected))


def test_resume_reproduces_batches_across_epoch_boundaries(mesh):
    x = _data(n=40)
    sharding = NamedSharding(mesh, P("data", None))
    uninterrupted = ArraySource(x, seed=9)
    expected = [
        jax.device_get(b) for b in itertools.islice(uninterrupted.iter_batches(6, sharding), 20)
    ]
    first = ArraySource(x, seed=9)
    it = first.iter_batches(6, sharding)
    got = [jax.device_get(next(it)) for _ in range(7)]
    state = first.state()
    assert int(state["position"]) == 42 and state["position"].dtype == np.int64
    resumed = ArraySource(x, seed=9)
    resumed.restore(state)
    got += [jax.device_get(b) for b in itertools.islice(resumed.iter_batches(6, sharding), 13)]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # Each epoch (40 tokens) of the 120-token stream is a permutation of the rows.
    stream = np.concatenate(expected)
    for e in range(3):
        part = stream[40 * e : 40 * (e + 1)]
        np.testing.assert_array_equal(
            np.sort(part[:, 0]), np.sort(x[:, 0] / np.float32(uninterrupted.norm_scale))
        )


def test_bad_input_raises_clear_errors(mesh):
    sharding = NamedSharding(mesh, P("data", None))
    with pytest.raises(ValueError, match="2-D"):
        ArraySource(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="floating"):
        ArraySource(np.zeros((4, 2), np.int32))
    with pytest.raises(ValueError, match="mean squared norm"):
        ArraySource(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="seed"):
        ArraySource(_data(), seed=-1)
    with pytest.raises(ValueError, match="norm_scale"):
        ArraySource(_data(), norm_scale=0.0)
    src = ArraySource(_data())
    with pytest.raises(ValueError, match="divisible"):
        next(src.iter_batches(3, sharding))
    with pytest.raises(ValueError, match="batch_size"):
        next(src.iter_batches(0, sharding))
    with pytest.raises(TypeError, match="Sharding"):
        next(src.iter_batches(4, "data"))
    with pytest.raises(ValueError, match="position"):
        src.restore({"step": 3})


def test_held_out_rows_are_the_last_ones_and_never_streamed(mesh):
    x = _data(n=100, d=12)
    src = ArraySource(x, seed=3)
    assert isinstance(src, activations.ActivationSource)
    held_out = src.hold_out(20)
    c = np.float32(src.norm_scale)  # estimated from every row, held-out ones included
    np.testing.assert_array_equal(held_out, x[80:] / c)
    np.testing.assert_array_equal(src.hold_out(20), held_out)  # the same n again: the same rows
    assert src.n_tokens == 80
    sharding = NamedSharding(mesh, P("data", None))
    batches = list(itertools.islice(src.iter_batches(16, sharding), 10))  # two epochs of 80
    stream = np.concatenate([jax.device_get(b) for b in batches])
    for epoch in (stream[:80], stream[80:]):  # each epoch: rows 0..79, once each
        order = np.lexsort(epoch.T[::-1])
        expected = x[:80] / c
        np.testing.assert_array_equal(epoch[order], expected[np.lexsort(expected.T[::-1])])
    with pytest.raises(ValueError, match="20 rows are already held out"):
        src.hold_out(10)
    with pytest.raises(ValueError, match=r"would leave nothing to train on \(at most 99"):
        ArraySource(x).hold_out(100)
