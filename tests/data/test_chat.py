"""Tests of data.chat.

Chat-turn wrapping equals tokenizing the wrapped text by hand, and the user-prefix mask is exactly
the prefix tokens, also where packing cuts a prefix in two.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from gemmascope import data

BOS, EOS, PAD = 2, 1, 0
TURN_MARKERS = ["<start_of_turn>", "<end_of_turn>"]


def _chat_tokenizer(words):
    """Word-level tokenizer with Gemma's turn markers as added special tokens."""
    vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": TURN_MARKERS})
    return tokenizer


def _corpus(tmp_path, docs):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _cfg(path, **overrides):
    cfg = data.default_config()
    cfg.corpus = str(path)
    cfg.eval_fraction = 0.0
    cfg.chat_wrap = True
    cfg.update(overrides)
    return cfg


def _ids(tok, text):
    return tok([text], add_special_tokens=False)["input_ids"][0]


def test_wrapped_stream_equals_hand_tokenized_chat_turns(tmp_path):
    docs = ["a b", "c", "d e f"]
    tok = _chat_tokenizer(["user", "model", *"abcdef"])
    start, end = (tok.convert_tokens_to_ids(m) for m in TURN_MARKERS)
    assert start > 3 and end > 3  # real added specials, not <unk>
    # seq_len 9: the second row ends on <start_of_turn> and its "user" follows the third's BOS.
    cfg = _cfg(_corpus(tmp_path, docs), seq_len=9)
    seqs = data.sequences(cfg, tok, "train")
    stream = []
    for doc in docs:
        stream += _ids(tok, "<start_of_turn>user\n" + doc + "<end_of_turn>\n<start_of_turn>model\n")
        stream.append(EOS)
    expected = np.array([[BOS] + stream[i : i + 8] for i in range(0, 24, 8)], np.int32)
    np.testing.assert_array_equal(seqs, expected)
    assert seqs[1, -1] == start and seqs[2, 1] == tok.convert_tokens_to_ids("user")

    prefix = np.zeros(seqs.shape, bool)
    prefix[0, [1, 2]] = prefix[1, [1, 2]] = True  # whole prefixes
    prefix[1, 8] = prefix[2, 1] = True  # the prefix cut by the row boundary
    np.testing.assert_array_equal(data.user_prefix_mask(cfg, tok, seqs), prefix)
    special = np.isin(seqs, [BOS, EOS, PAD])
    np.testing.assert_array_equal(
        data.trained_positions(cfg, tok, seqs, (PAD, EOS, BOS)), ~special & ~prefix
    )
    # The model-turn prefix is trained on: <end_of_turn> and the second <start_of_turn>.
    assert data.trained_positions(cfg, tok, seqs, (PAD, EOS, BOS))[0, [5, 6, 7]].all()
    # The first rows alone: a prefix cut by the end of the given rows is still masked.
    np.testing.assert_array_equal(data.user_prefix_mask(cfg, tok, seqs[:2]), prefix[:2])
    # Wrapping off: plain documents, nothing masked.
    cfg.chat_wrap = False
    plain = data.sequences(cfg, tok, "train")
    assert start not in plain
    assert not data.user_prefix_mask(cfg, tok, plain).any()


def test_plain_text_markers_are_masked_only_at_document_starts(tmp_path):
    # No special tokens at all: the prefix is ordinary words, which a document may also contain.
    docs = ["x Q : y", "z", "x x"]
    tok = _chat_tokenizer(["Q", ":", "A", *"xyz"])
    cfg = _cfg(_corpus(tmp_path, docs), seq_len=5, chat_user_prefix="Q :", chat_model_prefix=" A")
    assert data.user_prefix_ids(cfg, tok) == _ids(tok, "Q :")
    seqs = data.sequences(cfg, tok, "train")
    q, colon, a, x, y, z = (tok.convert_tokens_to_ids(w) for w in ["Q", ":", "A", *"xyz"])
    # stream: Q : x Q : y A EOS | Q : z A EOS | Q : x x A EOS   (17 tokens -> 4 rows of 4)
    stream = [q, colon, x, q, colon, y, a, EOS, q, colon, z, a, EOS, q, colon, x]
    np.testing.assert_array_equal(seqs[:, 1:].ravel(), stream)
    masked = np.zeros(len(stream), bool)
    masked[[0, 1, 8, 9, 13, 14]] = True  # not the "Q :" inside the first document
    np.testing.assert_array_equal(data.user_prefix_mask(cfg, tok, seqs)[:, 1:].ravel(), masked)


def test_bad_chat_config_raises_clear_errors(tmp_path):
    tok = _chat_tokenizer(["user", "model", "a"])
    path = _corpus(tmp_path, ["a a a"])
    with pytest.raises(ValueError, match="chat_user_prefix must be a string"):
        data.sequences(_cfg(path, chat_user_prefix=None), tok)
    with pytest.raises(ValueError, match="chat_model_prefix must be a string"):
        data.sequences(_cfg(path, chat_model_prefix=None), tok)
    with pytest.raises(ValueError, match="chat_wrap must be True or False"):
        data.sequences(_cfg(path, chat_wrap=None), tok)
    with pytest.raises(ValueError, match="chat_user_prefix is empty"):
        data.sequences(_cfg(path, chat_user_prefix=""), tok)
    with pytest.raises(ValueError, match="tokenizes to no token"):
        data.sequences(_cfg(path, chat_user_prefix="\n"), tok)
    with pytest.raises(ValueError, match="BOS or EOS"):
        data.sequences(_cfg(path, chat_user_prefix="<eos> user"), tok)
    # An empty user prefix is fine while wrapping is off; identity follows the chat fields.
    off = _cfg(path, chat_wrap=False, chat_user_prefix="", seq_len=3)
    seqs = data.sequences(off, tok)
    assert data.user_prefix_ids(off, tok) == [] and not data.user_prefix_mask(off, tok, seqs).any()
    assert data.identity(_cfg(path)) != data.identity(_cfg(path, chat_user_prefix="User:"))
    assert data.identity(off) == data.identity(_cfg(path, chat_wrap=False, seq_len=3))
    assert data.identity(off) != data.identity(_cfg(path, seq_len=3))
    with pytest.raises(ValueError, match="start with BOS"):
        data.user_prefix_mask(_cfg(path), tok, np.array([[5, 6, 7]]))


def test_gemma2_9b_it_study_wraps_its_documents():
    from gemmascope import assets, model, study

    root = Path(__file__).resolve().parents[2] / "experiments" / "gemma2_9b.py"
    assert not study.load_config_file(f"{root}:variant=pt")[1].data.chat_wrap
    for arg in ("variant=it", "variant=it,runlocal"):
        assert study.load_config_file(f"{root}:{arg}")[1].data.chat_wrap, arg
    config = study.load_config_file(f"{root}:variant=it,runlocal")[1]
    # The shipped tokenizer has no turn markers: the prefix is ordinary tokens, found all the same.
    tok = model.load_tokenizer(assets.TINY_MODEL_DIR)
    config.data.seq_len, config.data.max_sequences = 64, 4
    seqs = data.sequences(config.data, tok, "train")
    prefix = data.user_prefix_ids(config.data, tok)
    assert len(prefix) > 2 and seqs[0, 1 : 1 + len(prefix)].tolist() == prefix
    stream = seqs[:, 1:].ravel()
    masked = data.user_prefix_mask(config.data, tok, seqs)[:, 1:].ravel()
    starts = 1 + int((stream == tok.eos_token_id).sum())  # documents begun in these rows
    assert len(prefix) * (starts - 1) < masked.sum() <= len(prefix) * starts
    assert stream[masked].tolist() == (prefix * starts)[: masked.sum()]
