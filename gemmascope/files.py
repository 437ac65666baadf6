"""The workdir's small files (JSON, npz, tables, plots) on a local disk or in a GCS bucket.

Synopsis:
    from gemmascope import files
    path = files.join(workdir, "runs", job, "job.json")   # "gs://bucket/study/runs/..." or local
    files.write_json(path, {"steps": 10})                 # atomic
    files.read_json(path); files.exists(path); files.listdir(files.join(workdir, "runs"))
    files.write_bytes(path, payload)                      # atomic
    files.save_npz(path, {"w": w}); files.load_npz(path)  # numpy arrays, never pickle
    files.remove(path)                                    # a missing file is not an error
    files.default_file_mode()                             # 0o644 with umask 022

A path is a string: a local path, or a URL with a scheme (`gs://bucket/prefix`). URLs go through
`etils.epath`, the file layer orbax already uses for its checkpoints (it reaches GCS through gcsfs),
while the activation arrays go through tensorstore's own GCS driver; so one `--workdir` URL holds
the whole study. Paths are joined as strings, never with `pathlib` (which would turn `gs://b` into
`gs:/b`).

Atomic writes: a local file is written to a temporary sibling, flushed to disk and moved into
place with `os.replace`; an object-store object is uploaded in one request, and GCS makes an
object visible only once its upload has finished. Either way a reader, or a rerun after a kill,
sees the old contents or the whole new ones, never part of a file. A local file gets the mode a
plain `open()` would give it (0666 less the user's umask: readable by colleagues on shared
storage), not the 0600 of its temporary file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping

import numpy as np
from etils import epath


def is_url(path: str) -> bool:
    """True for object-store URLs such as `gs://bucket/prefix` (anything with a scheme)."""
    return "://" in os.fspath(path)


def join(path: str, *parts: str) -> str:
    """Joins path components with '/', keeping a URL's `scheme://` intact."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.join(path, *parts)
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])


def _epath(path: str) -> epath.Path:
    return epath.Path(os.fspath(path))


def exists(path: str) -> bool:
    """True if a file or directory (for object stores: any object under the prefix) exists."""
    if not is_url(path):
        return os.path.exists(path)
    return _epath(path).exists()


def isdir(path: str) -> bool:
    """True if `path` is a directory (for object stores: a prefix holding objects)."""
    if not is_url(path):
        return os.path.isdir(path)
    return _epath(path).is_dir()


def listdir(path: str) -> list[str]:
    """The sorted names directly under a directory, or [] if it does not exist."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    folder = _epath(path)
    return sorted(child.name for child in folder.iterdir()) if folder.is_dir() else []


def makedirs(path: str) -> None:
    """Creates a local directory and its parents (object stores have no directories: a no-op)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
    """The contents of a file.

    Raises:
      FileNotFoundError: if there is no such file.
    """
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    target = _epath(path)
    if not target.exists():
        raise FileNotFoundError(f"no such object: {path}")
    return target.read_bytes()


def read_text(path: str) -> str:
    """The contents of a UTF-8 text file (FileNotFoundError if missing)."""
    return read_bytes(path).decode("utf-8")


def read_json(path: str):
    """The parsed contents of a JSON file (FileNotFoundError if missing)."""
    return json.loads(read_bytes(path))


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the umask (0644 with umask 022)."""
    return 0o666 & ~current_umask()


def remove(path: str) -> None:
    """Deletes a file or object; one that does not exist is not an error."""
    if is_url(path):
        target = _epath(path)
        if target.exists():
            target.unlink()
    elif os.path.exists(path):
        os.remove(path)


def write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to `path` atomically, creating local parent directories."""
    if is_url(path):
        _epath(path).write_bytes(payload)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; the file follows the umask
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    """Writes UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj, **dumps_kwargs) -> None:
    """Writes `obj` as indented JSON (trailing newline) atomically; kwargs go to json.dumps."""
    dumps_kwargs.setdefault("indent", 2)
    write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes numpy arrays as an uncompressed .npz atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Reads every array of an .npz file, refusing pickled objects (FileNotFoundError if missing).

    Raises:
      ValueError: if the file is not a valid npz or holds object arrays (which need pickle).
    """
    payload = read_bytes(path)
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
        raise ValueError(f"{path} is not a readable numpy .npz file without pickle: {e}") from e
