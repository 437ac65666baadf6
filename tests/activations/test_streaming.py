"""StreamingSource: batches are the model's activations, shuffled per epoch, resumable."""

import itertools

import jax
import numpy as np
import pytest
from activation_setup import LightTokenizer, study_config
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope import activations, data, model

SITE = "resid_post/1"


@pytest.fixture(scope="module")
def setup(model_path):
    cfg, params = model.load_hf(model_path)
    seqs = data.sequences(study_config(model_path).data, LightTokenizer(model_path), "train")
    run = jax.jit(lambda p, t: model.forward(cfg, p, t, capture=[SITE])[1][SITE])
    keep = ~np.isin(seqs, cfg.special_token_ids)
    direct = np.asarray(run(params, seqs))
    return cfg, params, seqs, keep, direct


def _sorted_rows(x):
    return x[np.lexsort(x.T[::-1])]


def test_one_epoch_is_every_kept_token_once(setup):
    cfg, params, seqs, keep, direct = setup
    src = activations.StreamingSource(
        cfg, params, seqs, SITE, seed=3, buffer_tokens=320, norm_sample_tokens=200
    )
    assert (src.d_in, src.n_tokens) == (64, None)
    # C comes from the first ceil(200 / 32) = 7 sequences in corpus order.
    sample = direct[:7][keep[:7]].astype(np.float64)
    assert src.norm_scale == pytest.approx(np.sqrt(np.mean(np.sum(sample**2, 1))), rel=1e-5)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None))
    n = int(keep.sum())
    batches = list(itertools.islice(src.iter_batches(16, sharding), -(-n // 16)))
    assert batches[0].sharding == sharding
    stream = np.concatenate([jax.device_get(b) for b in batches])[:n]
    expected = direct[keep] / np.float32(src.norm_scale)
    np.testing.assert_allclose(_sorted_rows(stream), _sorted_rows(expected), rtol=1e-4, atol=1e-5)
    # Shuffled: the stream does not follow corpus order.
    assert not np.allclose(stream[:16], expected[:16])


def test_held_out_tokens_are_the_last_sequences_and_never_streamed(setup):
    cfg, params, seqs, keep, direct = setup
    src = activations.StreamingSource(cfg, params, seqs, SITE, seed=0, buffer_tokens=160)
    assert isinstance(src, activations.ActivationSource)
    held_out = src.hold_out(40)
    c = np.float32(src.norm_scale)
    # The last 40 kept tokens of the corpus, from the fewest last sequences that hold them.
    kept_per_sequence = keep.sum(axis=1)
    first = len(seqs) - 1
    while kept_per_sequence[first:].sum() < 40:
        first -= 1
    np.testing.assert_allclose(
        held_out, direct[first:][keep[first:]][-40:] / c, rtol=1e-4, atol=1e-5
    )
    # One epoch is every kept token of the other sequences, once.
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None))
    n = int(keep[:first].sum())
    batches = list(itertools.islice(src.iter_batches(16, sharding), -(-n // 16)))
    stream = np.concatenate([jax.device_get(b) for b in batches])[:n]
    expected = direct[:first][keep[:first]] / c
    np.testing.assert_allclose(_sorted_rows(stream), _sorted_rows(expected), rtol=1e-4, atol=1e-5)


def test_resume_reproduces_batches(setup):
    cfg, params, seqs, _, _ = setup
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None))
    kwargs = dict(seed=1, buffer_tokens=160, norm_scale=2.0)
    src = activations.StreamingSource(cfg, params, seqs, SITE, **kwargs)
    uninterrupted = [jax.device_get(b) for b in itertools.islice(src.iter_batches(32, sharding), 9)]
    first = activations.StreamingSource(cfg, params, seqs, SITE, **kwargs)
    it = first.iter_batches(32, sharding)
    for _ in range(4):
        next(it)
    resumed = activations.StreamingSource(cfg, params, seqs, SITE, **kwargs)
    resumed.restore(first.state())
    got = [jax.device_get(b) for b in itertools.islice(resumed.iter_batches(32, sharding), 5)]
    for a, b in zip(got, uninterrupted[4:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments(setup):
    cfg, params, seqs, _, _ = setup
    with pytest.raises(ValueError, match="one concrete site"):
        activations.StreamingSource(cfg, params, seqs, "resid_post/*", norm_scale=1.0)
    with pytest.raises(ValueError, match="valid"):
        activations.StreamingSource(cfg, params, seqs, "resid_post/7", norm_scale=1.0)
    with pytest.raises(ValueError, match="buffer_tokens"):
        activations.StreamingSource(cfg, params, seqs, SITE, buffer_tokens=0, norm_scale=1.0)
    with pytest.raises(ValueError, match="norm_scale"):
        activations.StreamingSource(cfg, params, seqs, SITE, norm_scale=-1.0)


def test_from_config_matches_explicit_construction(setup, model_path):
    cfg, params, seqs, _, _ = setup
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None))
    config = study_config(model_path)
    from_config = activations.StreamingSource.from_config(config, SITE, seed=2, norm_scale=1.5)
    explicit = activations.StreamingSource(
        cfg, params, seqs, SITE, seed=2, norm_scale=1.5, forward_batch=config.cache.batch_size
    )
    np.testing.assert_array_equal(
        jax.device_get(next(from_config.iter_batches(16, sharding))),
        jax.device_get(next(explicit.iter_batches(16, sharding))),
    )
