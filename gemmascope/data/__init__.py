"""Text corpora to tokenized, packed sequences with a held-out eval split.

    from gemmascope import data
    cfg = data.default_config()                        # corpus="embedded", seq_len=1024, ...
    train = data.sequences(cfg, tokenizer, "train")    # np.int32 (N, seq_len), BOS first
    held_out = data.sequences(cfg, tokenizer, "eval")  # disjoint documents
    keep = data.trained_positions(cfg, tokenizer, train, model_cfg.special_token_ids)
    data.check_config(cfg)                             # every field, without reading the corpus

With `cfg.chat_wrap` every document is wrapped as a chat turn (IT SAEs) and `user_prefix_mask` /
`trained_positions` leave the user-prefix tokens out. See docs/data.md for how documents are
defined, wrapped, joined and split.
"""

from gemmascope.data.chat import trained_positions, user_prefix_ids, user_prefix_mask
from gemmascope.data.corpus import (
    default_config,
    documents,
    embedded_corpus_path,
    identity,
    located_documents,
)
from gemmascope.data.packing import SPLITS, check_config, sequences, split_documents

__all__ = [
    "SPLITS",
    "check_config",
    "default_config",
    "documents",
    "embedded_corpus_path",
    "identity",
    "located_documents",
    "sequences",
    "split_documents",
    "trained_positions",
    "user_prefix_ids",
    "user_prefix_mask",
]
