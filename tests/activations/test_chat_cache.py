"""Chat-wrapped data (data.chat_wrap) in the cache and the stream.

The cache and the stream hold every position except specials and the user-prefix tokens, equal to
direct capture there; other wrappings are refused.
"""

import itertools
import shutil

import jax
import numpy as np
import pytest
from activation_setup import study_config
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tokenizers import AddedToken

from gemmascope import activations, data, model
from gemmascope.activations import storage

SITES = ("resid_post/0", "attn_z/1")


@pytest.fixture(scope="module")
def chat_model(model_path, tmp_path_factory):
    """The test model with Gemma's turn markers and "user" / "model" added to its tokenizer."""
    folder = tmp_path_factory.mktemp("chat_model")
    shutil.copytree(model_path, folder, dirs_exist_ok=True)
    tokenizer = model.load_tokenizer(str(folder))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    )
    tokenizer.add_tokens([AddedToken(w, single_word=True) for w in ("user", "model")])
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def chat_cache(chat_model, tmp_path_factory):
    config = study_config(chat_model, sites=SITES)
    config.data.chat_wrap = True
    config.data.seq_len = 24  # short rows: several prefixes are cut by a row boundary
    workdir = str(tmp_path_factory.mktemp("chat_cache"))
    activations.build_cache(config, workdir)
    return config, workdir


def _expected_keep(tokenizer, seqs, special_ids):
    """Oracle from token identities.

    The user prefix is every <start_of_turn> followed by "user" (the model prefix's <start_of_turn>
    is followed by "model"), plus that "user".
    """
    start, user = (tokenizer.convert_tokens_to_ids(t) for t in ("<start_of_turn>", "user"))
    stream = seqs[:, 1:].ravel()
    prefix = np.zeros(stream.shape, bool)
    heads = np.flatnonzero((stream[:-1] == start) & (stream[1:] == user))
    prefix[heads] = prefix[heads + 1] = True
    prefix[-1] |= stream[-1] == start and stream[-2] == tokenizer.eos_token_id
    keep = ~np.isin(seqs, special_ids)
    keep[:, 1:] &= ~prefix.reshape(len(seqs), -1)
    return keep, heads


def test_wrapped_cache_holds_exactly_the_trained_positions(chat_model, chat_cache):
    config, workdir = chat_cache
    cfg, params = model.load_hf(chat_model)
    tokenizer = model.load_tokenizer(chat_model)
    assert max(tokenizer.convert_tokens_to_ids(["<start_of_turn>", "user"])) < cfg.vocab_size
    seqs = data.sequences(config.data, tokenizer, "train")
    keep, heads = _expected_keep(tokenizer, seqs, cfg.special_token_ids)
    row_ends = np.arange(1, len(seqs)) * (seqs.shape[1] - 1) - 1
    assert np.isin(heads, row_ends).any(), "some prefix must be cut by a row boundary"
    np.testing.assert_array_equal(
        data.trained_positions(config.data, tokenizer, seqs, cfg.special_token_ids), keep
    )
    acts = jax.jit(lambda p, t: model.forward(cfg, p, t, capture=list(SITES))[1])(params, seqs)
    for site in SITES:
        meta = storage.read_meta(storage.site_dir(workdir, site))
        assert meta["complete"] and meta["n_tokens"] == int(keep.sum())
        assert meta["identity"]["excluded_user_prefix_ids"] == data.user_prefix_ids(
            config.data, tokenizer
        )
        cached = storage.open_array(storage.site_dir(workdir, site)).read().result()
        np.testing.assert_allclose(cached, np.asarray(acts[site])[keep], rtol=2e-5, atol=2e-5)
    tokens = storage.open_array(storage.join(storage.cache_root(workdir), "tokens"))
    seq_ids, positions = np.nonzero(keep)
    np.testing.assert_array_equal(
        tokens.read().result(), np.stack([seqs[keep], positions, seq_ids], axis=1)
    )

    # The stream leaves out the same positions: one epoch is exactly the cached rows.
    src = activations.StreamingSource.from_config(config, "resid_post/0", seed=0, norm_scale=1.0)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    n = int(keep.sum())
    batches = itertools.islice(
        src.iter_batches(64, NamedSharding(mesh, P("data", None))), -(-n // 64)
    )
    streamed = np.concatenate([jax.device_get(b) for b in batches])[:n]
    expected = np.asarray(acts["resid_post/0"])[keep]
    # n rows, each one of the expected rows and each expected row among them (up to rounding;
    # a few rows repeat exactly, where a row's first tokens repeat another's).
    distances = ((streamed[:, None, :] - expected[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(streamed, expected[distances.argmin(1)], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(streamed[distances.argmin(0)], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "change, field",
    [(dict(chat_wrap=False), "chat_wrap"), (dict(chat_user_prefix="user "), "chat_user_prefix")],
)
def test_cache_with_other_wrapping_is_refused(chat_cache, change, field):
    config, workdir = chat_cache
    other = config.copy_and_resolve_references()
    other.data.update(change)
    with pytest.raises(activations.CacheError, match=f"corpus.{field}: cache has"):
        activations.build_cache(other, workdir)


def test_the_streaming_stage_leaves_out_the_user_prefix(chat_cache):
    # stages (source="stream") builds its sources from one loaded model: each epoch must hold
    # exactly the cache's rows (every position but specials and the user prefix).
    from gemmascope.study import stages

    config, workdir = chat_cache
    config = config.copy_and_resolve_references()
    config.source = "stream"
    config.cache.model_parallel = 4  # and the stage runs the LM split over 4 of the 8 devices
    source = stages._source_opener(config, workdir)("resid_post/0", 0)
    meta = storage.read_meta(storage.site_dir(workdir, "resid_post/0"))
    assert source._epoch_tokens == meta["n_tokens"]
    assert dict(source._capturer.mesh.shape) == {"data": 2, "model": 4}
