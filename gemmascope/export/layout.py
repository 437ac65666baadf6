"""Where exported SAEs live in a workdir, and how their folders are named (docs/concepts.md).

Every SAE, trained here or released by Gemma Scope, is one folder::

    workdir/saes/<kind>/layer_<L>/width_<W>/<arch>_<tag>/params.npz + config.json

``<W>`` is Gemma Scope's width label (16384 -> ``16k``, 65536 -> ``65k``, 2**20 -> ``1m``) and
``<tag>`` names the sweep setting (``lambda_6e-04``, ``k_32``) or, for a released SAE, its
Gemma Scope folder name (``average_l0_71``).

Synopsis::

    width_label(16384)                       # "16k"
    sweep_tag("sparsity_coeff", 6e-4)        # "lambda_6e-04"
    sae_dir(workdir, "resid_post/12", 16384, "jumprelu", "lambda_6e-04")
    for folder, config in list_saes(workdir): ...
"""

from __future__ import annotations

import re
from typing import Any

from gemmascope import files

#: Name of the per-SAE metadata file beside ``params.npz``.
CONFIG_FILE = "config.json"
#: Name of the weights file (Gemma Scope format).
PARAMS_FILE = "params.npz"
#: Version string stored in every config.json we write.
CONFIG_FORMAT = "gemmascope-sae/1"

# How a sweep field is spelled in folder names: lambda like Gemma Scope's λ.
_FIELD_LABELS = {"sparsity_coeff": "lambda", "k": "k", "target_l0": "l0"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def width_label(width: int) -> str:
    """Gemma Scope's label for a dictionary width: 16384 -> "16k", 65536 -> "65k", 2**20 -> "1m".

    Widths are truncated to whole thousands or millions (Gemma Scope writes 2**16 as 65k);
    widths below 1000 are written in full.

    Raises:
      ValueError: ``width`` is not a positive integer.
    """
    if isinstance(width, bool) or int(width) != width or width <= 0:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    width = int(width)
    if width >= 1_000_000:
        return f"{width // 1_000_000}m"
    if width >= 1000:
        return f"{width // 1000}k"
    return str(width)


def format_sweep_value(value: float | int) -> str:
    """Short, exact text for a sweep value: 32 -> "32", 6e-4 -> "6e-04", 6.5e-4 -> "6.5e-04"."""
    if isinstance(value, bool):
        raise ValueError(f"sweep value must be a number, got {value!r}")
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    for digits in range(0, 10):
        text = f"{value:.{digits}e}"
        if float(text) == float(value):
            return text
    return repr(float(value))


def sweep_tag(sweep_field: str, value: float | int) -> str:
    """Folder tag for one sweep member, e.g. ("sparsity_coeff", 6e-4) -> "lambda_6e-04"."""
    label = _FIELD_LABELS.get(sweep_field, sweep_field)
    return f"{label}_{format_sweep_value(value)}"


def check_name(name: str, what: str) -> str:
    """Returns ``name`` if it is safe as one path component, else raises a ValueError."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(
            f"{what} {name!r} is not a valid folder name: use letters, digits and _ . + - "
            "(starting with a letter or digit)"
        )
    return name


def split_site(site: str) -> tuple[str, int]:
    """Parses ``"<kind>/<layer>"`` without needing a model config."""
    parts = site.split("/") if isinstance(site, str) else []
    if len(parts) != 2 or not parts[1].isdigit() or not parts[0]:
        raise ValueError(f"site {site!r} must look like '<kind>/<layer>', e.g. 'resid_post/12'")
    return parts[0], int(parts[1])


def sae_dir(workdir: str, site: str, width: int, arch: str, tag: str) -> str:
    """Path of one SAE's folder: ``workdir/saes/<kind>/layer_<L>/width_<W>/<arch>_<tag>``."""
    kind, layer = split_site(site)
    name = f"{check_name(arch, 'architecture')}_{check_name(tag, 'tag')}"
    return files.join(workdir, "saes", kind, f"layer_{layer}", f"width_{width_label(width)}", name)


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented, key-sorted JSON to ``path`` atomically (local or gs://)."""
    files.write_json(path, obj, sort_keys=True)


def read_config(folder: str) -> dict:
    """Reads and checks one SAE folder's ``config.json``."""
    path = files.join(folder, CONFIG_FILE)
    config = files.read_json(path)
    required = (
        "site",
        "kind",
        "layer",
        "d_in",
        "width",
        "architecture",
        "source",
        "encoder",
        "sweep_field",
        "sweep_value",
        "tokens_trained",
        "model",
    )
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}; required: {list(required)}")
    return config


def list_saes(workdir: str) -> list[tuple[str, dict]]:
    """All exported SAE folders under ``workdir/saes`` as sorted ``(folder, config)`` pairs.

    A folder counts when it holds both ``params.npz`` and ``config.json``.
    """
    found = []
    pending = [files.join(workdir, "saes")]
    while pending:  # a walk that works on object stores too (os.walk is local only)
        folder = pending.pop()
        names = files.listdir(folder)
        if PARAMS_FILE in names and CONFIG_FILE in names:
            found.append((folder, read_config(folder)))
        pending += [files.join(folder, n) for n in names if files.isdir(files.join(folder, n))]
    return sorted(found, key=lambda item: item[0])
