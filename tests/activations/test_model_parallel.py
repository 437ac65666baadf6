"""Model-parallel capture against the replicated forward.

Params sharded over a (data, model) mesh give the activations of the replicated, data-parallel
forward (the path tests/model checks against HF transformers).

The 8 forced CPU devices form a (2, 4) mesh, so both axes really shard. One tiny config has every
sharded dimension divisible by 4 (heads 8, KV heads 4, MLP 128, vocab 512); the cache tests use
activation_setup's model with 2 KV heads, which stay replicated on a model axis of 4 (the
documented fallback).
"""

import shutil

import jax
import ml_collections
import numpy as np
import pytest
from activation_setup import study_config

from gemmascope import activations, model
from gemmascope.activations import storage
from gemmascope.activations.capture import Capturer
from gemmascope.model import params as lm_params

# GQA with 2 query heads per KV head; 4 layers alternate sliding (window 8) and global.
CFG = model.presets.tiny(num_attention_heads=8, num_key_value_heads=4, head_dim=8)
SITES = [f"{kind}/{layer}" for kind in ("resid_post", "mlp_out", "attn_z") for layer in range(4)]


def _random_params(cfg, seed=0, std=0.05):
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * std, shapes)


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, CFG.vocab_size, size=(3, 24)).astype(np.int32)
    tokens[:, 0] = CFG.bos_token_id
    return tokens


def test_sharded_capture_equals_replicated_at_every_site(tokens):
    assert CFG.is_sliding(0) and tokens.shape[1] > CFG.sliding_window  # the window binds
    params = _random_params(CFG)
    replicated = Capturer(CFG, params, SITES, "float32", batch_size=3)
    sharded = Capturer(CFG, params, SITES, "float32", batch_size=3, model_parallel=4)
    assert dict(replicated.mesh.shape) == {"data": 8, "model": 1}
    assert dict(sharded.mesh.shape) == {"data": 2, "model": 4}
    assert sharded.batch_size == 4  # 3 rounded up to a multiple of the data axis
    # The params really are split: a device holds a quarter of each MLP / attention weight.
    layer = sharded._params["layers"][1]
    assert layer["up"].addressable_shards[0].data.shape == (CFG.hidden_size, 128 // 4)
    assert layer["down"].addressable_shards[0].data.shape == (128 // 4, CFG.hidden_size)
    assert layer["k"].addressable_shards[0].data.shape == (CFG.hidden_size, 1, 8)
    assert sharded._params["embed"].addressable_shards[0].data.shape == (512 // 4, 64)
    expected = replicated.forward(tokens)
    got = sharded.forward(tokens)
    for site in SITES:
        assert got[site].shape == (3, 24, model.sites.dim(CFG, site))
        np.testing.assert_allclose(got[site], expected[site], rtol=1e-5, atol=1e-5, err_msg=site)
    # Layer 0 is local: its attention differs from a global one, so the mask was really applied.
    global_cfg = model.presets.tiny(
        num_attention_heads=8, num_key_value_heads=4, head_dim=8, sliding_window=None
    )
    unwindowed = Capturer(global_cfg, params, ["attn_z/0"], "float32", 3, model_parallel=4)
    assert not np.allclose(unwindowed.forward(tokens)["attn_z/0"], got["attn_z/0"], atol=1e-4)


def test_undivisible_dimension_stays_replicated_and_exact(tokens):
    cfg = model.presets.tiny()  # 2 KV heads on a model axis of 4
    assert ("layers.0.k", "kv_heads", 2) in lm_params.replicated_params(cfg, 4)
    assert lm_params.replicated_params(cfg, 2) == []
    params = _random_params(cfg, seed=2)
    sites = ["attn_z/0", "resid_post/3"]
    sharded = Capturer(cfg, params, sites, "float32", batch_size=2, model_parallel=4)
    layer = sharded._params["layers"][0]
    assert layer["k"].addressable_shards[0].data.shape == (64, 2, 16)  # whole
    assert layer["q"].addressable_shards[0].data.shape == (64, 1, 16)  # 4 heads / 4
    expected = Capturer(cfg, params, sites, "float32", batch_size=2).forward(tokens[:2])
    got = sharded.forward(tokens[:2])
    for site in sites:
        np.testing.assert_allclose(got[site], expected[site], rtol=1e-5, atol=1e-5, err_msg=site)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (3, r"cache.model_parallel=3 does not divide the 8 local devices.*\[1, 2, 4, 8\]"),
        (16, r"cache.model_parallel=16 does not divide the 8 local devices"),
        (0, "cache.model_parallel must be a positive integer, got 0"),
        ("4", "cache.model_parallel must be a positive integer, got '4'"),
        (True, "cache.model_parallel must be a positive integer, got True"),
    ],
)
def test_bad_model_parallel_is_refused(value, message):
    with pytest.raises(ValueError, match=message):
        Capturer(CFG, {}, ["resid_post/0"], "float32", batch_size=2, model_parallel=value)


def test_cache_config_checks_model_parallel():
    cfg = activations.default_config()
    assert cfg.model_parallel == 1
    cfg.model_parallel = -2
    with pytest.raises(ValueError, match="cache.model_parallel must be a positive integer"):
        activations.config.check_config(cfg)


def test_model_parallel_cache_equals_replicated_cache(reference_cache, model_path, tmp_path):
    reference_config, reference_dir = reference_cache
    config = study_config(model_path)
    config.cache.model_parallel = 4
    workdir = str(tmp_path / "mp4")
    dirs = activations.build_cache(config, workdir)
    assert sorted(dirs) == ["attn_z/1", "mlp_in/1", "mlp_out/1", "resid_post/1"]
    for site in dirs:
        ours = storage.read_meta(storage.site_dir(workdir, site))
        theirs = storage.read_meta(storage.site_dir(reference_dir, site))
        # model_parallel changes how, not what: same fingerprint, so either may resume the other.
        assert ours["fingerprint"] == theirs["fingerprint"] and ours["complete"]
        assert ours["norm_scale"] == pytest.approx(theirs["norm_scale"], rel=1e-5)
        np.testing.assert_allclose(
            storage.open_array(storage.site_dir(workdir, site)).read().result(),
            storage.open_array(storage.site_dir(reference_dir, site)).read().result(),
            rtol=1e-5,
            atol=1e-5,
            err_msg=site,
        )


def test_bad_model_parallel_writes_nothing(model_path, tmp_path):
    config = study_config(model_path)
    config.cache.model_parallel = 3
    workdir = tmp_path / "refused"
    with pytest.raises(ValueError, match=r"valid values: \[1, 2, 4, 8\]"):
        activations.build_cache(config, str(workdir))
    assert not workdir.exists() or not any(workdir.iterdir())
    shutil.rmtree(workdir, ignore_errors=True)


def test_streaming_with_model_parallel_gives_the_same_batches(model_path):
    config = study_config(model_path)
    config.data.max_sequences = 8
    config.cache.model_parallel = 4
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    kwargs = dict(seed=3, buffer_tokens=64, norm_sample_tokens=64)
    sharded = activations.StreamingSource.from_config(config, "mlp_out/1", **kwargs)
    assert sharded._capturer.mesh.shape["model"] == 4
    replicated_config = ml_collections.ConfigDict(config.to_dict())
    replicated_config.cache.model_parallel = 1
    replicated = activations.StreamingSource.from_config(replicated_config, "mlp_out/1", **kwargs)
    assert sharded.norm_scale == pytest.approx(replicated.norm_scale, rel=1e-5)
    for a, b in zip(
        _take(sharded.iter_batches(32, sharding), 3),
        _take(replicated.iter_batches(32, sharding), 3),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]
