"""Text corpora to tokenized, packed sequences with a held-out eval split.

    from gemmascope import data
    cfg = data.default_config()                        # corpus="embedded", seq_len=1024, ...
    train = data.sequences(cfg, tokenizer, "train")    # np.int32 (N, seq_len), BOS first
    held_out = data.sequences(cfg, tokenizer, "eval")  # disjoint documents

See docs/data.md for how documents are defined, joined and split.
"""

from gemmascope.data.corpus import default_config, documents, embedded_corpus_path, identity
from gemmascope.data.packing import SPLITS, sequences

__all__ = [
    "SPLITS",
    "default_config",
    "documents",
    "embedded_corpus_path",
    "identity",
    "sequences",
]
