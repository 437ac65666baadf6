"""Chat-turn wrapping of documents (for instruction-tuned SAEs) and the positions SAEs train on.

    cfg.chat_wrap = True                                   # data config; off by default
    ids = wrapped_token_ids(cfg, tokenizer, ["Hello."])    # user prefix + document + model prefix
    prefix = user_prefix_mask(cfg, tokenizer, seqs)        # bool (N, T): the user-prefix tokens
    keep = trained_positions(cfg, tokenizer, seqs, model_cfg.special_token_ids)

Gemma Scope trains its IT SAEs on pretraining documents wrapped as one chat turn, the user-turn
prefix before the document and the model-turn prefix after it, on every position except the
user-prefix tokens, which are constant and have a much larger norm (GS §4.5;
docs/recipe.md#it-saes). The default strings are the chat template of Gemma 2 and Gemma 3.

The user prefix is tokenized on its own and its ids are put before the tokens of
`document + model_prefix`, so every wrapped document starts with the same run of ids. That makes
the user-prefix positions a function of the token ids alone (`user_prefix_mask`): in the packed
stream a document starts at the first token and right after every EOS, and a user prefix is the
run of prefix ids at a document start. Packing may cut a prefix in two (its head ends one
sequence, its tail follows the next sequence's BOS); reading the rows as one stream finds both
halves. So every process can compute every cache row's place before any forward pass.
"""

from __future__ import annotations

import numpy as np

# The chat template of Gemma 2 and Gemma 3 around one user turn (`<start_of_turn>` /
# `<end_of_turn>` are single special tokens: ids 106 / 107 in Gemma 2's vocabulary, 105 / 106 in
# Gemma 3's, checked on the real 270M's tokenizer in tests/model/test_model_gemma3_270m.py).
GEMMA_USER_PREFIX = "<start_of_turn>user\n"
GEMMA_MODEL_PREFIX = "<end_of_turn>\n<start_of_turn>model\n"


def check_config(cfg) -> None:
    """Raises ValueError naming a bad chat field of a data config."""
    if not isinstance(cfg.chat_wrap, bool):
        raise ValueError(f"data.chat_wrap must be True or False, got {cfg.chat_wrap!r}")
    for name in ("chat_user_prefix", "chat_model_prefix"):
        if not isinstance(cfg[name], str):
            raise ValueError(f"data.{name} must be a string, got {cfg[name]!r}")
    if cfg.chat_wrap and not cfg.chat_user_prefix:
        raise ValueError(
            "data.chat_user_prefix is empty but data.chat_wrap is True: wrapping needs a user "
            f"prefix (Gemma 2's is {GEMMA_USER_PREFIX!r}); set chat_wrap=False to train on "
            "plain documents"
        )


def user_prefix_ids(cfg, tokenizer) -> list[int]:
    """Token ids of the user prefix; [] when wrapping is off.

    Raises:
      ValueError: on bad chat fields, or a prefix that tokenizes to nothing or holds BOS / EOS
        (EOS marks document starts, so a prefix holding it could not be found again).
    """
    check_config(cfg)
    if not cfg.chat_wrap:
        return []
    ids = list(tokenizer([cfg.chat_user_prefix], add_special_tokens=False)["input_ids"][0])
    if not ids:
        raise ValueError(f"data.chat_user_prefix {cfg.chat_user_prefix!r} tokenizes to no token")
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    if specials & set(ids):
        raise ValueError(
            f"data.chat_user_prefix {cfg.chat_user_prefix!r} tokenizes to {ids}, which holds the "
            f"BOS or EOS id {sorted(specials & set(ids))}; the prefix must not contain them"
        )
    return ids


def wrapped_token_ids(cfg, tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids (no BOS / EOS) of each document, wrapped as a chat turn when `cfg.chat_wrap`.

    Wrapped: `user_prefix_ids + tokenizer(text + chat_model_prefix)`. This equals tokenizing
    `chat_user_prefix + text + chat_model_prefix` in one go unless the tokenizer would merge the
    prefix's last characters with the document's first (never across Gemma's special tokens).
    """
    if not cfg.chat_wrap:
        check_config(cfg)
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    prefix = user_prefix_ids(cfg, tokenizer)
    bodies = [text + cfg.chat_model_prefix for text in texts]
    return [prefix + list(ids) for ids in tokenizer(bodies, add_special_tokens=False)["input_ids"]]


def _prefix_positions(body: np.ndarray, prefix: list[int], eos_id: int):
    """(rows, columns) in `body` of every user-prefix token.

    `body` is the packed rows without their BOS, read row after row as one stream (stream
    position p is body[p // width, p % width]; no copy is made). A document starts at position 0
    and right after every EOS; the prefix is the run of its ids there. A run that the stream's
    end cuts short counts too; a partial match anywhere else does not.
    """
    n_rows, width = body.shape
    total = n_rows * width
    eos_rows, eos_cols = np.nonzero(body == eos_id)
    starts = np.concatenate([[0], eos_rows * width + eos_cols + 1])
    index = starts[:, None] + np.arange(len(prefix))  # where each document's prefix would be
    clipped = np.minimum(index, total - 1)
    equal = (body[clipped // width, clipped % width] == np.asarray(prefix)) & (index < total)
    matched = np.cumprod(equal, axis=1).sum(axis=1)  # leading tokens equal to the prefix
    is_prefix = (matched == len(prefix)) | (starts + matched == total)
    covered = np.arange(len(prefix)) < matched[:, None]
    positions = index[is_prefix][covered[is_prefix]]
    return positions // width, positions % width


def user_prefix_mask(cfg, tokenizer, sequences: np.ndarray) -> np.ndarray:
    """Bool (N, T) mask, True exactly at the user-prefix tokens of packed sequences.

    Args:
      cfg: the data config the sequences were made with.
      tokenizer: its tokenizer.
      sequences: int (N, T) rows of `data.sequences(cfg, tokenizer, split)`, from its first row
        on (all of them or the first n): the rows are read as one stream, so a prefix cut by a
        row boundary is found in both rows.

    Returns:
      All False when `cfg.chat_wrap` is off.
    """
    sequences = np.asarray(sequences)
    prefix = user_prefix_ids(cfg, tokenizer)
    mask = np.zeros(sequences.shape, bool)
    if not prefix or sequences.size == 0:
        return mask
    if sequences.ndim != 2 or sequences.shape[1] < 2:
        raise ValueError(f"sequences must be an (N, T >= 2) array, got shape {sequences.shape}")
    if not (sequences[:, 0] == tokenizer.bos_token_id).all():
        raise ValueError(
            "sequences must be packed rows that start with BOS (data.sequences or its first rows)"
        )
    rows, columns = _prefix_positions(sequences[:, 1:], prefix, int(tokenizer.eos_token_id))
    mask[rows, columns + 1] = True
    return mask


def trained_positions(cfg, tokenizer, sequences: np.ndarray, special_ids) -> np.ndarray:
    """Bool (N, T) mask of the positions an SAE trains and is evaluated on.

    Every position except special tokens (`special_ids`, e.g. `model_cfg.special_token_ids`:
    BOS, EOS, pad) and, with `cfg.chat_wrap`, the user-prefix tokens. `sequences` as in
    `user_prefix_mask`.
    """
    sequences = np.asarray(sequences)
    special = np.isin(sequences, np.asarray(list(special_ids), sequences.dtype))
    return ~special & ~user_prefix_mask(cfg, tokenizer, sequences)
