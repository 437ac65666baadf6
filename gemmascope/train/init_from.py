"""Starting a job from another job's final params (`job_cfg.init_from`): IT fine-tuning of PT SAEs.

Gemma Scope 2 fine-tuned every SAE trained on a PT model into one for the IT model (docs
training.md#init-from): the IT job starts from the PT job's trained params and trains on
chat-wrapped data for a fraction of the PT budget. `job_cfg.init_from` names the finished job's
run folder (`<workdir>/runs/<job>`); `load` reads its `final_params.npz` and `job.json` and checks
that they belong to the same kind of job, so the params can replace the fresh init's one for one.

What is copied: every leaf of final_params.npz, the stacked (S, ...) params and the buffers
(`sae.BUFFER_KEYS`: the target-L0 form's λ, AuxK's firing counters, BatchTopK's running
threshold), bit for bit. What starts fresh: the optimizer state (Adam's moments at zero), the
step counter (so the lr and sparsity warmups and every schedule start again: see the docs), the
last-fired record behind `frac_dead`.

Synopsis:
    params = init_from.load(job_cfg, sae_cfg, members, d_in, abstract_params)   # numpy, stacked
"""

from __future__ import annotations

import json

import numpy as np

from gemmascope import files

# SAE config fields that change what the params mean without changing their names or shapes.
_MEANING_FIELDS = ("pre_encoder_bias", "skip_connection", "d_out", "threshold_param")
# What a finished job leaves in its run folder that init_from reads.
_FINISHED_JOB_FILES = ("final_params.npz", "job.json")


def missing_files(folder: str) -> list[str]:
    """The files of a finished job (final_params.npz, job.json) that `folder` lacks."""
    return [name for name in _FINISHED_JOB_FILES if not files.exists(files.join(folder, name))]


def load(job_cfg, sae_cfg, members, d_in: int, abstract_params: dict) -> dict[str, np.ndarray]:
    """The final params of the job in `job_cfg.init_from`, checked against this job.

    Args:
        job_cfg: this job's config (`init_from` set).
        sae_cfg: this job's resolved SAE config.
        members: this job's (sweep value, seed) pairs.
        d_in: this job's input width.
        abstract_params: the fresh state's params (ShapeDtypeStructs or arrays, stacked).

    Returns:
        {name: stacked numpy array} with exactly the names, shapes and dtypes of
        `abstract_params`.

    Raises:
        FileNotFoundError: the folder holds no finished job (names the files and what to run).
        ValueError: the job there differs from this one (names each field with both values).
    """
    folder = str(job_cfg.init_from)
    params_path = files.join(folder, "final_params.npz")
    job_path = files.join(folder, "job.json")
    missing = [files.join(folder, name) for name in missing_files(folder)]
    if missing:
        raise FileNotFoundError(
            f"job {job_cfg.name!r} starts from init_from = {folder!r}, which holds no finished "
            f"job: {', '.join(missing)} missing. Train that job first (the PT study's "
            "--mode=train), or point init_from at its runs/<job> folder."
        )
    saved_job = json.loads(files.read_text(job_path))
    problems = _job_differences(job_cfg, sae_cfg, members, d_in, saved_job)
    params = files.load_npz(params_path)
    problems += _param_differences(params, abstract_params)
    if problems:
        raise ValueError(
            f"job {job_cfg.name!r} cannot start from {folder}: "
            + "; ".join(problems)
            + ". init_from must name the same job (architecture, site, width, sweep) trained "
            "with the same parameterisation."
        )
    return {name: params[name] for name in abstract_params}


def _job_differences(job_cfg, sae_cfg, members, d_in, saved: dict) -> list[str]:
    """One line per field in which the saved job.json differs from this job."""
    problems = []
    ours = {
        "arch": job_cfg.arch,
        "site": job_cfg.site,
        "target_site": job_cfg.get("target_site") or "",
        "width": int(job_cfg.width),
        "d_in": int(d_in),
    }
    for field, value in ours.items():
        theirs = saved.get(field)
        if field == "target_site":  # an SAE's job.json may hold "" or nothing
            theirs = theirs or ""
        if theirs != value:
            problems.append(f"its {field} is {theirs!r}, this job's is {value!r}")
    saved_values = [m.get("sweep_value") for m in saved.get("members", [])]
    values = [value for value, _ in members]
    if len(saved_values) != len(values) or not np.allclose(saved_values, values):
        problems.append(
            f"its sweep ({saved.get('sweep_field')}) is {saved_values}, this job's is {values}"
        )
    saved_sae = saved.get("sae", {})
    for field in _MEANING_FIELDS:
        if field in sae_cfg and saved_sae.get(field) != sae_cfg[field]:
            problems.append(
                f"its sae.{field} is {saved_sae.get(field)!r}, this job's is {sae_cfg[field]!r}"
            )
    return problems


def _param_differences(params: dict, abstract_params: dict) -> list[str]:
    """One line per param whose name, shape or dtype differs from the fresh state's."""
    problems = []
    extra = sorted(set(params) - set(abstract_params))
    lacking = sorted(set(abstract_params) - set(params))
    if extra or lacking:
        ours = sorted(abstract_params)
        problems.append(f"its params are {sorted(params)}, this job's are {ours}")
    for name in sorted(set(params) & set(abstract_params)):
        want = abstract_params[name]
        got = params[name]
        if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
            problems.append(
                f"its {name} is {got.dtype}{list(got.shape)}, this job's is "
                f"{np.dtype(want.dtype)}{list(want.shape)}"
            )
    return problems
