"""Text corpora as a stream of documents, read with `datasets`, and their configuration.

    cfg = data.default_config()              # corpus="embedded": the bundled Tiny Shakespeare
    for text in documents(cfg): ...          # one string per document, in corpus order
    n_chars, located = located_documents(cfg)   # (start character, document) pairs
    identity(cfg)                            # JSON-able description used in cache fingerprints

What a document is:
- a plain text file (.txt): by default one paragraph (text between blank lines; in Tiny
  Shakespeare one speech), or one line, or the whole file (`cfg.documents`);
- a .json / .jsonl / .parquet file or a hub dataset: one row, its text in `cfg.text_field`.

`located_documents(cfg)` also gives where each document starts, in characters, for the "tail"
eval split. The chat-turn fields (`chat_wrap`, ...) are documented in `gemmascope.data.chat`.

Everything is read with `datasets.load_dataset(..., streaming=True)`, so nothing is copied into
the datasets cache and a hub corpus is only read as far as the requested number of sequences.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import ml_collections

from gemmascope.data import chat

EMBEDDED = "embedded"
_BUILDER_BY_SUFFIX = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_TEXT_DOCUMENTS = ("paragraph", "line", "file")
EVAL_SPLITS = ("random", "tail")


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
    # How the eval split is chosen: "random" (documents drawn by seed) or "tail" (the documents
    # that start in the last eval_fraction of the corpus's characters; local files only).
    cfg.eval_split = "random"
    # Fraction held out for evaluation: of documents ("random") or of characters ("tail").
    cfg.eval_fraction = 0.05
    # If set, the eval split is exactly this many sequences (error if the held-out docs are short).
    cfg.n_eval_sequences = ml_collections.config_dict.placeholder(int)
    # If set, the train split stops after this many sequences (reads only as much corpus as needed).
    cfg.max_sequences = ml_collections.config_dict.placeholder(int)
    # Seed of the train/eval document assignment.
    cfg.seed = 0
    # Documents per tokenizer call.
    cfg.tokenize_batch_size = 256
    # Wrap every document as one chat turn, chat_user_prefix + document + chat_model_prefix, and
    # leave the user-prefix tokens out of SAE training and evaluation (IT SAEs, GS §4.5).
    cfg.chat_wrap = False
    # The user-turn prefix (Gemma 2's chat template); must be non-empty when chat_wrap is on.
    cfg.chat_user_prefix = chat.GEMMA_USER_PREFIX
    # The model-turn prefix put after the document (trained on, like the document).
    cfg.chat_model_prefix = chat.GEMMA_MODEL_PREFIX
    return cfg


def embedded_corpus_path() -> Path:
    """Path of the bundled Tiny Shakespeare text."""
    try:
        from gemmascope import assets

        return Path(assets.CORPUS_PATH)
    except (ImportError, AttributeError):
        return Path(__file__).resolve().parent.parent / "assets" / "tinyshakespeare.txt"


def local_file(corpus: str) -> Path | None:
    """The local file a corpus names, or None for a hub name.

    Raises:
      FileNotFoundError: a path with a corpus suffix (.txt, .json, .jsonl, .parquet) that is
        not a file.
      ValueError: an existing file of an unsupported type.
    """
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


def check_config(cfg) -> None:
    """Raises ValueError naming the first invalid corpus field (corpus, documents, chat...)."""
    if not isinstance(cfg.corpus, str) or not cfg.corpus:
        raise ValueError(f"data.corpus must be a non-empty string, got {cfg.corpus!r}")
    if cfg.documents not in _TEXT_DOCUMENTS:
        raise ValueError(f"data.documents must be one of {_TEXT_DOCUMENTS}, got {cfg.documents!r}")
    if not isinstance(cfg.tokenize_batch_size, int) or cfg.tokenize_batch_size < 1:
        raise ValueError(
            f"data.tokenize_batch_size must be a positive integer, got {cfg.tokenize_batch_size!r}"
        )
    if cfg.eval_split not in EVAL_SPLITS:
        raise ValueError(f"data.eval_split must be one of {EVAL_SPLITS}, got {cfg.eval_split!r}")
    chat.check_config(cfg)


def documents(cfg) -> Iterator[str]:
    """Yields the corpus's non-blank documents in corpus order.

    Raises:
      FileNotFoundError: if a local corpus file does not exist.
      ValueError: on an unsupported file type, a bad `documents` mode, or rows lacking
        `text_field`.
    """
    import datasets  # heavy import, only when reading a corpus

    check_config(cfg)
    path = local_file(cfg.corpus)
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


def located_documents(cfg) -> tuple[int, Iterator[tuple[int, str]]]:
    """The corpus's length in characters and its documents with the character where each starts.

    For a .txt file the characters are the file's (read as text, universal newlines, as
    `documents` reads it); for a .json / .jsonl / .parquet file, those of its documents laid end
    to end. Used by the "tail" eval split, which cuts the corpus at a fraction of its characters.

    Returns:
      (n_chars, iterator of (start, document) in corpus order).

    Raises:
      ValueError: for a hub corpus (its length is unknown without reading all of it).
    """
    path = local_file(cfg.corpus)
    if path is None:
        raise ValueError(
            f"data.eval_split='tail' needs a local corpus file, got the hub dataset "
            f"{cfg.corpus!r}: download it to a .jsonl/.parquet file, or use eval_split='random'"
        )
    if path.suffix.lower() == ".txt":
        text = path.read_text(encoding="utf-8")

        def in_file() -> Iterator[tuple[int, str]]:
            searched = 0
            for doc in documents(cfg):
                start = text.find(doc, searched)  # documents are disjoint pieces, in file order
                yield start, doc
                searched = start + len(doc)

        return len(text), in_file()

    def end_to_end() -> Iterator[tuple[int, str]]:
        start = 0
        for doc in documents(cfg):
            yield start, doc
            start += len(doc)

    return sum(len(doc) for doc in documents(cfg)), end_to_end()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def identity(cfg) -> dict:
    """A JSON-able description of the corpus: the config plus a content hash of local files."""
    check_config(cfg)
    # Fields that change nothing in the output are not part of the identity: the tokenizer batch
    # size, and the chat prefixes while chat_wrap is off.
    unused = {"tokenize_batch_size"}
    if not cfg.chat_wrap:
        unused |= {"chat_user_prefix", "chat_model_prefix"}
    described = {key: cfg[key] for key in sorted(cfg.keys()) if key not in unused}
    path = local_file(cfg.corpus)
    if path is not None:
        described["file_sha256"] = _file_sha256(path)
        described["file_bytes"] = path.stat().st_size
    return described
