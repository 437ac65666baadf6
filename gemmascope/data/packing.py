"""Documents to fixed-length token sequences: tokenize in batches, split train/eval, pack.

    seqs = sequences(cfg, tokenizer, split="train")   # np.int32 (N, cfg.seq_len), BOS first

How documents become sequences (deterministic; docs/data.md):
1. With `eval_split="random"` (the default) each document is assigned to the eval split with
   probability `eval_fraction`, by a uniform draw from a generator seeded with
   (seed, document_index // 4096): the assignment of a document never depends on the tokenizer,
   on other documents' text or on how much is read. With `eval_split="tail"` the eval split is
   the documents that start in the last `eval_fraction` of the corpus's characters.
2. Documents are tokenized without special tokens (with `chat_wrap`, as one chat turn:
   `gemmascope.data.chat`); empty ones are skipped.
3. Within a split, in corpus order, each document contributes its tokens followed by one EOS;
   the concatenated stream is cut into pieces of `seq_len - 1` tokens and each piece is prefixed
   with BOS. A document may therefore continue from one sequence into the next, a sequence may
   hold several documents separated by EOS, and the final partial piece is dropped.
Since a document belongs to exactly one split, no token, and no document, is shared between
the train and eval splits.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from gemmascope.data import chat, corpus

SPLITS = ("train", "eval")
_ASSIGNMENT_BLOCK = 4096  # documents whose eval draws come from one generator


def _eval_draws(seed: int) -> Iterator[float]:
    """Uniform draws, one per document index; document i is eval iff its draw < eval_fraction."""
    for block in itertools.count():
        yield from np.random.default_rng([seed, block]).random(_ASSIGNMENT_BLOCK)


def check_config(cfg) -> None:
    """Raises ValueError naming the first invalid field of a data config (no file is read).

    Checks the corpus fields (`corpus.check_config`) and the packing fields: seq_len,
    eval_fraction, n_eval_sequences, max_sequences and seed.
    """
    corpus.check_config(cfg)
    if isinstance(cfg.seq_len, bool) or not isinstance(cfg.seq_len, int) or cfg.seq_len < 2:
        raise ValueError(f"data.seq_len must be an integer >= 2 (BOS + text), got {cfg.seq_len!r}")
    if not 0.0 <= float(cfg.eval_fraction) < 1.0:
        raise ValueError(f"data.eval_fraction must be in [0, 1), got {cfg.eval_fraction!r}")
    for name in ("n_eval_sequences", "max_sequences"):
        value = cfg.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"data.{name} must be a positive integer or None, got {value!r}")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"data.seed must be a non-negative integer, got {cfg.seed!r}")


def _check(cfg, tokenizer, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_config(cfg)
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise ValueError(f"the tokenizer has no {name}; packing needs both BOS and EOS tokens")


def split_documents(cfg, split: str) -> Iterator[str]:
    """The documents of one split, in corpus order.

    `cfg.eval_split == "random"`: document i is eval iff its seeded draw is below
    `eval_fraction`. `"tail"`: the eval documents are those starting at or after character
    `int((1 - eval_fraction) * n_chars)` of the corpus (`corpus.located_documents`), the train
    documents all those before; local files only.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    want_eval = split == "eval"
    fraction = float(cfg.eval_fraction)
    if cfg.eval_split == "tail":
        n_chars, located = corpus.located_documents(cfg)
        cut = int((1.0 - fraction) * n_chars)
        for start, text in located:
            if (start >= cut) == want_eval:
                yield text
            elif not want_eval:
                return  # past the cut: the train split (the head) is complete
        return
    for text, draw in zip(corpus.documents(cfg), _eval_draws(cfg.seed), strict=False):
        if (draw < fraction) == want_eval:
            yield text


def _token_stream(cfg, tokenizer, split: str) -> Iterator[list[int]]:
    """Token ids of each non-empty document of the split, EOS appended.

    Documents are chat-wrapped if configured and tokenized in batches.
    """
    docs = split_documents(cfg, split)
    eos = int(tokenizer.eos_token_id)
    while batch := list(itertools.islice(docs, cfg.tokenize_batch_size)):
        for ids in chat.wrapped_token_ids(cfg, tokenizer, batch):
            if ids:
                yield list(ids) + [eos]


def sequences(cfg, tokenizer, split: str = "train") -> np.ndarray:
    """Tokenized, packed sequences of one split.

    Args:
      cfg: the data config (`default_config()`).
      tokenizer: a `transformers` tokenizer (callable on a list of strings, with
        `bos_token_id` and `eos_token_id`).
      split: "train" or "eval".

    Returns:
      np.int32 array (N, cfg.seq_len), every row starting with BOS.

    Raises:
      ValueError: on an invalid config or split, or if the corpus yields no full sequence for
        the split, or fewer eval sequences than `n_eval_sequences`.
    """
    _check(cfg, tokenizer, split)
    piece = cfg.seq_len - 1
    limit = cfg.max_sequences if split == "train" else cfg.n_eval_sequences
    buffer: list[int] = []
    pieces: list[np.ndarray] = []
    for ids in _token_stream(cfg, tokenizer, split):
        buffer.extend(ids)
        while len(buffer) >= piece and (limit is None or len(pieces) < limit):
            pieces.append(np.asarray(buffer[:piece], np.int32))
            del buffer[:piece]
        if limit is not None and len(pieces) >= limit:
            break
    if split == "eval" and limit is not None and len(pieces) < limit:
        raise ValueError(
            f"the eval split of {cfg.corpus!r} yields only {len(pieces)} sequences of "
            f"{cfg.seq_len} tokens but data.n_eval_sequences={limit}; raise data.eval_fraction "
            "or lower n_eval_sequences"
        )
    if not pieces:
        raise ValueError(
            f"the {split} split of {cfg.corpus!r} has too few tokens for one sequence of "
            f"{cfg.seq_len} (eval_fraction={cfg.eval_fraction}); use a smaller data.seq_len"
        )
    body = np.stack(pieces)
    bos = np.full((len(body), 1), int(tokenizer.bos_token_id), np.int32)
    return np.concatenate([bos, body], axis=1)
