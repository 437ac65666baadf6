"""Text corpora as a stream of documents, read with `datasets`, and their configuration.

    cfg = data.default_config()              # corpus="embedded": the bundled Tiny Shakespeare
    for text in documents(cfg): ...          # one string per document, in corpus order
    identity(cfg)                            # JSON-able description used in cache fingerprints

What a document is:
- a plain text file (.txt): by default one paragraph (text between blank lines; in Tiny
  Shakespeare one speech), or one line, or the whole file (`cfg.documents`);
- a .json / .jsonl / .parquet file or a hub dataset: one row, its text in `cfg.text_field`.

Everything is read with `datasets.load_dataset(..., streaming=True)`, so nothing is copied into
the datasets cache and a hub corpus is only read as far as the requested number of sequences.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import ml_collections

EMBEDDED = "embedded"
_BUILDER_BY_SUFFIX = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_TEXT_DOCUMENTS = ("paragraph", "line", "file")


def default_config() -> ml_collections.ConfigDict:
    """The `config.data` section of a study config, with every field documented."""
    cfg = ml_collections.ConfigDict()
    # "embedded" (bundled Tiny Shakespeare), a local .txt/.json/.jsonl/.parquet file, or a hub name.
    cfg.corpus = EMBEDDED
    # Column holding the text in json/jsonl/parquet files and hub datasets.
    cfg.text_field = "text"
    # For .txt files: one document per "paragraph" (blank-line separated), "line" or "file".
    cfg.documents = "paragraph"
    # Hub datasets only: the dataset configuration name (e.g. "wikitext-103-raw-v1") or None.
    cfg.hub_config = ml_collections.config_dict.placeholder(str)
    # Hub datasets only: which hub split to read documents from.
    cfg.hub_split = "train"
    # Tokens per packed sequence, BOS included (Gemma Scope: 1024).
    cfg.seq_len = 1024
    # Fraction of documents held out for evaluation (chosen by seed; never in the train split).
    cfg.eval_fraction = 0.05
    # If set, the eval split is exactly this many sequences (error if the held-out docs are short).
    cfg.n_eval_sequences = ml_collections.config_dict.placeholder(int)
    # If set, the train split stops after this many sequences (reads only as much corpus as needed).
    cfg.max_sequences = ml_collections.config_dict.placeholder(int)
    # Seed of the train/eval document assignment.
    cfg.seed = 0
    # Documents per tokenizer call.
    cfg.tokenize_batch_size = 256
    return cfg


def embedded_corpus_path() -> Path:
    """Path of the bundled Tiny Shakespeare text."""
    try:
        from gemmascope import assets

        return Path(assets.CORPUS_PATH)
    except (ImportError, AttributeError):
        return Path(__file__).resolve().parent.parent / "assets" / "tinyshakespeare.txt"


def _local_path(corpus: str) -> Path | None:
    """The local file a corpus names, or None for a hub name."""
    if corpus == EMBEDDED:
        return embedded_corpus_path()
    path = Path(os.path.expanduser(corpus))
    suffix = path.suffix.lower()
    if suffix in _BUILDER_BY_SUFFIX or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {str(path)!r} does not exist")
        if suffix not in _BUILDER_BY_SUFFIX:
            raise ValueError(
                f"corpus file {str(path)!r} has an unsupported type {suffix!r}; valid: "
                f"{sorted(_BUILDER_BY_SUFFIX)} (or 'embedded', or a hub dataset name)"
            )
        return path
    return None


def _check_config(cfg) -> None:
    if not isinstance(cfg.corpus, str) or not cfg.corpus:
        raise ValueError(f"data.corpus must be a non-empty string, got {cfg.corpus!r}")
    if cfg.documents not in _TEXT_DOCUMENTS:
        raise ValueError(f"data.documents must be one of {_TEXT_DOCUMENTS}, got {cfg.documents!r}")
    if not isinstance(cfg.tokenize_batch_size, int) or cfg.tokenize_batch_size < 1:
        raise ValueError(
            f"data.tokenize_batch_size must be a positive integer, got {cfg.tokenize_batch_size!r}"
        )


def documents(cfg) -> Iterator[str]:
    """Yields the corpus's non-blank documents in corpus order.

    Raises:
      FileNotFoundError: if a local corpus file does not exist.
      ValueError: on an unsupported file type, a bad `documents` mode, or rows lacking
        `text_field`.
    """
    import datasets  # heavy import, only when reading a corpus

    _check_config(cfg)
    path = _local_path(cfg.corpus)
    if path is None:
        stream = datasets.load_dataset(
            cfg.corpus, cfg.hub_config, split=cfg.hub_split, streaming=True
        )
        field = cfg.text_field
    else:
        builder = _BUILDER_BY_SUFFIX[path.suffix.lower()]
        kwargs = {}
        field = cfg.text_field
        if builder == "text":
            sample_by = {"paragraph": "paragraph", "line": "line", "file": "document"}
            kwargs = {"sample_by": sample_by[cfg.documents]}
            field = "text"
        stream = datasets.load_dataset(
            builder, data_files=str(path), split="train", streaming=True, **kwargs
        )
    for i, row in enumerate(stream):
        if field not in row:
            raise ValueError(
                f"document {i} of {cfg.corpus!r} has no field {field!r} (data.text_field); "
                f"its fields are {sorted(row)}"
            )
        text = row[field]
        if not isinstance(text, str):
            raise ValueError(f"document {i} field {field!r} is {type(text).__name__}, not text")
        if text.strip():
            yield text


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def identity(cfg) -> dict:
    """A JSON-able description of the corpus: the config plus a content hash of local files."""
    _check_config(cfg)
    # The tokenizer batch size changes nothing in the output, so it is not part of the identity.
    described = {key: cfg[key] for key in sorted(cfg.keys()) if key != "tokenize_batch_size"}
    path = _local_path(cfg.corpus)
    if path is not None:
        described["file_sha256"] = _file_sha256(path)
        described["file_bytes"] = path.stat().st_size
    return described
