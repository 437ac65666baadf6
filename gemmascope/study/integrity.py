"""Cheap checks that a file is whole: npz archives, safetensors weights, JSON files.

Synopsis:
    from gemmascope.study import integrity
    integrity.npz_problem("runs/job/final_params.npz")    # None, or what is wrong with it
    integrity.npz_member_shape(path, "W_enc")              # (2304, 16384), read from its header
    integrity.safetensors_problems("gemma-2-2b")          # ["model.safetensors: truncated ..."]
    integrity.json_problem("model/config.json")           # None, or "not valid JSON (...)"

None of them reads a file's data: a truncated file is found from its own size records (a zip's
central directory and member sizes, a safetensors header's tensor offsets), so they run before
every stage on files of any size. Local paths and gs:// URLs (through `gemmascope.files`).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zipfile

import numpy as np
from etils import epath

from gemmascope import files

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_SINGLE = "model.safetensors"


@contextlib.contextmanager
def _open(path: str):
    """A seekable binary file object for a local path or a URL."""
    if files.is_url(path):
        with epath.Path(path).open("rb") as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


def npz_problem(path: str) -> str | None:
    """What makes the .npz at `path` incomplete, or None if it is a whole archive.

    Reads the zip's central directory (at the end of the file: a truncated file has none) and
    checks every member's recorded extent lies inside the file.
    """
    try:
        with _open(path) as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                members = archive.infolist()
    except FileNotFoundError:
        return "the file does not exist"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        return f"not a complete .npz archive ({error}; {size_of(path)} bytes)"
    if not members:
        return "an empty archive"
    for member in members:
        if member.header_offset + member.compress_size > size:
            return f"member {member.filename} runs past the end of the file ({size} bytes)"
    return None


def size_of(path: str) -> int | str:
    """The size of a file in bytes, or '?' when it cannot be read."""
    try:
        if files.is_url(path):
            with _open(path) as f:
                return f.seek(0, os.SEEK_END)
        return os.path.getsize(path)
    except OSError:
        return "?"


def npz_member_shape(path: str, *names: str) -> tuple[int, ...]:
    """The shape of the first present array of `names` in the .npz at `path`, from its header.

    Raises:
        ValueError: Not an .npz, or none of `names` in it (the message names the file).
    """
    try:
        with _open(path) as f, zipfile.ZipFile(f) as archive:
            present = [n + ".npy" for n in names if n + ".npy" in archive.namelist()]
            if not present:
                found = sorted(n.removesuffix(".npy") for n in archive.namelist())
                raise ValueError(f"{path} has no array {' or '.join(names)} (it has {found})")
            with archive.open(present[0]) as npy:
                version = np.lib.format.read_magic(npy)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read_header(npy)
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npz file ({error})") from None
    return tuple(int(n) for n in shape)


def json_problem(path: str) -> str | None:
    """What makes the JSON file at `path` unreadable, or None."""
    try:
        json.loads(files.read_bytes(path))
    except FileNotFoundError:
        return "the file does not exist"
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"not valid JSON ({error})"
    return None


def _safetensors_problem(path: str) -> str | None:
    """What makes one safetensors file incomplete (by its header), or None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if 8 + header_len > size:
                return f"truncated: {size} bytes, shorter than its own header"
            header = json.loads(f.read(header_len))
    except FileNotFoundError:
        return "the file does not exist"
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"not a readable safetensors file ({error})"
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        return f"truncated: {size} bytes, its header describes {expected}"
    return None


def safetensors_problems(folder: str) -> list[str]:
    """'<file>: <problem>' for each damaged weights file of an HF model folder (local)."""
    index = os.path.join(folder, _SAFETENSORS_INDEX)
    if os.path.isfile(index):
        problem = json_problem(index)
        if problem:
            return [f"{index}: {problem}"]
        weight_map = json.loads(files.read_bytes(index)).get("weight_map") or {}
        names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    else:
        names = [_SAFETENSORS_SINGLE]
    problems = []
    for name in names:
        path = os.path.join(folder, name)
        problem = _safetensors_problem(path)
        if problem:
            problems.append(f"{path}: {problem}")
    return problems
