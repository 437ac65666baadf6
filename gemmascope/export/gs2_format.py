"""Gemma Scope 2's release format: one folder per SAE or transcoder.

Gemma Scope 2 (``google/gemma-scope-2-<size>-<pt|it>`` on Hugging Face) releases every SAE and
transcoder as a folder named ``<kind>/layer_<L>_width_<W>_l0_<label>[_affine]/`` holding::

    params.safetensors   w_enc (d_in, d_sae), w_dec (d_sae, d_out), b_enc (d_sae,),
                         b_dec (d_out,), threshold (d_sae,)
                         [, affine_skip_connection (d_in, d_out): skip-transcoders]
    config.json          architecture "jump_relu", model_name, hf_hook_point_in,
                         hf_hook_point_out (transcoders), affine_connection, width

on raw activations (no normalisation, no b_dec subtraction): ``f = JumpReLU_θ(x w_enc + b_enc)``,
``y = f w_dec + b_dec (+ x affine_skip_connection)``, exactly our params.npz rule, so the arrays
are ours renamed. Hook points are Hugging Face module names of Gemma 3 (and Gemma 2, whose
modules have the same names):

    resid_post/L  model.layers.L.output
    attn_z/L      model.layers.L.self_attn.o_proj.input          (Gemma Scope 2's "attn_out")
    mlp_in/L      model.layers.L.pre_feedforward_layernorm.output
    mlp_out/L     model.layers.L.post_feedforward_layernorm.output

Reading never runs code from the file: the safetensors header is parsed as JSON and each tensor
copied out as float32 (F32, F16, F64 and BF16 are accepted).

Synopsis::

    rel = folder_name("mlp_in/3", 16384, "l0_small", target_site="mlp_out/3", affine=True)
    # "transcoder/layer_3_width_16k_l0_small_affine"
    write_release(folder, raw_params, site="resid_post/12", model_name="google/gemma-3-270m-pt")
    params, info = read_release(folder)     # our names (W_enc, ..., W_skip) and a ReleaseInfo
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct

import numpy as np
from safetensors.numpy import save

from gemmascope import files
from gemmascope.export import layout

#: The release tree's folder in a workdir (the root of a Hugging Face repo of this form).
RELEASE_DIR = "gemma_scope_2"
PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
#: The only architecture Gemma Scope 2 releases (config.json's ``architecture``).
ARCHITECTURE = "jump_relu"
#: Release tensor name -> our params.npz key.
TENSORS = {
    "w_enc": "W_enc",
    "w_dec": "W_dec",
    "b_enc": "b_enc",
    "b_dec": "b_dec",
    "threshold": "threshold",
}
SKIP_TENSOR = "affine_skip_connection"
# Our site kind -> its Hugging Face hook point, by layer.
_HOOKS = {
    "resid_post": "model.layers.{layer}.output",
    "attn_z": "model.layers.{layer}.self_attn.o_proj.input",
    "mlp_in": "model.layers.{layer}.pre_feedforward_layernorm.output",
    "mlp_out": "model.layers.{layer}.post_feedforward_layernorm.output",
}
_HOOK_PATTERN = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Our SAE site kind -> Gemma Scope 2's folder kind.
_FOLDER_KINDS = {"resid_post": "resid_post", "attn_z": "attn_out", "mlp_out": "mlp_out"}
TRANSCODER_KIND = "transcoder"
# Gemma Scope 2's L0 labels and the L0 ranges they name (its release notes on Hugging Face).
L0_LABELS = {"small": (10.0, 20.0), "medium": (30.0, 60.0), "big": (90.0, 150.0)}
_FOLDER_NAME = re.compile(r"^layer_(\d+)_width_([0-9]+[km]?)_(.+?)(_affine)?$")
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8")}


def hf_hook_point(site: str) -> str:
    """The Hugging Face hook point of a site (``resid_post/12`` -> ``model.layers.12.output``).

    Raises:
      ValueError: a site kind Gemma Scope 2 has no hook point for (valid: ``_HOOKS``'s kinds).
    """
    kind, layer = layout.split_site(site)
    if kind not in _HOOKS:
        raise ValueError(
            f"site {site!r} has no Gemma Scope 2 hook point; valid site kinds: {sorted(_HOOKS)}"
        )
    return _HOOKS[kind].format(layer=layer)


def site_of_hook(hook: str, source: str = "config.json") -> str:
    """Our site of a Hugging Face hook point (``model.layers.12.output`` -> ``resid_post/12``).

    Raises:
      ValueError: ``hook`` is none of the four hook points, naming them.
    """
    match = _HOOK_PATTERN.match(hook) if isinstance(hook, str) else None
    if match:
        layer = match.group(1)
        for kind, template in _HOOKS.items():
            if template.format(layer=layer) == hook:
                return f"{kind}/{int(layer)}"
    valid = [template.format(layer="L") for template in _HOOKS.values()]
    raise ValueError(f"{source}: hook point {hook!r} is unknown; valid: {valid}")


def l0_label(target_l0: float) -> str | None:
    """Gemma Scope 2's label of a target L0 (16 -> "small"), None outside every label's range."""
    for label, (low, high) in L0_LABELS.items():
        if low <= float(target_l0) <= high:
            return label
    return None


def folder_name(
    site: str, width: int, tag: str, *, target_site: str | None = None, affine: bool = False
) -> str:
    """The release folder of one SAE or transcoder, relative to the release root.

    ``<kind>/layer_<L>_width_<W>_<tag>[_affine]``: ``kind`` is Gemma Scope 2's (``attn_out`` for
    attn_z, ``transcoder`` for an ``mlp_in/L -> mlp_out/L`` transcoder), ``W`` Gemma Scope's width
    label (16384 -> 16k) and ``tag`` e.g. ``l0_medium``.

    Raises:
      ValueError: a site kind Gemma Scope 2 releases no SAE for, or a transcoder of another pair.
    """
    kind, layer = layout.split_site(site)
    layout.check_name(tag, "tag")
    if target_site is not None:
        if (kind, target_site) != ("mlp_in", f"mlp_out/{layer}"):
            raise ValueError(
                f"a transcoder of {site} -> {target_site} has no Gemma Scope 2 folder: the "
                "release holds transcoders of mlp_in/L -> mlp_out/L"
            )
        folder_kind = TRANSCODER_KIND
    elif kind in _FOLDER_KINDS:
        folder_kind = _FOLDER_KINDS[kind]
    else:
        raise ValueError(
            f"site {site!r}: Gemma Scope 2 releases SAEs of {sorted(_FOLDER_KINDS)} (and "
            "transcoders of mlp_in -> mlp_out)"
        )
    suffix = "_affine" if affine else ""
    return f"{folder_kind}/layer_{layer}_width_{layout.width_label(width)}_{tag}{suffix}"


def write_release(
    folder: str,
    params: dict,
    *,
    site: str,
    target_site: str | None = None,
    model_name: str | None = None,
    extra: dict | None = None,
) -> str:
    """Writes one Gemma Scope 2 folder: params.safetensors and config.json, each atomically.

    Args:
      folder: the folder to write (e.g. ``<root>/resid_post/layer_3_width_16k_l0_small``).
      params: raw-unit params (params.npz's keys; ``W_skip`` for a skip-transcoder).
      site: the input site.
      target_site: a transcoder's output site (None for an SAE).
      model_name: config.json's ``model_name`` (e.g. ``google/gemma-3-270m-pt``).
      extra: more config.json fields (our provenance; Gemma Scope 2's readers ignore them).

    Returns:
      ``folder``.
    """
    affine = "W_skip" in params
    tensors = {name: params[key] for name, key in TENSORS.items()}
    if affine:
        tensors[SKIP_TENSOR] = params["W_skip"]
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    config = {
        "architecture": ARCHITECTURE,
        "model_name": model_name,
        "hf_hook_point_in": hf_hook_point(site),
        "width": int(tensors["w_enc"].shape[1]),
        "affine_connection": affine,
        **(extra or {}),
    }
    if target_site is not None:
        config["hf_hook_point_out"] = hf_hook_point(target_site)
    files.write_bytes(files.join(folder, PARAMS_FILE), save(tensors))
    files.write_json(files.join(folder, CONFIG_FILE), config, sort_keys=True)
    return folder


@dataclasses.dataclass(frozen=True)
class ReleaseInfo:
    """What a Gemma Scope 2 folder holds, from its config.json and tensor shapes.

    Attributes:
      site: the input site (from ``hf_hook_point_in``).
      target_site: a transcoder's output site (``hf_hook_point_out``), None for an SAE.
      d_in, width, d_out: from ``w_enc`` and ``w_dec``'s shapes.
      affine: a skip-transcoder (``affine_skip_connection`` present).
      model_name: config.json's ``model_name``.
      tag: the folder name's label part (``l0_medium``), "released" if it has none.
    """

    site: str
    target_site: str | None
    d_in: int
    width: int
    d_out: int
    affine: bool
    model_name: str | None
    tag: str


def folder_of(path: str) -> str:
    """The release folder of ``path``: itself, or the folder of its params.safetensors."""
    path = str(path).rstrip("/")
    return path.rsplit("/", 1)[0] if path.endswith(PARAMS_FILE) else path


def is_release(path: str) -> bool:
    """True for a Gemma Scope 2 folder (or its params.safetensors), False for a params.npz."""
    path = str(path).rstrip("/")
    return path.endswith(PARAMS_FILE) or files.isdir(path)


def _header(path: str, data: bytes) -> tuple[dict, int]:
    """The safetensors header (JSON) and where the tensor bytes start."""
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file ({len(data)} bytes)")
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        raise ValueError(f"{path}: truncated: {len(data)} bytes, shorter than its own header")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a safetensors file (header: {error})") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + length


def _tensor(path: str, name: str, entry, data: bytes, start: int) -> np.ndarray:
    """One tensor of a safetensors file as float32."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: tensor {name!r} has a malformed header entry") from error
    if dtype not in (*_DTYPES, "BF16"):
        raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}; valid: {[*_DTYPES, 'BF16']}")
    size = 2 if dtype == "BF16" else _DTYPES[dtype].itemsize
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != count * size or start + end > len(data):
        raise ValueError(f"{path}: tensor {name!r} is truncated or its offsets are wrong")
    raw = data[start + begin : start + end]
    if dtype == "BF16":  # the high 16 bits of a float32
        values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, _DTYPES[dtype]).astype(np.float32)
    return values.reshape(shape)


def _read_config(folder: str) -> dict:
    path = files.join(folder, CONFIG_FILE)
    if not files.exists(path):
        raise FileNotFoundError(
            f"{path}: no such file; a Gemma Scope 2 folder holds {CONFIG_FILE} and {PARAMS_FILE}"
        )
    try:
        config = json.loads(files.read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    arch = config.get("architecture", ARCHITECTURE)  # SAELens infers it when absent
    if arch != ARCHITECTURE:
        raise ValueError(
            f"{path}: architecture {arch!r} is not supported; valid: {ARCHITECTURE!r} (the only "
            "one Gemma Scope 2 releases)"
        )
    if "hf_hook_point_in" not in config:
        raise ValueError(f"{path}: missing field 'hf_hook_point_in' (the input's hook point)")
    return config


def _header_of_file(path: str) -> dict:
    """The safetensors header of ``path``, reading only its first bytes when local."""
    if not files.exists(path):
        raise FileNotFoundError(f"{path}: no such file (the folder's weights)")
    if files.is_url(path):
        return _header(path, files.read_bytes(path))[0]
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        data = head + f.read(min(length, 100_000_000))
    return _header(path, data)[0]


def describe(path: str) -> ReleaseInfo:
    """A Gemma Scope 2 folder's sites, kind and shapes from config.json and the tensor header.

    Reads no tensor data (``read_release`` reads and checks everything).

    Raises:
      FileNotFoundError, ValueError: as ``read_release`` for config.json and the header.
    """
    folder = folder_of(path)
    config = _read_config(folder)
    site, target_site = _sites(folder, config)
    params_path = files.join(folder, PARAMS_FILE)
    header = _header_of_file(params_path)
    shapes = {}
    for name in ("w_enc", "w_dec"):
        entry = header.get(name)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and len(shape) == 2):
            raise ValueError(
                f"{params_path}: tensor {name!r} missing or not 2-D; a release holds "
                f"{[*TENSORS, SKIP_TENSOR]}"
            )
        shapes[name] = shape
    return ReleaseInfo(
        site=site,
        target_site=target_site,
        d_in=int(shapes["w_enc"][0]),
        width=int(shapes["w_enc"][1]),
        d_out=int(shapes["w_dec"][1]),
        affine=SKIP_TENSOR in header,
        model_name=config.get("model_name"),
        tag=release_tag(folder),
    )


def _sites(folder: str, config: dict) -> tuple[str, str | None]:
    """(input site, a transcoder's output site or None) of config.json's hook points."""
    config_path = files.join(folder, CONFIG_FILE)
    site = site_of_hook(config["hf_hook_point_in"], f"{config_path}: hf_hook_point_in")
    out_hook = config.get("hf_hook_point_out")
    if out_hook is None or out_hook == config["hf_hook_point_in"]:
        return site, None
    return site, site_of_hook(out_hook, f"{config_path}: hf_hook_point_out")


def read_release(folder: str) -> tuple[dict[str, np.ndarray], ReleaseInfo]:
    """Reads and checks one Gemma Scope 2 folder (or its params.safetensors path).

    Returns:
      (params with our params.npz keys, float32; ``W_skip`` for a skip-transcoder; the info).

    Raises:
      FileNotFoundError: config.json or params.safetensors is missing.
      ValueError: an unknown architecture or hook point, a missing or unexpected tensor, a
        wrong shape, a non-float dtype, non-finite values, or affine_connection contradicting
        the tensors; each names the file and what is valid.
    """
    folder = folder_of(folder)
    config = _read_config(folder)
    config_path = files.join(folder, CONFIG_FILE)
    site, target_site = _sites(folder, config)
    path = files.join(folder, PARAMS_FILE)
    if not files.exists(path):
        raise FileNotFoundError(f"{path}: no such file (the folder's weights)")
    data = files.read_bytes(path)
    header, start = _header(path, data)
    valid = [*TENSORS, SKIP_TENSOR]
    missing = [name for name in TENSORS if name not in header]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing}; a release holds {valid}")
    extra = sorted(set(header) - set(valid))
    if extra:
        raise ValueError(f"{path}: unexpected tensor(s) {extra}; valid: {valid}")
    params = {TENSORS.get(n, "W_skip"): _tensor(path, n, header[n], data, start) for n in header}
    affine = "W_skip" in params
    if "affine_connection" in config and bool(config["affine_connection"]) != affine:
        raise ValueError(
            f"{config_path}: affine_connection is {config['affine_connection']} but "
            f"{PARAMS_FILE} {'has' if affine else 'has no'} {SKIP_TENSOR}"
        )
    if affine and target_site is None:
        raise ValueError(
            f"{path}: {SKIP_TENSOR} is a transcoder's, but config.json has no "
            "hf_hook_point_out other than hf_hook_point_in"
        )
    d_in, width, d_out = _check_shapes(path, params, target_site)
    info = ReleaseInfo(
        site=site,
        target_site=target_site,
        d_in=int(d_in),
        width=int(width),
        d_out=int(d_out),
        affine=affine,
        model_name=config.get("model_name"),
        tag=release_tag(folder),
    )
    return params, info


def _check_shapes(path: str, params: dict, target_site: str | None) -> tuple[int, int, int]:
    """(d_in, width, d_out) of a release's tensors, every shape and value checked."""
    w_enc = params["W_enc"].shape
    if len(w_enc) != 2:
        raise ValueError(f"{path}: w_enc must be 2-D (d_in, d_sae), got shape {w_enc}")
    d_in, width = w_enc
    w_dec = params["W_dec"].shape
    # A transcoder's output width is its decoder's; an SAE writes its input site.
    d_out = w_dec[1] if target_site is not None and len(w_dec) == 2 else d_in
    expected = {
        "W_dec": (width, d_out),
        "b_enc": (width,),
        "b_dec": (d_out,),
        "threshold": (width,),
    }
    if "W_skip" in params:
        expected["W_skip"] = (d_in, d_out)
    names = {v: k for k, v in TENSORS.items()} | {"W_skip": SKIP_TENSOR}
    for key, shape in expected.items():
        if params[key].shape != shape:
            raise ValueError(
                f"{path}: {names[key]} has shape {params[key].shape}, expected {shape} (from "
                f"w_enc {w_enc}: d_in={d_in}, d_sae={width}"
                + (f", d_out={d_out})" if target_site else ")")
            )
    for key, value in params.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: {names[key]} contains NaN or inf values")
    return int(d_in), int(width), int(d_out)


def release_tag(folder: str) -> str:
    """The label part of a release folder's name (``layer_3_width_16k_l0_small`` -> ``l0_small``).

    "released" when the name is not Gemma Scope 2's ``layer_<L>_width_<W>_<label>``.
    """
    name = folder_of(folder).rsplit("/", 1)[-1]
    match = _FOLDER_NAME.match(name)
    if not match:
        return "released"
    try:
        return layout.check_name(match.group(3), "tag")
    except ValueError:
        return "released"
