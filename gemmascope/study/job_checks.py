"""The job-level checks of `study.validate`: groups, architectures, each expanded job, meshes.

Synopsis:
    from gemmascope.study import job_checks
    problems = job_checks.Problems()
    all_jobs = job_checks.expand(config, model_cfg, problems)   # [] if the jobs section is bad
    job_checks.check_each_job(all_jobs, problems)               # SAE configs, sweeps, budgets
    job_checks.check_mesh(config, all_jobs, (8, "the 8 devices of this run"), problems)
    problems.lines                                              # one line per problem

Each job goes through the trainer's own checks (`train.loop.resolve_sae_config`: the
architecture's validate and sweep-value checks, k against the width; `train.resolve_budget`).
A problem shared by many jobs is one line naming them.
"""

from __future__ import annotations

import contextlib
import math
import posixpath

from gemmascope import mesh as mesh_lib
from gemmascope.study import jobs


class Problems:
    """Collects problems; each is one line naming the field, the value and what is valid."""

    def __init__(self):
        """No problems yet."""
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        """Adds a problem (once)."""
        if line not in self.lines:
            self.lines.append(line)

    @contextlib.contextmanager
    def catch(self, prefix: str = ""):
        """Turns a package check's ValueError or FileNotFoundError into a problem line."""
        try:
            yield
        except (ValueError, KeyError, FileNotFoundError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            self.add(f"{prefix}{message}")


def is_count(value, smallest: int = 1) -> bool:
    """An int (not a bool) >= `smallest`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= smallest


def is_positive_number(value) -> bool:
    """A finite int or float (not a bool) > 0."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _check_groups(config, problems: Problems) -> None:
    groups = config.jobs.groups
    if not groups:
        problems.add("jobs.groups is empty: give at least one group of sites, widths, budget")
    for name, group in sorted(groups.items()):
        prefix = f"jobs.groups.{name}"
        for field in ("sites", "widths", "total_tokens"):
            if field not in group:
                problems.add(f"{prefix} has no field {field!r} (sites, widths, total_tokens)")
                return
        if not group.sites or isinstance(group.sites, str):
            problems.add(f"{prefix}.sites = {group.sites!r}: must be a non-empty list of globs")
        widths = list(group.widths) if isinstance(group.widths, (list, tuple)) else []
        if not widths or not all(is_count(w) for w in widths):
            problems.add(f"{prefix}.widths = {group.widths!r}: must be positive integers")
        if not is_positive_number(group.total_tokens):
            problems.add(
                f"{prefix}.total_tokens = {group.total_tokens!r}: must be a positive number of "
                "training tokens per SAE"
            )


def _check_archs(config, problems: Problems) -> None:
    from gemmascope import sae

    archs = config.jobs.archs
    if not archs:
        problems.add("jobs.archs is empty: give at least one architecture with sweep_values")
    for name, section in sorted(archs.items()):
        prefix = f"jobs.archs.{name}"
        if name not in sae.ARCHITECTURES:
            valid = ", ".join(sorted(sae.ARCHITECTURES))
            problems.add(f"{prefix}: unknown architecture {name!r}; valid: {valid}")
            continue
        values = section.get("sweep_values")
        if not isinstance(values, (list, tuple)) or not values:
            problems.add(f"{prefix}.sweep_values = {values!r}: must be a non-empty list")
            continue
        bad = [v for v in values if not _is_number(v)]
        if bad:
            problems.add(f"{prefix}.sweep_values = {list(values)}: {bad} are not finite numbers")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def expand(config, model_cfg, problems: Problems) -> list:
    """Every job of the study, or [] when the jobs section has problems."""
    before = len(problems.lines)
    _check_groups(config, problems)
    _check_archs(config, problems)
    if len(problems.lines) > before:
        return []
    try:
        return jobs.expand(config, model_cfg)
    except ValueError as error:
        problems.add(str(error).removeprefix("config."))
        return []


def _by_jobs(found: dict[str, list[str]], problems: Problems) -> None:
    """One problem line per message, naming the jobs it applies to."""
    for message, names in found.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        problems.add(f"{message} (job{'s' if len(names) > 1 else ''} {shown})")


def check_each_job(all_jobs: list, problems: Problems) -> None:
    """Each job through the trainer's own checks: SAE config, sweep values, token budgets."""
    from gemmascope import train
    from gemmascope.train import loop

    found: dict[str, list[str]] = {}
    for job in all_jobs:
        try:
            arch = train.config.get_architecture(job.arch)
            loop.resolve_sae_config(job, arch)
            train.config.resolve_budget(job)
        except (ValueError, KeyError) as error:
            message = str(error.args[0] if error.args else error)
            if "job_cfg." in message:  # a train-section field, shared by every job
                message = message.replace("job_cfg.", "train.")
            else:
                message = f"jobs.archs.{job.arch}: {message}"
            found.setdefault(message, []).append(job.name)
    _by_jobs(found, problems)


def check_init_from(selected: list, problems: Problems) -> None:
    """Jobs that start from another study's jobs (`jobs.init_from`) need those jobs finished.

    One line per missing file kind, naming the jobs, so an IT study whose PT study is not
    trained (or a mistyped workdir) stops before its cache stage.
    """
    from gemmascope.train import init_from

    found: dict[str, list[str]] = {}
    for job in selected:
        if not job.get("init_from"):
            continue
        lacking = init_from.missing_files(job.init_from)
        if lacking:
            parent = posixpath.dirname(str(job.init_from).rstrip("/"))
            message = (
                f"jobs.init_from: {' and '.join(lacking)} missing under {parent}/<job>: those "
                "jobs must be trained first (the study they fine-tune, --mode=train)"
            )
            found.setdefault(message, []).append(job.name)
    _by_jobs(found, problems)


def check_mesh(config, all_jobs: list, devices, problems: Problems) -> None:
    """Mesh fields; each job's mesh against the device count, its width and its batch size.

    `devices` is (device count, how to name them), or (None, "") when unknown.
    """
    n_devices, devices_text = devices
    mesh = config.mesh
    before = len(problems.lines)
    for field in ("data", "model"):
        if not (mesh[field] == -1 or is_count(mesh[field])):
            problems.add(f"mesh.{field} = {mesh[field]!r}: must be -1 (the rest) or >= 1")
    if mesh.data == -1 and mesh.model == -1:
        problems.add("mesh.data and mesh.model are both -1: only one axis may take the rest")
    if not is_count(mesh.shard_latents_from, 0):
        problems.add(
            f"mesh.shard_latents_from = {mesh.shard_latents_from!r}: must be an integer >= 0 "
            "(0 = never shard latents over every device)"
        )
    if n_devices is None or len(problems.lines) > before:
        return
    found: dict[str, list[str]] = {}
    for job in all_jobs:
        message = _mesh_problem(dict(job.mesh), job, n_devices, devices_text)
        if message:
            found.setdefault(message, []).append(job.name)
    _by_jobs(found, problems)


def _mesh_problem(shape: dict, job, n_devices: int, devices_text: str) -> str | None:
    """What keeps `job` from running on its mesh over `n_devices` devices, or None."""
    try:  # the trainer's and the plan's resolution (gemmascope.mesh)
        sizes = mesh_lib.axis_sizes(shape, n_devices)
    except ValueError:
        return (
            f"mesh: a (data={shape['data']}, model={shape['model']}) mesh does not fit "
            f"{devices_text}; set mesh.data x mesh.model to {n_devices} (-1 takes the rest)"
        )
    data, model = sizes["data"], sizes["model"]
    if job.width % model:
        return (
            f"jobs.groups: width {job.width} is not divisible by the model axis of the mesh "
            f"({model} devices); use widths that are multiples of {model} or a smaller model axis"
        )
    if job.batch_size % data:
        return (
            f"train.batch_size = {job.batch_size}: not divisible by the data axis of the mesh "
            f"({data} devices); use a multiple of {data}"
        )
    return None
