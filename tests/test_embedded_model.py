"""Acceptance tests of the embedded default model (gemmascope/assets/tiny_gemma) and its corpus.

The shipped model must load through our loader and through transformers with the same logits, beat
the n-gram baselines on held-out text by a wide margin, carry Gemma's special-token ids, and stay
small. The corpus split and the baselines are checked against hand computations.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import assets, model
from gemmascope.assets import corpus

TOL = 1e-4  # fp32 logits, ours vs transformers' eager Gemma2ForCausalLM.
SEQ_LEN = 128  # The training length; longer than the sliding window, so the window binds.
N_HELDOUT_SEQUENCES = 12  # A small held-out slice: 12 x 127 = 1,524 scored tokens.
# Measured on this slice (docs/embedded_model.md): model 3.52 nats/token, unigram 6.00, bigram
# 4.17, i.e. 2.5 and 0.65 below; the margins leave room for a retrained model's noise.
UNIGRAM_MARGIN = 1.0
BIGRAM_MARGIN = 0.3
MAX_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def shipped():
    """(cfg, params, tokenizer) of the shipped model, loaded through gemmascope."""
    cfg, params = model.load_hf(assets.TINY_MODEL_DIR, dtype=jnp.float32)
    return cfg, params, model.load_tokenizer(assets.TINY_MODEL_DIR)


@pytest.fixture(scope="module")
def split_ids(shipped):
    """Token streams (no BOS) of the training head and the held-out tail of the corpus."""
    _, _, tok = shipped
    train_text, heldout_text = corpus.split_corpus(assets.CORPUS_PATH.read_text())
    encode = lambda text: np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int64)
    return encode(train_text), encode(heldout_text)


def heldout_slice(heldout_ids: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` consecutive held-out windows, each BOS + 127 tokens (int32)."""
    windows = heldout_ids[: n * (SEQ_LEN - 1)].reshape(n, SEQ_LEN - 1)
    return np.concatenate([np.full((n, 1), 2), windows], axis=1).astype(np.int32)


def test_shipped_model_matches_transformers(shipped, split_ids):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, params, _ = shipped
    tokens = heldout_slice(split_ids[1], 2)
    ours = np.asarray(jax.jit(lambda p, t: model.forward(cfg, p, t)[0])(params, tokens))
    ref_model = transformers.Gemma2ForCausalLM.from_pretrained(
        str(assets.TINY_MODEL_DIR), attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert ours.shape == ref.shape == (2, SEQ_LEN, cfg.vocab_size)
    assert np.abs(ours - ref).max() <= TOL


def test_heldout_loss_beats_ngram_baselines(shipped, split_ids):
    cfg, params, _ = shipped
    train_ids, heldout_ids = split_ids
    tokens = heldout_slice(heldout_ids, N_HELDOUT_SEQUENCES)
    logits = jax.jit(lambda p, t: model.forward(cfg, p, t)[0])(params, tokens)
    log_probs = np.asarray(jax.nn.log_softmax(logits[:, :-1], axis=-1))
    targets = tokens[:, 1:]
    model_loss = -np.take_along_axis(log_probs, targets[..., None], axis=-1).mean()
    # The baselines score exactly the same targets: the held-out slice without its BOS tokens.
    scored = targets.reshape(-1)
    unigram = corpus.unigram_cross_entropy(train_ids, scored, cfg.vocab_size)
    bigram = corpus.bigram_cross_entropy(
        train_ids, heldout_ids[: scored.size], cfg.vocab_size, prior_strength=100.0
    )
    assert model_loss < unigram - UNIGRAM_MARGIN, (model_loss, unigram)
    assert model_loss < bigram - BIGRAM_MARGIN, (model_loss, bigram)


def test_architecture_exercises_gemma2_features(shipped):
    cfg, params, _ = shipped
    assert 1_000_000 <= cfg.n_params() <= 5_000_000
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.n_params()
    assert cfg.sliding_window < SEQ_LEN  # The local-attention path matters.
    assert cfg.layer_types[0] == "sliding_attention" and "full_attention" in cfg.layer_types
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA.
    assert cfg.query_pre_attn_scalar == cfg.head_dim
    assert (cfg.attn_logit_softcapping, cfg.final_logit_softcapping) == (50.0, 30.0)


def test_tokenizer_has_gemma_special_ids_and_prepends_bos(shipped):
    cfg, _, tok = shipped
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert len(tok) == cfg.vocab_size
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?"
    ids = tok(text)["input_ids"]
    assert ids[0] == 2 and 2 not in ids[1:] and ids[-1] != 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    # Byte-level BPE: text outside the corpus's alphabet still round-trips, with no <unk>.
    exotic = "naïve café — 東京 🎭"
    assert tok.decode(tok(exotic)["input_ids"][1:]) == exotic
    assert 3 not in tok(exotic)["input_ids"]


def test_package_files_stay_small():
    tiny = sum(p.stat().st_size for p in assets.TINY_MODEL_DIR.rglob("*") if p.is_file())
    assert tiny < MAX_BYTES
    assets_dir = assets.TINY_MODEL_DIR.parent
    shipped_files = [
        p for p in assets_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ]
    assert sum(p.stat().st_size for p in shipped_files) < MAX_BYTES
    names = {p.name for p in assets.TINY_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    summary = json.loads((assets.TINY_MODEL_DIR / "training_summary.json").read_text())
    assert summary["heldout_loss"] < summary["unigram_add_one_loss"]


# ------------------------------------------------------------------ corpus split and baselines


def test_split_corpus_is_a_line_aligned_tail():
    text = assets.CORPUS_PATH.read_text()
    train, heldout = corpus.split_corpus(text)
    assert train + heldout == text
    assert train.endswith("\n")
    assert abs(len(heldout) / len(text) - corpus.HELDOUT_FRACTION) < 1e-3
    # Hand example: 10 lines of 2 characters, 30% held out -> the cut is after line 7.
    toy = "".join(f"{i}\n" for i in range(10))
    assert corpus.split_corpus(toy, 0.3) == (toy[:14], toy[14:])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_corpus_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="heldout_fraction must be in"):
        corpus.split_corpus("a\nb\n", fraction)


def test_split_corpus_rejects_text_too_short_to_split():
    with pytest.raises(ValueError, match="one part would be empty"):
        corpus.split_corpus("one line without a break", 0.1)


def test_unigram_cross_entropy_by_hand():
    # Counts over a vocabulary of 4 with add-one: [2+1, 1+1, 0+1, 0+1] / 7.
    train = np.array([0, 0, 1])
    expected = -(math.log(3 / 7) + math.log(1 / 7)) / 2
    assert corpus.unigram_cross_entropy(train, np.array([0, 3]), 4) == pytest.approx(expected)


def test_bigram_cross_entropy_by_hand():
    train = np.array([0, 1, 0, 1, 1])  # pairs (0,1) x2, (1,0), (1,1); contexts 0: 2, 1: 2
    p_uni = np.array([2 + 1, 3 + 1]) / 7  # add-one unigram, vocabulary 2
    k = 2.0
    p_1_given_0 = (2 + k * p_uni[1]) / (2 + k)
    p_0_given_1 = (1 + k * p_uni[0]) / (2 + k)
    expected = -(math.log(p_1_given_0) + math.log(p_0_given_1)) / 2
    got = corpus.bigram_cross_entropy(train, np.array([0, 1, 0]), 2, prior_strength=k)
    assert got == pytest.approx(expected)


def test_baselines_reject_bad_ids():
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 4\)"):
        corpus.unigram_cross_entropy(np.array([0, 5]), np.array([0]), 4)
    with pytest.raises(ValueError, match="1-D integer array"):
        corpus.unigram_cross_entropy(np.array([[0, 1]]), np.array([0]), 4)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        corpus.bigram_cross_entropy(np.array([0, 1]), np.array([1]), 4)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        corpus.unigram_cross_entropy(np.array([0]), np.array([0]), 4, alpha=0.0)
