"""A small word-level tokenizer built from the bundled corpus (Gemma's ids: pad 0, eos 1, bos 2)."""

import collections
import re

import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from gemmascope import data


def build_tokenizer(vocab_size: int = 300) -> transformers.PreTrainedTokenizerFast:
    text = data.embedded_corpus_path().read_text()
    counts = collections.Counter(re.findall(r"\w+|[^\w\s]", text))
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word, _ in counts.most_common(vocab_size - len(vocab)):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()
