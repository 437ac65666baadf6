"""SAELens's on-disk format: every exported SAE also as a folder ``SAE.load_from_disk`` loads.

Beside ``params.npz`` each SAE folder holds ``saelens/`` (docs/saelens.md)::

    saelens/cfg.json                  SAELens's config: architecture, d_in, d_sae, dtype, ...
    saelens/sae_weights.safetensors   W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc, b_dec
                                      [, threshold], float32

written for a SAE on raw activations: ``apply_b_dec_to_input`` false (b_dec is folded into b_enc,
docs/recipe.md#folding), ``normalize_activations`` "none" (C is folded too). JumpReLU-form SAEs
(JumpReLU, Gated, BatchTopK, ReLU, Matryoshka, released Gemma Scope) are SAELens ``jumprelu``;
TopK is SAELens ``topk`` with its ``k`` and ``rescale_acts_by_decoder_norm`` false (its rule on
raw pre-activations is ours). Hook names follow TransformerLens: ``blocks.L.hook_resid_post``,
``blocks.L.hook_mlp_out``, ``blocks.L.attn.hook_z`` (with ``reshape_activations`` "hook_z", so
SAELens flattens TransformerLens's (..., heads, head_dim) as our attn_z is flattened); a site
without a TransformerLens hook gets ``hook_name`` null.

Checked against sae-lens ``SAELENS_VERSION`` by ``tools/saelens_roundtrip.py`` (SAELens in its own
virtualenv; not a dependency of the package or the tests).

Synopsis::

    folder = write_saelens(sae_folder, released_params, sae_config, context_size=1024)
    cfg = saelens_config(sae_config)
"""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import save

from gemmascope import files
from gemmascope.export import layout

#: Sub-folder of an SAE folder holding its SAELens form.
SAELENS_DIR = "saelens"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
#: The SAELens release the format was checked against (tools/saelens_roundtrip.py).
SAELENS_VERSION = "6.54.12"

# TransformerLens hook of each site kind, by layer.
_HOOKS = {
    "resid_post": "blocks.{layer}.hook_resid_post",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "attn_z": "blocks.{layer}.attn.hook_z",
}


def hook_name(site: str) -> str | None:
    """The TransformerLens hook of a site (``resid_post/3`` -> ``blocks.3.hook_resid_post``).

    None for a site kind TransformerLens has no hook for.
    """
    kind, layer = layout.split_site(site)
    template = _HOOKS.get(kind)
    return template.format(layer=layer) if template else None


def _model_name(model: str | None) -> str | None:
    """TransformerLens-style model name: the last part of a path or hub id (gemma-2-2b)."""
    if not model:
        return None
    return os.path.basename(str(model).rstrip("/")) or None


def saelens_config(
    config: dict, *, context_size: int | None = None, dataset_path: str | None = None
) -> dict:
    """SAELens's ``cfg.json`` for one of our SAE folders' ``config.json``.

    Args:
      config: the SAE's config.json (``site``, ``d_in``, ``width``, ``encoder``, ...).
      context_size: the sequence length the SAE was trained on, if known.
      dataset_path: the corpus it was trained on, if known.
    """
    encoder = config.get("encoder") or {"type": "jumprelu"}
    kind, _ = layout.split_site(config["site"])
    cfg = {
        "architecture": "topk" if encoder["type"] == "topk" else "jumprelu",
        "d_in": int(config["d_in"]),
        "d_sae": int(config["width"]),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if kind == "attn_z" else "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "model_name": _model_name(config.get("model")),
            "hook_name": hook_name(config["site"]),
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": context_size,
            "dataset_path": dataset_path,
            "gemmascope": {
                key: config.get(key)
                for key in ("site", "architecture", "source", "sweep_field", "sweep_value", "tag")
            },
        },
    }
    if encoder["type"] == "topk":
        cfg["k"] = int(encoder["k"])
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg


def saelens_weights(params: dict, config: dict) -> dict[str, np.ndarray]:
    """The safetensors arrays: the released params (no ``threshold`` for TopK), float32."""
    encoder = config.get("encoder") or {"type": "jumprelu"}
    keys = ["W_enc", "W_dec", "b_enc", "b_dec"]
    if encoder["type"] != "topk":
        keys.append("threshold")
    return {key: np.ascontiguousarray(params[key], dtype=np.float32) for key in keys}


def write_saelens(
    folder: str,
    params: dict,
    config: dict,
    *,
    context_size: int | None = None,
    dataset_path: str | None = None,
) -> str:
    """Writes ``folder/saelens/`` (cfg.json + sae_weights.safetensors), each file atomically.

    Args:
      folder: the SAE's folder (holding params.npz and config.json).
      params: its released (raw-unit, b_dec-folded) params: the five arrays of params.npz.
      config: its config.json.
      context_size: the training sequence length, recorded in SAELens's metadata if given.
      dataset_path: the training corpus, recorded likewise.

    Returns:
      the SAELens folder.
    """
    target = files.join(folder, SAELENS_DIR)
    weights = save(saelens_weights(params, config))
    files.write_bytes(files.join(target, WEIGHTS_FILE), weights)
    cfg = saelens_config(config, context_size=context_size, dataset_path=dataset_path)
    files.write_json(files.join(target, CFG_FILE), cfg, sort_keys=True)
    return target
