"""Turn a finished training run into Gemma Scope SAE folders, and import released SAEs.

``export_run`` reads ``workdir/runs/<job>/job.json`` and ``final_params.npz`` (training-form params
stacked on a leading sweep axis), converts each sweep member to JumpReLU form with
``gemmascope.sae.to_jumprelu``, folds C and ``b_dec`` (docs/recipe.md#folding) and writes one folder
per member (layout in ``gemmascope.export.layout``). ``import_released`` places a released Gemma
Scope ``params.npz`` in the same layout, so the evaluation treats it as one more SAE.

Synopsis::

    folders = export_run(workdir, "resid_post-L3-w256-jumprelu")
    folder = import_released("params.npz", workdir, "resid_post/12", model_cfg=cfg)
"""

from __future__ import annotations

import os
import re

import jax
import ml_collections
import numpy as np

from gemmascope import files, sae
from gemmascope.export import gs2_format, gs2_release, layout, saelens_format
from gemmascope.export.folding import fold, fold_transcoder
from gemmascope.export.npz_format import check_params, load_npz, save_npz
from gemmascope.sae import inference

# Folder name of a released Gemma Scope SAE: .../average_l0_71/params.npz.
_RELEASED_TAG = re.compile(r"average_l0_\d+")


def _load_job(workdir: str, job_name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Reads one run's job.json and its stacked final params."""
    runs_dir = files.join(workdir, "runs")
    job_path = files.join(runs_dir, job_name, "job.json")
    params_path = files.join(runs_dir, job_name, "final_params.npz")
    for path in (job_path, params_path):
        if not files.exists(path):
            present = files.listdir(runs_dir)
            raise FileNotFoundError(
                f"export_run: {path} not found; train job {job_name!r} to completion first "
                f"(runs present: {present or 'none'})"
            )
    job = files.read_json(job_path)
    required = ("site", "arch", "width", "norm_scale", "d_in", "sae", "sweep_field", "members")
    missing = [k for k in required if k not in job]
    if missing:
        raise ValueError(f"{job_path}: missing field(s) {missing}; required: {list(required)}")
    return job, files.load_npz(params_path)


def _member_config(arch: sae.Architecture, job: dict, value) -> ml_collections.ConfigDict:
    """The architecture config of one member: defaults, the job's SAE config, the sweep value."""
    cfg = arch.default_config()
    cfg.update(job["sae"])
    cfg[job["sweep_field"]] = value
    return cfg


def _members(job: dict, job_name: str) -> list[dict]:
    """The job's members in stacking order, ``{"sweep_value", "seed"}`` each (job.json's)."""
    members = job["members"]
    if not members or not all({"sweep_value", "seed"} <= set(m) for m in members):
        raise ValueError(
            f"job {job_name!r}: job.json's members must be a non-empty list of "
            f'{{"sweep_value", "seed"}}, got {members!r}'
        )
    return [dict(m) for m in members]


def _check_thresholds_estimated(job: dict, job_name: str, stacked: dict) -> None:
    """Refuses members whose running inference threshold was never estimated (BatchTopK family).

    ``running_threshold`` starts at −1 and is first set at step ``sae.threshold_start_step``; a
    member still at −1 would export threshold 0, a plain ReLU, not the SAE it trained as.
    """
    running = stacked.get("running_threshold")
    if running is None:
        return
    never = np.flatnonzero(np.asarray(running) < 0)
    if never.size:
        start = (job.get("sae") or {}).get("threshold_start_step")
        raise ValueError(
            f"export_run: job {job_name!r} trained {job.get('steps', 'an unknown number of')} "
            f"steps, but its inference threshold is estimated from sae.threshold_start_step = "
            f"{start} on, so member(s) {never.tolist()} never got one (running_threshold = -1) "
            "and would export as a plain ReLU (threshold 0). Retrain the job with "
            "sae.threshold_start_step below its number of steps"
        )


# Architectures without a JumpReLU form: exported with threshold 0 plus a per-token top-k rule.
_TOPK_ARCHITECTURES = ("topk",)


def _inference_form(
    params: dict, arch_name: str, cfg
) -> tuple[sae.TrainingForm | sae.TranscoderForm, dict]:
    """The JumpReLU training form (training units) and the encoder rule recorded in config.json.

    JumpReLU-form architectures use ``sae.to_jumprelu``. TopK has no threshold form; its arrays
    are written with ``threshold = 0`` and config.json says ``{"type": "topk", "k": k}``, which
    the evaluation applies (top-k of raw pre-activations = top-k of normalised ones, as C > 0).
    A free decoder's rows stay as trained (not unit-norm): moving their norms into the encoder
    would change which k latents are the largest.
    """
    if arch_name in _TOPK_ARCHITECTURES:
        jr = inference.jumprelu_form(
            params, params["W_enc"], params["b_enc"], 0.0, cfg, fold_decoder_norms=False
        )
        return jax.tree.map(np.asarray, jr), {"type": "topk", "k": int(cfg.k)}
    jr = sae.to_jumprelu(params, arch_name, cfg)
    return jax.tree.map(np.asarray, jr), {"type": "jumprelu"}


def export_run(workdir: str, job_name: str) -> list[str]:
    """Exports every member of one finished training job as a Gemma Scope SAE folder.

    Members are the job's (sweep value, seed) pairs; the folder tag is the sweep setting
    (``lambda_6e-04``), with ``_seed<s>`` appended when the job trained several seeds.

    Args:
      workdir: the study's workdir.
      job_name: the job's name (folder under ``workdir/runs``).

    Returns:
      the written SAE folders, one per member, in stacking order.

    Raises:
      FileNotFoundError: the run has no ``job.json`` or ``final_params.npz``.
      ValueError: the job metadata or the stacked params are inconsistent, or a BatchTopK /
        Matryoshka member stopped before ``sae.threshold_start_step`` (no inference threshold).
    """
    job, stacked = _load_job(workdir, job_name)
    arch_name = job["arch"]
    if arch_name not in sae.ARCHITECTURES:
        raise ValueError(
            f"job {job_name!r}: unknown architecture {arch_name!r}; "
            f"valid: {sorted(sae.ARCHITECTURES)}"
        )
    arch = sae.ARCHITECTURES[arch_name]
    members = _members(job, job_name)
    for key, value in stacked.items():
        if value.shape[:1] != (len(members),):
            raise ValueError(
                f"job {job_name!r}: final_params[{key!r}] has shape {value.shape}, expected a "
                f"leading sweep axis of {len(members)} (one per member)"
            )
    _check_thresholds_estimated(job, job_name, stacked)
    sweep_field = job["sweep_field"]
    several_seeds = len({m["seed"] for m in members}) > 1
    trained_on = _training_data(workdir)
    kind, layer = layout.split_site(job["site"])
    d_in, width = int(job["d_in"]), int(job["width"])
    d_out = job.get("d_out")  # a transcoder's (docs/transcoders.md)
    if d_out is not None:
        skip = (job.get("sae") or {}).get("skip_connection")
        kind = "transcoder_affine" if skip else "transcoder"
    gs2_tags = gs2_release.release_tags(job, arch_name, members, several_seeds)
    folders = []
    for index, member in enumerate(members):
        value = member["sweep_value"]
        member_params = {k: v[index] for k, v in stacked.items()}
        member_cfg = _member_config(arch, job, value)
        jr, encoder = _inference_form(member_params, arch_name, member_cfg)
        if d_out is None:
            raw = fold(jr, job["norm_scale"])
        else:
            raw = fold_transcoder(jr, job["norm_scale"], job["target_norm_scale"])
        source = f"job {job_name!r} member {index}"
        check_params(raw, d_in=d_in, width=width, source=source, d_out=d_out)
        tag = layout.sweep_tag(sweep_field, value)
        if several_seeds:
            tag += f"_seed{member['seed']}"
        folder = layout.sae_dir(workdir, f"{kind}/{layer}", width, arch_name, tag)
        _check_not_taken(folder, job_name, width)
        save_npz(files.join(folder, layout.PARAMS_FILE), raw, d_out=d_out)
        config = {
            "format": layout.CONFIG_FORMAT,
            "source": "trained",
            "job": job_name,
            "member": index,
            "seed": member["seed"],
            "model": job.get("model") or None,
            "site": job["site"],
            "kind": kind,
            "layer": layer,
            "d_in": d_in,
            "width": width,
            "architecture": arch_name,
            "sweep_field": sweep_field,
            "sweep_value": value,
            "tag": tag,
            "tokens_trained": job.get("tokens_trained"),
            "norm_scale": float(job["norm_scale"]),
            "encoder": encoder,
            "arch_cfg": _jsonable(member_cfg.to_dict()),
        }
        if d_out is not None:
            config.update(
                target_site=job["target_site"],
                d_out=int(d_out),
                target_norm_scale=float(job["target_norm_scale"]),
            )
        layout.write_json_atomic(files.join(folder, layout.CONFIG_FILE), config)
        if d_out is None:  # SAELens's SAE format; transcoders are not written in it
            saelens_format.write_saelens(folder, raw, config, **trained_on)
        if encoder["type"] == "jumprelu" and gs2_tags is not None:
            gs2_release.write_member(workdir, raw, config, gs2_tags[index])
        folders.append(folder)
    return folders


def _training_data(workdir: str) -> dict:
    """The study's sequence length and corpus (from workdir/config.json) for SAELens's metadata.

    Empty when the workdir has no study config (e.g. a run exported on its own).
    """
    path = files.join(workdir, "config.json")
    if not files.exists(path):
        return {}
    data_cfg = files.read_json(path).get("data") or {}
    seq_len, corpus = data_cfg.get("seq_len"), data_cfg.get("corpus")
    return {
        "context_size": int(seq_len) if isinstance(seq_len, int) else None,
        "dataset_path": str(corpus) if corpus else None,
    }


def _check_not_taken(folder: str, job_name: str, width: int) -> None:
    """Refuses to overwrite an SAE folder that belongs to another job or width."""
    path = files.join(folder, layout.CONFIG_FILE)
    if not files.exists(path):
        return
    existing = files.read_json(path)
    if existing.get("job") != job_name or existing.get("width") != width:
        raise ValueError(
            f"{folder} already holds an SAE of job {existing.get('job')!r} (width "
            f"{existing.get('width')}); job {job_name!r} (width {width}) would overwrite it"
        )


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, ml_collections.ConfigDict):
        return _jsonable(value.to_dict())
    return str(value)


def released_tag(npz_path: str) -> str:
    """The folder tag of a released SAE: its path's `average_l0_<N>` part, else "released"."""
    match = _RELEASED_TAG.search(os.fspath(npz_path))
    return match.group(0) if match else "released"


def import_released(
    npz_path: str,
    workdir: str,
    site: str,
    *,
    model_cfg=None,
    d_in: int | None = None,
    tag: str | None = None,
    model: str | None = None,
    tokens_trained: int | None = None,
    arch: str = "gemmascope",
) -> str:
    """Copies a released Gemma Scope ``params.npz`` into the workdir's SAE layout.

    The file is read with ``allow_pickle=False`` and every shape is checked against the site's
    width (from ``model_cfg`` or ``d_in``) before anything is written.

    Args:
      npz_path: the released file, e.g. ``.../layer_12/width_16k/average_l0_82/params.npz``.
      workdir: the study's workdir.
      site: the site it was trained on, e.g. ``"resid_post/12"``.
      model_cfg: model config used to check d_in (``model.sites.dim``); or give ``d_in``.
      d_in: expected input width when no ``model_cfg`` is given.
      tag: folder tag; default: the ``average_l0_<N>`` part of ``npz_path``, else ``"released"``.
      model: model identity to record (e.g. ``"google/gemma-2-2b"``).
      tokens_trained: training tokens to record (Gemma Scope: 4e9 for 16k, 8e9, 16e9 for 1m).
      arch: architecture label in the folder name and table.

    Returns:
      the SAE folder written.

    Raises:
      ValueError: the npz is malformed or does not fit the site; neither model_cfg nor d_in given.
    """
    if model_cfg is None and d_in is None:
        raise ValueError("import_released: give model_cfg (preferred) or d_in to check shapes")
    if gs2_format.is_release(npz_path):
        return gs2_release.import_release(
            npz_path, workdir, site, model_cfg=model_cfg, d_in=d_in, tag=tag, model=model,
            tokens_trained=tokens_trained,
        )  # fmt: skip
    if model_cfg is not None:
        params = load_npz(npz_path, model_cfg=model_cfg, site=site, d_in=d_in)
    else:
        params = load_npz(npz_path, d_in=d_in)
    got_d, width = params["W_enc"].shape
    if tag is None:
        tag = released_tag(npz_path)
    kind, layer = layout.split_site(site)
    folder = layout.sae_dir(workdir, site, width, arch, tag)
    save_npz(files.join(folder, layout.PARAMS_FILE), params)
    config = {
        "format": layout.CONFIG_FORMAT,
        "source": "released",
        "origin": npz_path if files.is_url(npz_path) else os.path.abspath(os.fspath(npz_path)),
        "model": model,
        "site": site,
        "kind": kind,
        "layer": layer,
        "d_in": int(got_d),
        "width": int(width),
        "architecture": arch,
        "sweep_field": None,
        "sweep_value": None,
        "tag": tag,
        "tokens_trained": tokens_trained,
        "norm_scale": None,
        "encoder": {"type": "jumprelu"},
    }
    layout.write_json_atomic(files.join(folder, layout.CONFIG_FILE), config)
    saelens_format.write_saelens(folder, params, config)
    return folder
