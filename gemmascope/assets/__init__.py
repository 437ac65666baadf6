"""The embedded default model and corpus, shipped inside the package.

No Gemma weights can be downloaded on every machine, and SAEs on a random network teach nothing, so
gemmascope ships a tiny Gemma 2-architecture language model trained on Tiny Shakespeare (see
``docs/embedded_model.md``; reproduced by ``experiments/train_tiny_lm.py``).

Synopsis::

    from gemmascope import assets, model
    cfg, params = model.load_hf(assets.TINY_MODEL_DIR)     # HF folder: config.json, safetensors
    tok = model.load_tokenizer(assets.TINY_MODEL_DIR)      # BOS (id 2) is prepended automatically
    train_text, heldout_text = assets.corpus.split_corpus(assets.CORPUS_PATH.read_text())

Exports:
    TINY_MODEL_DIR: folder of the tiny model in Hugging Face format (config.json,
        model.safetensors, tokenizer.json, tokenizer_config.json).
    CORPUS_PATH: the bundled public-domain corpus, Tiny Shakespeare (1,115,394 characters).
    corpus: the deterministic train/held-out split of that corpus and n-gram baselines.
"""

import pathlib

from gemmascope.assets import corpus

_ASSETS_DIR = pathlib.Path(__file__).resolve().parent

TINY_MODEL_DIR: pathlib.Path = _ASSETS_DIR / "tiny_gemma"
CORPUS_PATH: pathlib.Path = _ASSETS_DIR / "tinyshakespeare.txt"

__all__ = ["CORPUS_PATH", "TINY_MODEL_DIR", "corpus"]
