"""Tests of data.eval_split="tail".

The eval split is the documents after a character cut, and the demo's eval documents all lie in the
text the shipped tiny LM held out.
"""

import json
from pathlib import Path

import pytest

from gemmascope import assets, data, model, study

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "tiny_demo.py"


def _cfg(corpus, fraction):
    cfg = data.default_config()
    cfg.corpus = str(corpus)
    cfg.eval_split = "tail"
    cfg.eval_fraction = fraction
    return cfg


def _splits(cfg):
    return list(data.split_documents(cfg, "train")), list(data.split_documents(cfg, "eval"))


def test_tail_of_a_text_file_by_hand(tmp_path):
    path = tmp_path / "plays.txt"
    # Paragraphs start at characters 0, 5, 12 and 15 of 19.
    path.write_text("A a\n\nB b b\n\nC\n\nD d\n")
    # 0.3: cut at int(0.7 * 19) = 13, so only the paragraph at 15 is held out.
    assert _splits(_cfg(path, 0.3)) == (["A a", "B b b", "C"], ["D d\n"])
    # 0.4: cut at int(0.6 * 19) = 11: "C" (at 12) joins the tail.
    assert _splits(_cfg(path, 0.4)) == (["A a", "B b b"], ["C", "D d\n"])
    # Repeated paragraphs are told apart by where they are: at 0, 3 and 6 of 9, cut at 4.
    path.write_text("x\n\nx\n\nx\n\n")
    assert _splits(_cfg(path, 0.5)) == (["x", "x"], ["x"])


def test_tail_of_a_row_file_counts_document_characters(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in ["aaaa", "bb", "cccc"]))
    # Documents end to end: starts 0, 4, 6 of 10 characters; cut at int(0.5 * 10) = 5.
    assert _splits(_cfg(path, 0.5)) == (["aaaa", "bb"], ["cccc"])


def test_tail_errors(tmp_path):
    with pytest.raises(ValueError, match="needs a local corpus file"):
        next(data.split_documents(_cfg("someone/some-hub-dataset", 0.1), "eval"))
    path = tmp_path / "a.txt"
    path.write_text("a\n")
    bad = _cfg(path, 0.1)
    bad.eval_split = "end"
    with pytest.raises(ValueError, match=r"eval_split must be one of \('random', 'tail'\)"):
        next(data.split_documents(bad, "eval"))


def test_demo_evaluates_on_the_tiny_lm_held_out_text():
    text = assets.CORPUS_PATH.read_text()
    lm_train, lm_heldout = assets.corpus.split_corpus(text)
    for arg in ("", "runlocal"):
        cfg = study.load_config_file(f"{DEMO}:{arg}" if arg else str(DEMO))[1].data
        train, held_out = _splits(cfg)
        # Disjoint and complete: the head then the tail of the corpus's documents, in order.
        assert train + held_out == list(data.documents(cfg))
        # Oracle: the paragraphs (non-blank pieces between blank lines) that start inside the
        # LM's held-out text, located by adding up the pieces' lengths.
        expected, start = [], 0
        for piece in text.split("\n\n"):
            if start >= len(lm_train) and piece.strip():
                expected.append(piece)
            start += len(piece) + 2
        assert held_out == expected
        assert held_out and all(doc in lm_heldout for doc in held_out)
    # The tail is long enough for the demo's eval sequences.
    cfg = study.load_config_file(str(DEMO))[1].data
    tokenizer = model.load_tokenizer(assets.TINY_MODEL_DIR)
    assert data.sequences(cfg, tokenizer, "eval").shape == (cfg.n_eval_sequences, cfg.seq_len)
