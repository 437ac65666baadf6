"""Streaming per-latent statistics against a brute-force numpy oracle over all tokens at once."""

import functools

import jax
import numpy as np
import pytest

from gemmascope.inspect import stats

SHAPE = stats.StatsShape(
    top_k=4, sample_size=3, before=2, after=1, bins=12, log10_low=-2.0, log10_high=1.0, seed=7
)


def _fmix32(h):
    """MurmurHash3's finaliser in numpy (uint32 arithmetic wraps), written independently."""
    h = h.astype(np.uint64)
    mask = np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & mask
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & mask
    h ^= h >> np.uint64(16)
    return h


def _priority(position, latent, seed):
    seed_hash = _fmix32(np.array([seed], np.uint64))[0]
    latent_hash = _fmix32(np.asarray(latent, np.uint64) ^ seed_hash)
    mixed = (np.asarray(position, np.uint64) * np.uint64(0x9E3779B1) + latent_hash) & np.uint64(
        0xFFFFFFFF
    )
    return (_fmix32(mixed) >> np.uint64(8)).astype(np.float64) / 2.0**24


def _data(n=7, t=9, s=5, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.lognormal(0.0, 1.5, size=(n, t, s)).astype(np.float32) * 0.3
    rate = np.array([0.6, 0.3, 0.1, 0.02, 0.0])[:s]  # the last latent never fires
    f *= rng.random((n, t, s)) < rate
    f[0, 3, 1] = 50.0  # beyond the histogram's range: the last bin
    f[1, 4, 0] = 1e-4  # below it: the first bin
    keep = rng.random((n, t)) < 0.85
    keep[:, 0] = False  # BOS
    keep[2, 5] = False
    f[2, 5, :] = 99.0  # large, but not scored: must never appear
    return f, keep


def _stream(f, keep, batch_size, latent_ids=None):
    n, t, s = f.shape
    latent_ids = np.arange(s, dtype=np.int32) if latent_ids is None else latent_ids
    update = jax.jit(functools.partial(stats.update, shape=SHAPE))
    state = stats.init_state(s, SHAPE)
    for start in range(0, n, batch_size):
        fb, kb = f[start : start + batch_size], keep[start : start + batch_size]
        if len(fb) < batch_size:  # padding rows as the scan pads them: repeated, not kept
            pad = batch_size - len(fb)
            fb = np.concatenate([fb, np.repeat(fb[:1], pad, 0)])
            kb = np.concatenate([kb, np.zeros((pad, t), bool)])
        state = update(state, fb, kb, np.int32(start), latent_ids)
    return jax.device_get(state)


def _window(scored, seq, t):
    n_t = scored.shape[1]
    return np.array(
        [
            scored[seq, u] if 0 <= u < n_t else 0.0
            for u in range(t - SHAPE.before, t + SHAPE.after + 1)
        ]
    )


@pytest.mark.parametrize("batch_size", [2, 3, 7])
def test_streaming_statistics_equal_brute_force(batch_size):
    f, keep = _data()
    n, t, s = f.shape
    state = _stream(f, keep, batch_size)
    scored = np.where(keep[..., None], f, 0.0)
    positions = np.arange(n * t)
    for latent in range(s):
        values = scored[..., latent].reshape(-1)
        fired = values > 0
        assert state["count"][latent] == fired.sum()
        np.testing.assert_allclose(state["total"][latent], values.sum(), rtol=1e-6)
        logs = np.clip(np.log10(values[fired]), SHAPE.log10_low, SHAPE.log10_high - 1e-9)
        expected_hist, _ = np.histogram(logs, bins=SHAPE.histogram_edges())
        np.testing.assert_array_equal(state["hist"][latent], expected_hist)

        order = np.argsort(-values, kind="stable")[: SHAPE.top_k]
        top = state["top_value"][latent]
        np.testing.assert_allclose(top, values[order], rtol=0)
        for value, pos in zip(top, state["top_pos"][latent], strict=True):
            if value > 0:
                assert values[pos] == value  # the position really holds that value
        for j, pos in enumerate(state["top_pos"][latent]):
            if top[j] > 0:
                np.testing.assert_array_equal(
                    state["top_window"][latent, j], _window(scored[..., latent], pos // t, pos % t)
                )

        priority = _priority(positions, latent, SHAPE.seed)
        firing_positions = positions[fired]
        chosen = firing_positions[np.argsort(-priority[fired])][: SHAPE.sample_size]
        got = state["sample_pos"][latent][state["sample_priority"][latent] >= 0]
        assert set(got.tolist()) == set(chosen.tolist())
        for j, pos in enumerate(state["sample_pos"][latent]):
            if pos >= 0:
                assert state["sample_value"][latent, j] == values[pos]
                np.testing.assert_allclose(state["sample_priority"][latent, j], priority[pos])
                np.testing.assert_array_equal(
                    state["sample_window"][latent, j],
                    _window(scored[..., latent], pos // t, pos % t),
                )
    assert state["count"][4] == 0 and (state["top_value"][4] == 0).all()
    assert (state["sample_pos"][4] == -1).all()
    assert (state["top_value"] < 99.0).all()  # the unscored token never counts


def test_samples_depend_on_the_latent_id_not_its_slot():
    f, keep = _data()
    ids = np.array([11, 3, 250, 7, 1], np.int32)
    state = _stream(f, keep, 3, latent_ids=ids)
    t = f.shape[1]
    scored = np.where(keep[..., None], f, 0.0).reshape(-1, f.shape[2])
    for slot, latent in enumerate(ids):
        fired = np.flatnonzero(scored[:, slot] > 0)
        best = fired[np.argsort(-_priority(fired, latent, SHAPE.seed))][: SHAPE.sample_size]
        got = state["sample_pos"][slot][state["sample_pos"][slot] >= 0]
        assert set(got.tolist()) == set(best.tolist()), (slot, t)


def test_sample_priorities_are_uniform():
    positions = np.arange(200_000)
    u = np.asarray(stats.sample_priority(positions, 5, 0))
    np.testing.assert_allclose(u, _priority(positions, 5, 0))
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    assert np.abs(counts / len(u) - 0.1).max() < 0.005
    other = np.asarray(stats.sample_priority(positions, 6, 0))
    assert abs(np.corrcoef(u, other)[0, 1]) < 0.01  # another latent: an independent sample
