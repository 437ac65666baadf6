"""Hugging Face checkpoint folders: load (without torch, streaming, sharded) and save.

Synopsis:
    cfg, params = load_hf(path, dtype=jnp.bfloat16)                 # single or sharded safetensors
    cfg, params = load_hf(path, mesh=mesh, rules=DEFAULT_RULES)      # each tensor placed sharded
    save_hf(cfg, params, path)                     # config.json + model.safetensors, HF layout
    tokenizer = load_tokenizer(path)               # transformers.AutoTokenizer
    cfg, params, tokenizer = load_from_config(model_cfg)   # model_cfg.path ("embedded" ok), .dtype

Loading reads ``config.json`` and either ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``. Before any tensor data is read, every tensor name and shape in
the checkpoint is checked against the config; one error lists everything missing, unexpected or
misshaped. Tensors are then read one at a time with ``safetensors.safe_open`` (numpy framework;
bf16 arrives as ``ml_dtypes.bfloat16``), converted to our layout, cast, and placed on devices
(with its ``NamedSharding`` when a mesh is given, via ``jax.make_array_from_callback``) before the
next is read, so host memory holds at most one tensor, never a second copy of the model.
A ``lm_head.weight`` tensor is tolerated and ignored, since Gemma 2 ties it to the embedding.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from gemmascope.model.config import Gemma2Config
from gemmascope.model.params import (
    Params,
    Rules,
    build_tree,
    get_leaf,
    param_shardings,
    param_specs,
)

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_TIED_HEAD = "lm_head.weight"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_MAX_LISTED = 12


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def read_config(path: str | os.PathLike) -> Gemma2Config:
    """Reads ``config.json`` from an HF model folder.

    Raises:
        FileNotFoundError: If the folder or its config.json does not exist.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {str(folder)!r} does not exist.")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in model folder {str(folder)!r}: an HF Gemma 2 folder needs "
            f"{CONFIG_FILE} and {SINGLE_FILE} (or {INDEX_FILE} with its shards)."
        )
    return Gemma2Config.from_hf_dict(json.loads(config_path.read_text()))


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Maps each tensor name in the checkpoint to the safetensors file holding it."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path} has no 'weight_map' dict.")
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="numpy") as f:
            return dict.fromkeys(f.keys(), single)
    present = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(
        f"No {SINGLE_FILE} or {INDEX_FILE} in {str(folder)!r} (found {present}); only safetensors "
        "checkpoints are supported."
    )


def _checkpoint_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    """Reads every tensor's shape from the safetensors headers (no tensor data)."""
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        if not file.is_file():
            raise FileNotFoundError(f"Checkpoint shard {str(file)!r} (from the index) is missing.")
        with safe_open(file, framework="numpy") as f:
            present = set(f.keys())
            absent = sorted(set(names) - present)
            if absent:
                raise ValueError(
                    f"The index lists tensors that shard {file.name} does not contain: "
                    f"{_listing(absent)}."
                )
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _check_tensors(cfg: Gemma2Config, shapes: dict[str, tuple[int, ...]], folder: Path) -> None:
    expected = {spec.hf_name: spec.hf_shape for spec in param_specs(cfg)}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected) - {_TIED_HEAD})
    misshaped = sorted(
        f"{name} has shape {list(shapes[name])}, expected {list(expected[name])}"
        for name in set(expected) & set(shapes)
        if shapes[name] != expected[name]
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"misshaped tensors: {_listing(misshaped)}")
    if problems:
        raise ValueError(
            f"Checkpoint {str(folder)!r} does not match its config.json ({cfg.num_hidden_layers} "
            f"layers, d_model {cfg.hidden_size}): " + "; ".join(problems) + "."
        )


def _place(array: np.ndarray, sharding: Any) -> jax.Array:
    if sharding is None:
        return jax.device_put(array)
    # Each device receives only its slice; the full host array is dropped right after.
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def load_hf(
    path: str | os.PathLike,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    shardings: Params | None = None,
) -> tuple[Gemma2Config, Params]:
    """Loads an HF Gemma 2 folder into (config, params) without torch.

    Args:
        path: Folder with ``config.json`` and ``model.safetensors`` or a sharded checkpoint
            (``model.safetensors.index.json`` plus its shards).
        dtype: Parameter dtype (jnp.float32 or jnp.bfloat16); checkpoint tensors are cast.
        mesh: If given, each tensor is placed directly with ``param_shardings(cfg, mesh, rules)``.
        rules: Logical-axis rules for ``mesh`` (default ``params.DEFAULT_RULES``).
        shardings: An explicit pytree of shardings (overrides mesh/rules).

    Returns:
        (cfg, params).

    Raises:
        FileNotFoundError: No folder, no config.json, or no safetensors weights.
        ValueError: Missing, unexpected or misshaped tensors (all listed), or a config feature
            this implementation does not support.
    """
    folder = Path(path)
    target_dtype = jnp.dtype(dtype)  # bfloat16 is ml_dtypes.bfloat16, which numpy can cast to
    if not jnp.issubdtype(target_dtype, jnp.floating):
        raise ValueError(f"dtype must be a float dtype (float32 or bfloat16), got {target_dtype}.")
    cfg = read_config(folder)
    files = _tensor_files(folder)
    _check_tensors(cfg, _checkpoint_shapes(files), folder)
    if shardings is None and mesh is not None:
        shardings = param_shardings(cfg, mesh, rules)

    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}

        def read(spec) -> jax.Array:
            file = files[spec.hf_name]
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(file, framework="numpy"))
            host = spec.from_hf(handles[file].get_tensor(spec.hf_name)).astype(target_dtype)
            return _place(host, None if shardings is None else get_leaf(shardings, spec.path))

        params = build_tree(cfg, read)
    return cfg, params


def _atomic_write(target: Path, write: Any) -> None:
    """Writes via ``write(tmp_path)`` to a temp file in the same folder, then renames."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_hf(cfg: Gemma2Config, params: Params, path: str | os.PathLike) -> None:
    """Writes an HF folder (``config.json`` + ``model.safetensors``) transformers can load.

    Tensors keep the params' dtype (fp32 or bf16). Each file is written atomically.

    Args:
        cfg: The model config.
        params: The params pytree (may be sharded; each tensor is gathered to host).
        path: Target folder (created if needed).
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    dtypes = set()
    for spec in param_specs(cfg):
        host = np.asarray(jax.device_get(get_leaf(params, spec.path)))
        if host.shape != spec.shape:
            raise ValueError(
                f"params{list(spec.path)} has shape {host.shape}, expected {spec.shape} for this "
                "config."
            )
        tensors[spec.hf_name] = spec.to_hf(host)
        dtypes.add(host.dtype.name)
    hf = cfg.to_hf_dict()
    hf["dtype"] = "bfloat16" if dtypes == {"bfloat16"} else "float32"
    _atomic_write(
        folder / SINGLE_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    _atomic_write(
        folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(hf, indent=2) + "\n")
    )


def load_tokenizer(path: str | os.PathLike) -> Any:
    """``transformers.AutoTokenizer`` from an HF model folder (offline, local files only).

    Raises:
        FileNotFoundError: If the folder does not exist or has no tokenizer files.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {str(folder)!r} does not exist.")
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if not any((folder / name).is_file() for name in tokenizer_files):
        raise FileNotFoundError(
            f"No tokenizer in {str(folder)!r}: expected one of {list(tokenizer_files)}."
        )
    import transformers  # Heavy import, only needed here.

    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def resolve_path(path: str) -> str:
    """Maps ``"embedded"`` to the shipped tiny model's folder; other paths pass through."""
    if path == "embedded":
        from gemmascope import assets  # Lazy: the package data is only needed on request.

        return str(assets.TINY_MODEL_DIR)
    return path


def load_from_config(model_cfg: Mapping[str, Any] | Any, mesh: Mesh | None = None):
    """Loads (cfg, params, tokenizer) from a study config's ``model`` section.

    Args:
        model_cfg: ConfigDict or mapping with ``path`` (an HF folder or ``"embedded"``) and
            ``dtype`` (``"float32"`` or ``"bfloat16"``; default float32).
        mesh: Optional mesh to place the params on (default rules).

    Returns:
        (cfg, params, tokenizer).

    Raises:
        ValueError: On an unknown dtype name.
    """
    get = model_cfg.get if hasattr(model_cfg, "get") else lambda k, d=None: getattr(model_cfg, k, d)
    dtype_name = get("dtype", "float32") or "float32"
    if dtype_name not in _DTYPES:
        raise ValueError(f"model.dtype {dtype_name!r} is not supported; valid: {sorted(_DTYPES)}.")
    path = get("path", None)
    if not path:
        raise ValueError("model.path is required (an HF Gemma 2 folder or 'embedded').")
    path = resolve_path(path)
    cfg, params = load_hf(path, dtype=_DTYPES[dtype_name], mesh=mesh)
    return cfg, params, load_tokenizer(path)
