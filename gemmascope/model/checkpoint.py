"""Hugging Face checkpoint folders: load (without torch, streaming, sharded) and save.

Synopsis:
    cfg, params = load_hf(path, dtype=jnp.bfloat16)                 # single or sharded safetensors
    cfg, params = load_hf(path, mesh=mesh, rules=DEFAULT_RULES)      # each tensor placed sharded
    save_hf(cfg, params, path)                     # config.json + model.safetensors, HF layout
    tokenizer = load_tokenizer(path)               # transformers.AutoTokenizer
    check_tokenizer(cfg, tokenizer)                # every token id has an embedding row
    cfg, params, tokenizer = load_from_config(model_cfg)   # model_cfg.path ("embedded" ok), .dtype

Folders: Gemma 2 (``Gemma2ForCausalLM``, model_type ``gemma2``), text-only Gemma 3
(``Gemma3ForCausalLM``, ``gemma3_text``: 270M, 1B) and multimodal Gemma 3
(``Gemma3ForConditionalGeneration``, ``gemma3``: 4B, 12B, 27B). Of a multimodal checkpoint only
the language model is read: its config is ``text_config`` and its tensors are those under
``language_model.model.`` (the released files, and what transformers 5.x's ``save_pretrained``
writes) or ``model.language_model.`` (transformers 4.52-4.5x); the vision tower and the
multimodal projector are skipped, and the log says how many tensors that was.

Loading reads ``config.json`` and either ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``. Before any tensor data is read, every tensor name and shape in
the checkpoint is checked against the config; one error lists everything missing, unexpected or
misshaped. A file whose safetensors header cannot be read (damaged, truncated, not safetensors)
is a ``ValueError`` naming the file. Tensors are then read one at a time with
``safetensors.safe_open`` (numpy framework; bf16 arrives as ``ml_dtypes.bfloat16``), converted to
our layout, cast, and placed on devices (with its ``NamedSharding`` when a mesh is given, via
``jax.make_array_from_callback``) before the next is read, so host memory holds at most one
tensor, never a second copy of the model. An ``lm_head.weight`` tensor is tolerated and ignored,
since Gemma ties it to the embedding.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from gemmascope import files as gs_files
from gemmascope.model.config import GemmaConfig
from gemmascope.model.hf_config import config_from_hf_dict, is_multimodal
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
# Tied to the embedding, so ignored when present (text-only, and legacy multimodal layout).
_TIED_HEADS = frozenset({"lm_head.weight", "language_model.lm_head.weight"})
# Our params table names tensors as a text-only checkpoint does ("model.layers.0...").
_TEXT_PREFIX = "model."
# Where a multimodal Gemma 3 checkpoint keeps its language model, in the order tried.
_MULTIMODAL_PREFIXES = ("language_model.model.", "model.language_model.")
# The parts of a multimodal checkpoint that are not the language model; skipped on loading.
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_MAX_LISTED = 12


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {str(folder)!r} does not exist.")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in model folder {str(folder)!r}: an HF Gemma folder needs "
            f"{CONFIG_FILE} and {SINGLE_FILE} (or {INDEX_FILE} with its shards)."
        )
    return json.loads(config_path.read_text())


def read_config(path: str | os.PathLike) -> GemmaConfig:
    """Reads ``config.json`` from an HF model folder (Gemma 2, or Gemma 3 text-only/multimodal).

    Raises:
        FileNotFoundError: If the folder or its config.json does not exist.
        ValueError: An unsupported model_type or feature (``hf_config.config_from_hf_dict``).
    """
    return config_from_hf_dict(_read_config_json(path))


@contextlib.contextmanager
def _open_safetensors(file: Path):
    """``safe_open`` whose header errors name the file (damaged, truncated, not safetensors)."""
    try:
        handle = safe_open(file, framework="numpy")
    except SafetensorError as error:
        raise ValueError(
            f"Checkpoint file {str(file)!r} is damaged or truncated, or not a safetensors file "
            f"({error}); download or convert it again."
        ) from None
    with handle as f:
        yield f


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
        with _open_safetensors(single) as f:
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
        with _open_safetensors(file) as f:
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


def _checkpoint_names(
    cfg: GemmaConfig, names: set[str], multimodal: bool, folder: Path
) -> dict[str, str]:
    """Maps each param's text-only HF name to its name in this checkpoint."""
    prefix = _TEXT_PREFIX
    if multimodal:
        found = [p for p in _MULTIMODAL_PREFIXES if f"{p}embed_tokens.weight" in names]
        if not found:
            raise ValueError(
                f"Checkpoint {str(folder)!r} is a multimodal Gemma 3 (config.json model_type "
                f"'gemma3') but has no language model tensors: expected names starting with one "
                f"of {list(_MULTIMODAL_PREFIXES)} (e.g. '{_MULTIMODAL_PREFIXES[0]}embed_tokens."
                f"weight'); found {_listing(sorted(names))}."
            )
        prefix = found[0]
    return {spec.hf_name: prefix + spec.hf_name[len(_TEXT_PREFIX) :] for spec in param_specs(cfg)}


def _check_tensors(
    cfg: GemmaConfig,
    shapes: dict[str, tuple[int, ...]],
    names: dict[str, str],
    multimodal: bool,
    folder: Path,
) -> None:
    expected = {names[spec.hf_name]: spec.hf_shape for spec in param_specs(cfg)}
    skipped = {name for name in shapes if multimodal and name.startswith(_VISION_PREFIXES)}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected) - _TIED_HEADS - skipped)
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
            f"Checkpoint {str(folder)!r} does not match its config.json ({cfg.family}, "
            f"{cfg.num_hidden_layers} layers, d_model {cfg.hidden_size}): "
            + "; ".join(problems)
            + "."
        )
    if multimodal:
        logging.info(
            "%s is a multimodal Gemma 3: loading its language model only; skipped %d vision "
            "tower and projector tensors",
            folder,
            len(skipped),
        )


def _inspect(folder: Path) -> tuple[GemmaConfig, dict[str, Path], dict[str, str]]:
    """(config, tensor name -> file, param HF name -> checkpoint name), every tensor checked."""
    hf_config = _read_config_json(folder)
    cfg = config_from_hf_dict(hf_config)
    multimodal = is_multimodal(hf_config)
    files = _tensor_files(folder)
    shapes = _checkpoint_shapes(files)
    names = _checkpoint_names(cfg, set(shapes), multimodal, folder)
    _check_tensors(cfg, shapes, names, multimodal, folder)
    return cfg, files, names


def check_hf_folder(path: str | os.PathLike) -> GemmaConfig:
    """Checks an HF folder loads, without reading tensor data; returns its config.

    Reads ``config.json`` and the safetensors headers and checks every tensor name and shape
    against the config, exactly as ``load_hf`` does before it reads anything.

    Raises:
        FileNotFoundError, ValueError: As ``load_hf``.
    """
    return _inspect(Path(path))[0]


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
) -> tuple[GemmaConfig, Params]:
    """Loads an HF Gemma 2 or Gemma 3 folder into (config, params) without torch.

    Args:
        path: Folder with ``config.json`` and ``model.safetensors`` or a sharded checkpoint
            (``model.safetensors.index.json`` plus its shards). A multimodal Gemma 3 folder
            gives its language model.
        dtype: Parameter dtype (jnp.float32 or jnp.bfloat16); checkpoint tensors are cast.
        mesh: If given, each tensor is placed directly with ``param_shardings(cfg, mesh, rules)``.
        rules: Logical-axis rules for ``mesh`` (default ``params.DEFAULT_RULES``).
        shardings: An explicit pytree of shardings (overrides mesh/rules).

    Returns:
        (cfg, params).

    Raises:
        FileNotFoundError: No folder, no config.json, or no safetensors weights.
        ValueError: Missing, unexpected or misshaped tensors (all listed), a damaged or
            truncated safetensors file (named), an unsupported model_type, or a config feature
            this implementation does not support.
    """
    folder = Path(path)
    target_dtype = jnp.dtype(dtype)  # bfloat16 is ml_dtypes.bfloat16, which numpy can cast to
    if not jnp.issubdtype(target_dtype, jnp.floating):
        raise ValueError(f"dtype must be a float dtype (float32 or bfloat16), got {target_dtype}.")
    cfg, files, names = _inspect(folder)
    if shardings is None and mesh is not None:
        shardings = param_shardings(cfg, mesh, rules)

    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}

        def read(spec) -> jax.Array:
            name = names[spec.hf_name]
            file = files[name]
            if file not in handles:
                handles[file] = stack.enter_context(_open_safetensors(file))
            host = spec.from_hf(handles[file].get_tensor(name)).astype(target_dtype)
            return _place(host, None if shardings is None else get_leaf(shardings, spec.path))

        params = build_tree(cfg, read)
    return cfg, params


def _atomic_write(target: Path, write: Any) -> None:
    """Writes via ``write(tmp_path)`` to a temp file in the same folder, then renames."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.fchmod(fd, gs_files.default_file_mode())  # mkstemp makes 0600; follow the user's umask
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_hf(cfg: GemmaConfig, params: Params, path: str | os.PathLike) -> None:
    """Writes an HF folder (``config.json`` + ``model.safetensors``) transformers can load.

    The folder is text-only: ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM`` (a multimodal Gemma 3
    is saved as its language model). Tensors keep the params' dtype (fp32 or bf16). Each file is
    written atomically.

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


def check_tokenizer(cfg: GemmaConfig, tokenizer: Any, path: str | os.PathLike = "") -> None:
    """Checks every id the tokenizer can produce has a row in the model's embedding table.

    A model may have more rows than the tokenizer has tokens (the multimodal Gemma 3 checkpoints
    have 262,208 rows for a 262,144-token tokenizer plus image tokens), never fewer: a token past
    the table would silently embed as NaN under jit.

    Raises:
        ValueError: If ``len(tokenizer)`` exceeds ``cfg.vocab_size``.
    """
    n_tokens = len(tokenizer)
    if n_tokens > cfg.vocab_size:
        where = f" in {str(path)!r}" if path else ""
        raise ValueError(
            f"The tokenizer{where} has {n_tokens} tokens but the model's embedding table has "
            f"only {cfg.vocab_size} rows (config.json vocab_size): the tokenizer does not belong "
            "to this model."
        )


def resolve_path(path: str) -> str:
    """The HF folder of a model path.

    ``"embedded"`` is the shipped tiny model's folder; ``"gguf-package:<name>"`` the folder a
    packaged GGUF converts into (``gemmascope.model.packaged``: converted on first use, about
    45 s, then reused); other paths pass through.
    """
    if path == "embedded":
        from gemmascope import assets  # Lazy: the package data is only needed on request.

        return str(assets.TINY_MODEL_DIR)
    from gemmascope.model import packaged  # Lazy: it imports the converter.

    if packaged.is_packaged(path):
        return packaged.resolve(path)
    return path


def load_from_config(model_cfg: Mapping[str, Any], mesh: Mesh | None = None):
    """Loads (cfg, params, tokenizer) from a study config's ``model`` section.

    Args:
        model_cfg: ConfigDict or mapping with ``path`` (an HF folder, ``"embedded"`` or
            ``"gguf-package:<name>"``, see ``resolve_path``) and
            ``dtype`` (``"float32"`` or ``"bfloat16"``; default float32).
        mesh: Optional mesh to place the params on (default rules).

    Returns:
        (cfg, params, tokenizer).

    Raises:
        ValueError: On an unknown dtype name, or a tokenizer with more tokens than the model
            has embedding rows.
    """
    dtype_name = model_cfg.get("dtype", "float32") or "float32"
    if dtype_name not in _DTYPES:
        raise ValueError(f"model.dtype {dtype_name!r} is not supported; valid: {sorted(_DTYPES)}.")
    path = model_cfg.get("path")
    if not path:
        raise ValueError("model.path is required (an HF Gemma folder or 'embedded').")
    path = resolve_path(path)
    cfg, params = load_hf(path, dtype=_DTYPES[dtype_name], mesh=mesh)
    tokenizer = load_tokenizer(path)
    check_tokenizer(cfg, tokenizer, path)
    return cfg, params, tokenizer
