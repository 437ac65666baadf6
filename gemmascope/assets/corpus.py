"""The embedded corpus's deterministic train/held-out split, and n-gram baselines to judge a LM by.

The held-out part is the tail of Tiny Shakespeare: everything from the first line start at or
after 90% of the characters (the same 90/10 tail split as nanoGPT's character-level Shakespeare).
The tokenizer and the tiny model are trained on the head only.

Synopsis::

    train_text, heldout_text = split_corpus(text)                 # head, tail
    ce = unigram_cross_entropy(train_ids, heldout_ids, vocab_size)  # nats/token, add-one smoothing
    ce = bigram_cross_entropy(train_ids, heldout_ids, vocab_size)   # nats/token, Dirichlet prior

Cross-entropies are the mean negative log-likelihood, in nats, of every token of ``eval_ids``
(for the bigram, every token but the first, which has no predecessor). Id arrays are 1-D token
streams without BOS: BOS is never a prediction target.
"""

import numpy as np

HELDOUT_FRACTION = 0.1


def split_corpus(text: str, heldout_fraction: float = HELDOUT_FRACTION) -> tuple[str, str]:
    """Splits ``text`` into a head for training and a tail held out for evaluation.

    The cut is at the first line start at or after ``(1 - heldout_fraction) * len(text)``, so no
    line is split between the two parts; ``train + heldout == text``.

    Args:
        text: the whole corpus.
        heldout_fraction: the approximate fraction of characters held out, in (0, 1).

    Returns:
        (train_text, heldout_text).

    Raises:
        ValueError: if ``heldout_fraction`` is not in (0, 1) or the cut leaves a part empty.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    target = int(len(text) * (1.0 - heldout_fraction))
    newline = text.find("\n", max(target - 1, 0))
    cut = len(text) if newline < 0 else newline + 1
    train, heldout = text[:cut], text[cut:]
    if not train or not heldout:
        raise ValueError(
            f"cannot split a text of {len(text)} characters with heldout_fraction="
            f"{heldout_fraction}: one part would be empty"
        )
    return train, heldout


def _check_ids(name: str, ids: np.ndarray, vocab_size: int, min_len: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if ids.size < min_len:
        raise ValueError(f"{name} must hold at least {min_len} tokens, got {ids.size}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(
            f"{name} has ids in [{ids.min()}, {ids.max()}], outside the vocabulary "
            f"[0, {vocab_size})"
        )
    return ids.astype(np.int64)


def unigram_log_probs(train_ids: np.ndarray, vocab_size: int, alpha: float = 1.0) -> np.ndarray:
    """Log-probabilities (vocab_size,) of a unigram model fit on ``train_ids``, add-alpha smoothed.

    Args:
        train_ids: 1-D training token stream.
        vocab_size: number of token ids; every id gets ``alpha`` pseudo-counts.
        alpha: additive smoothing, > 0 (1.0 is Laplace's add-one).

    Returns:
        float64 array of log-probabilities summing (in probability) to one.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    train_ids = _check_ids("train_ids", train_ids, vocab_size, 1)
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + alpha
    return np.log(counts) - np.log(counts.sum())


def unigram_cross_entropy(
    train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int, alpha: float = 1.0
) -> float:
    """Held-out cross-entropy (nats/token) of an add-alpha unigram model fit on ``train_ids``."""
    log_probs = unigram_log_probs(train_ids, vocab_size, alpha)
    eval_ids = _check_ids("eval_ids", eval_ids, vocab_size, 1)
    return float(-log_probs[eval_ids].mean())


def bigram_cross_entropy(
    train_ids: np.ndarray,
    eval_ids: np.ndarray,
    vocab_size: int,
    prior_strength: float = 10.0,
) -> float:
    """Held-out cross-entropy (nats/token) of a bigram model smoothed towards the unigram.

    ``p(b | a) = (count(a, b) + prior_strength * p_uni(b)) / (count(a) + prior_strength)``: a
    Dirichlet prior centred on the add-one unigram, so unseen pairs keep the unigram's mass.

    Args:
        train_ids: 1-D training token stream.
        eval_ids: 1-D held-out token stream; tokens 1.. are scored given their predecessor.
        vocab_size: number of token ids.
        prior_strength: pseudo-count weight of the unigram prior, > 0.

    Returns:
        mean negative log-likelihood in nats over ``eval_ids[1:]``.
    """
    if prior_strength <= 0:
        raise ValueError(f"prior_strength must be > 0, got {prior_strength}")
    train_ids = _check_ids("train_ids", train_ids, vocab_size, 2)
    eval_ids = _check_ids("eval_ids", eval_ids, vocab_size, 2)
    p_uni = np.exp(unigram_log_probs(train_ids, vocab_size))
    pair_counts = np.bincount(
        train_ids[:-1] * vocab_size + train_ids[1:], minlength=vocab_size * vocab_size
    ).reshape(vocab_size, vocab_size)
    context_counts = pair_counts.sum(axis=1)
    prev, nxt = eval_ids[:-1], eval_ids[1:]
    probs = (pair_counts[prev, nxt] + prior_strength * p_uni[nxt]) / (
        context_counts[prev] + prior_strength
    )
    return float(-np.log(probs).mean())
