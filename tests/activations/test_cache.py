"""build_cache + CacheSource: cached == directly captured, shuffled batches, refusals."""

import hashlib
import itertools
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from activation_setup import LightTokenizer, study_config
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope import activations, data, model
from gemmascope.activations import storage
from gemmascope.activations.shuffle import ShuffleOrder


def _direct_capture(config, model_path):
    """Sites captured by one full forward pass over all sequences, special positions removed."""
    cfg, params = model.load_hf(model_path)
    seqs = data.sequences(config.data, model.load_tokenizer(model_path), "train")
    sites = model.sites.resolve(cfg, list(config.sites))
    acts = jax.jit(lambda p, t: model.forward(cfg, p, t, capture=sites)[1])(params, seqs)
    keep = ~np.isin(seqs, cfg.special_token_ids)
    return seqs, keep, {site: np.asarray(acts[site])[keep] for site in sites}


def test_cache_equals_direct_capture(reference_cache, model_path):
    config, workdir = reference_cache
    seqs, keep, expected = _direct_capture(config, model_path)
    assert sorted(expected) == ["attn_z/1", "mlp_in/1", "mlp_out/1", "resid_post/1"]
    n = int(keep.sum())
    assert n < seqs.size, "BOS/EOS positions must be dropped"
    for site, values in expected.items():
        site_dir = storage.site_dir(workdir, site)
        meta = storage.read_meta(site_dir)
        assert meta["complete"] and meta["n_tokens"] == n and meta["d_in"] == values.shape[1]
        cached = storage.open_array(site_dir).read().result()
        np.testing.assert_allclose(cached, values, rtol=2e-5, atol=2e-5, err_msg=site)
        # The sample covers every token here, so C is exactly the full-data estimate.
        c = np.sqrt(np.mean(np.sum(values.astype(np.float64) ** 2, axis=1)))
        assert meta["norm_scale"] == pytest.approx(c, rel=1e-5)
    tokens = storage.open_array(storage.join(storage.cache_root(workdir), "tokens"))
    seq_ids, positions = np.nonzero(keep)
    np.testing.assert_array_equal(
        tokens.read().result(), np.stack([seqs[keep], positions, seq_ids], axis=1)
    )
    # The subprocess tests tokenize with `tokenizers` alone; it must give the same sequences.
    light = data.sequences(config.data, LightTokenizer(model_path), "train")
    np.testing.assert_array_equal(light, seqs)


def test_rebuilding_a_complete_cache_changes_nothing(reference_cache):
    config, workdir = reference_cache
    before = _tree_digest(workdir)
    activations.build_cache(config, workdir)
    assert _tree_digest(workdir) == before


def test_reader_batches_follow_the_shuffle_and_resume_exactly(reference_cache):
    _, workdir = reference_cache
    site_dir = storage.site_dir(workdir, "resid_post/1")
    values = storage.open_array(site_dir).read().result()
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None))
    src = activations.open_source(workdir, "resid_post/1", seed=1, window_tokens=256)
    assert (src.n_tokens, src.d_in) == values.shape and src.site == "resid_post/1"
    order = ShuffleOrder(src.n_tokens, 1, block_rows=32, window_tokens=256)
    c = np.float32(src.norm_scale)
    n_batches = src.n_tokens // 64 + 3  # past the end of the first epoch
    batches = list(itertools.islice(src.iter_batches(64, sharding), n_batches))
    # Every host-to-device copy is explicit: reading works with implicit ones banned.
    guarded = activations.open_source(
        workdir, "resid_post/1", seed=1, window_tokens=256, prefetch=0
    )
    with jax.transfer_guard("disallow"):
        np.testing.assert_array_equal(
            jax.device_get(next(guarded.iter_batches(64, sharding))), jax.device_get(batches[0])
        )
    for i, batch in enumerate(batches):
        assert batch.sharding == sharding and batch.dtype == np.float32
        rows = np.sort(order.rows(64 * i, 64 * (i + 1)))
        # Divided by C on the devices: equal to numpy's x / C up to 1 ulp.
        np.testing.assert_allclose(jax.device_get(batch), values[rows] / c, rtol=3e-7, atol=0)
    # Resume from a checkpointed state in a fresh source: the same batches follow.
    first = activations.open_source(workdir, "resid_post/1", seed=1, window_tokens=256)
    it = first.iter_batches(64, sharding)
    for _ in range(4):
        next(it)
    resumed = activations.open_source(workdir, "resid_post/1", seed=1, window_tokens=256)
    resumed.restore(first.state())
    for expected, got in zip(batches[4:], resumed.iter_batches(64, sharding), strict=False):
        np.testing.assert_array_equal(jax.device_get(got), jax.device_get(expected))


def _tree_digest(workdir):
    digest = {}
    for path, _, files in os.walk(workdir):
        for name in files:
            full = os.path.join(path, name)
            digest[full] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return digest


@pytest.fixture
def damaged_copy(reference_cache, tmp_path):
    config, workdir = reference_cache
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    return study_config(config.model.path), copy


def test_different_config_model_or_corpus_is_refused_untouched(damaged_copy, model_path):
    config, workdir = damaged_copy
    before = _tree_digest(workdir)
    config.cache.dtype = "bfloat16"
    with pytest.raises(activations.CacheError, match=r"dtype: cache has 'float32'.*'bfloat16'"):
        activations.build_cache(config, workdir)
    config = study_config(model_path)
    config.data.seed = 7
    with pytest.raises(activations.CacheError, match=r"corpus\.seed: cache has 0"):
        activations.build_cache(config, workdir)
    other_model = workdir + "_other_model"
    shutil.copytree(model_path, other_model)
    with open(os.path.join(other_model, "model.safetensors"), "r+b") as f:
        f.seek(-4, os.SEEK_END)  # the last weight's last bytes: same shapes, other values
        f.write(b"\x00\x00\x80\x3f")
    with pytest.raises(activations.CacheError, match=r"model\.files\.model\.safetensors"):
        activations.build_cache(study_config(other_model), workdir)
    assert _tree_digest(workdir) == before


def test_adding_a_site_writes_only_that_site(damaged_copy, model_path):
    config, workdir = damaged_copy
    before = _tree_digest(workdir)
    config.sites = ["*/1", "resid_post/0"]
    activations.build_cache(config, workdir)
    after = _tree_digest(workdir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all("resid_post/0" in k for k in set(after) - set(before))
    _, _, expected = _direct_capture(study_config(model_path, sites=["resid_post/0"]), model_path)
    cached = storage.open_array(storage.site_dir(workdir, "resid_post/0")).read().result()
    np.testing.assert_allclose(cached, expected["resid_post/0"], rtol=2e-5, atol=2e-5)


def test_bfloat16_storage(model_path, tmp_path, reference_cache):
    config = study_config(model_path, sites=["resid_post/1"])
    config.cache.dtype = "bfloat16"
    activations.build_cache(config, str(tmp_path))
    site_dir = storage.site_dir(str(tmp_path), "resid_post/1")
    cached = storage.open_array(site_dir).read().result()
    assert cached.dtype == ml_dtypes.bfloat16
    reference = storage.open_array(storage.site_dir(reference_cache[1], "resid_post/1"))
    np.testing.assert_array_equal(cached, reference.read().result().astype(ml_dtypes.bfloat16))
    # The reader turns bf16 rows into fp32 / C.
    src = activations.CacheSource(site_dir, seed=0, window_tokens=64, prefetch=0)
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:2]), ("data",)), P("data", None))
    rows = np.sort(ShuffleOrder(src.n_tokens, 0, 32, 64).rows(0, 16))
    np.testing.assert_allclose(
        jax.device_get(next(src.iter_batches(16, sharding))),
        cached[rows].astype(np.float32) / np.float32(src.norm_scale),
        rtol=3e-7,
        atol=0,
    )


def test_bad_sites_and_damaged_caches_give_clear_errors(damaged_copy):
    config, workdir = damaged_copy
    config.sites = ["resid_post/9"]
    with pytest.raises(ValueError, match="valid"):
        activations.build_cache(config, workdir)
    config.sites = ["*/1"]
    site_dir = storage.site_dir(workdir, "resid_post/1")
    with pytest.raises(activations.CacheError, match="d_in=64, but d_in=10"):
        activations.CacheSource(site_dir, d_in=10)
    with pytest.raises(activations.CacheError, match="no activation cache for site 'mlp_out/3'"):
        activations.open_source(workdir, "mlp_out/3")
    with pytest.raises(ValueError, match="Unknown site"):
        activations.open_source(workdir, "residual/3")
    with pytest.raises(activations.CacheError, match="per-token metadata"):
        activations.CacheSource(storage.join(storage.cache_root(workdir), "tokens"))

    meta_path = os.path.join(site_dir, "meta.json")
    meta = json.loads(open(meta_path).read())
    with open(meta_path, "w") as f:
        json.dump({**meta, "complete": False}, f)
    with pytest.raises(activations.CacheError, match="incomplete"):
        activations.CacheSource(site_dir)
    with open(meta_path, "w") as f:
        f.write('{"format": "gemmascope.activ')
    before = _tree_digest(workdir)
    with pytest.raises(activations.CacheError, match="corrupted meta.json"):
        activations.CacheSource(site_dir)
    with pytest.raises(activations.CacheError, match="corrupted meta.json"):
        activations.build_cache(config, workdir)
    os.remove(meta_path)
    with pytest.raises(activations.CacheError, match="no meta.json"):
        activations.CacheSource(site_dir)
    with pytest.raises(activations.CacheError, match="holds data but no meta.json"):
        activations.build_cache(config, workdir)
    before.pop(meta_path)
    assert _tree_digest(workdir) == before, "a refused build must not write anything"


def test_url_paths_read_the_same_cache(reference_cache):
    # Any tensorstore kvstore URL works (gs://bucket/prefix in production; file:// here).
    _, workdir = reference_cache
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None))
    by_path = activations.open_source(workdir, "resid_post/1", seed=4, window_tokens=128)
    by_url = activations.open_source("file://" + workdir, "resid_post/1", seed=4, window_tokens=128)
    assert by_url.meta == by_path.meta
    np.testing.assert_array_equal(
        jax.device_get(next(by_url.iter_batches(32, sharding))),
        jax.device_get(next(by_path.iter_batches(32, sharding))),
    )


def test_a_truncated_shard_is_reported(damaged_copy):
    _, workdir = damaged_copy
    site_dir = storage.site_dir(workdir, "resid_post/1")
    shard_file = os.path.join(site_dir, "c", "0", "0")
    with open(shard_file, "r+b") as f:
        f.truncate(os.path.getsize(shard_file) // 2)
    src = activations.CacheSource(site_dir, window_tokens=10**6, prefetch=0)
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:2]), ("data",)), P("data", None))
    damaged = "resid_post/1 is damaged: shard 0 is damaged .*--mode=cache"
    with pytest.raises(activations.CacheError, match=damaged):
        next(src.iter_batches(src.n_tokens - src.n_tokens % 2, sharding))


def test_held_out_rows_are_the_caches_last_and_never_streamed(reference_cache):
    _, workdir = reference_cache
    values = storage.open_array(storage.site_dir(workdir, "resid_post/1")).read().result()
    src = activations.open_source(workdir, "resid_post/1", seed=2, window_tokens=128)
    assert isinstance(src, activations.ActivationSource)
    total, chunk = values.shape[0], src.meta["chunk_rows"]
    held_out = src.hold_out(40)
    c = np.float32(src.norm_scale)
    np.testing.assert_array_equal(held_out, values[total - 40 :] / c)
    # The stream is whole chunks before the held-out rows' first chunk, each row once an epoch.
    assert src.n_tokens == (total - 40) // chunk * chunk
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None))
    n_batches = src.n_tokens // 16
    epoch = np.concatenate(
        [jax.device_get(b) for b in itertools.islice(src.iter_batches(16, sharding), n_batches)]
    )
    expected = values[: n_batches * 16] / c
    np.testing.assert_allclose(  # divided by C on the devices: 1 ulp from numpy's x / C
        epoch[np.lexsort(epoch.T[::-1])], expected[np.lexsort(expected.T[::-1])], rtol=3e-7
    )
