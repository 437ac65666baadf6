"""Shared set-up for activation tests.

A random tiny Gemma 2 HF folder, its tokenizer and a small study config. Kept free of heavy imports
(transformers pulls in torch) so that subprocess workers start quickly.
"""

import collections
import json
import re
from pathlib import Path

import ml_collections

from gemmascope import activations, data

BOS, EOS, PAD = 2, 1, 0


def _vocab() -> dict[str, int]:
    text = data.embedded_corpus_path().read_text()
    counts = collections.Counter(re.findall(r"\w+|[^\w\s]", text))
    vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": 3}
    for word, _ in counts.most_common(500 - len(vocab)):
        vocab[word] = len(vocab)
    return vocab


def build_model_folder(folder) -> str:
    """Saves a random tiny model (vocab 512) plus a word-level tokenizer in an HF folder."""
    import jax
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from gemmascope import model

    tok = Tokenizer(models.WordLevel(_vocab(), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    cfg = model.presets.tiny()
    model.save_hf(cfg, model.init_params(cfg, jax.random.key(0)), folder)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


class LightTokenizer:
    """The folder's tokenizer.json through `tokenizers` alone (same ids, no torch import)."""

    def __init__(self, folder):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        special = json.loads((Path(folder) / "tokenizer_config.json").read_text())
        self.bos_token_id = self._tok.token_to_id(special.get("bos_token", "<bos>"))
        self.eos_token_id = self._tok.token_to_id(special.get("eos_token", "<eos>"))

    def __call__(self, texts, add_special_tokens=False):
        encoded = self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}


def study_config(model_path: str, sites=("*/1",)) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict({"path": model_path, "dtype": "float32"})
    config.data = data.default_config()
    config.data.seq_len = 32
    config.data.max_sequences = 40
    config.sites = list(sites)
    config.cache = activations.default_config()
    config.cache.update(
        shard_rows=128, chunk_rows=32, batch_size=2, norm_sample_tokens=100_000, progress=False
    )
    return config
