"""Expands a study config into training jobs with stable names.

Synopsis:
    from gemmascope.study import jobs                 # also re-exported as study.expand, ...
    all_jobs = jobs.expand(config, model_cfg)         # list of train job ConfigDicts, sorted
    chosen = jobs.select(all_jobs, ["resid_post-*", "mlp_out-L3-w512-gated"])
    jobs.job_name("resid_post/12", 16384, "jumprelu") # "resid_post-L12-w16384-jumprelu"
    jobs.sites_of(chosen)                             # the distinct sites they train on
    jobs.job_groups(config, model_cfg)                # {job name: its group}

A job is one (site, width, architecture): the S sparsity settings of the architecture's sweep are
stacked on a leading axis inside the job and share every batch (docs/concepts.md). The study config
lists named groups, each a set of site globs x widths with a token budget (and optionally its own
sweep values per architecture, `sweep_values.<arch>`), and named architectures, each with its sweep
values and SAE overrides; every group x site x width x architecture is one job. The same job reached
from two groups is an error unless both give it the same budget and sweep values.
"""

from __future__ import annotations

import fnmatch

import ml_collections

from gemmascope import sae, train
from gemmascope.model import sites as model_sites


def job_name(site: str, width: int, arch: str) -> str:
    """Returns the stable job name `<kind>-L<layer>-w<width>-<arch>`."""
    kind, layer = model_sites.parse(site)
    return f"{kind}-L{layer}-w{width}-{arch}"


def mesh_shape(mesh_section: ml_collections.ConfigDict, width: int) -> tuple[int, int]:
    """Returns the (data, model) mesh shape for an SAE of `width` latents.

    Widths >= `shard_latents_from` (when non-zero) shard latents over every device, the Gemma Scope
    rule (docs/recipe.md#sharding); narrower SAEs use (mesh.data, mesh.model). -1 means "all the
    rest".
    """
    if mesh_section.shard_latents_from and width >= mesh_section.shard_latents_from:
        return (1, -1)
    return (int(mesh_section.data), int(mesh_section.model))


def expand(config: ml_collections.ConfigDict, model_cfg) -> list[ml_collections.ConfigDict]:
    """Expands `config.jobs` into one train job config per (site, width, architecture).

    Args:
        config: A study config (gemmascope.study.base_config() schema).
        model_cfg: The model's GemmaConfig (resolves site globs and their widths).

    Returns:
        Job configs (gemmascope.train.default_config() schema) sorted by name.

    Raises:
        ValueError: No groups or architectures, an unknown architecture, a group site that is
            not cached by `config.sites`, a width <= 0, an empty sweep, or one job with two
            different budgets.
    """
    if not config.jobs.groups or not config.jobs.archs:
        raise ValueError("config.jobs needs at least one group and one architecture.")
    for arch in config.jobs.archs:
        if arch not in sae.ARCHITECTURES:
            raise ValueError(
                f"config.jobs.archs.{arch}: unknown architecture; valid: "
                f"{', '.join(sorted(sae.ARCHITECTURES))}."
            )
    cached = set(model_sites.resolve(model_cfg, list(config.sites)))
    by_name: dict[str, ml_collections.ConfigDict] = {}
    for group_name, group in sorted(config.jobs.groups.items()):
        group_sites = _group_sites(config, model_cfg, group_name, group, cached)
        group_sweeps = _group_sweeps(config, group_name, group)
        for site in group_sites:
            for width in group.widths:
                if int(width) <= 0:
                    raise ValueError(f"config.jobs.groups.{group_name}: width {width} <= 0.")
                for arch_name, arch_section in sorted(config.jobs.archs.items()):
                    job = _make_job(config, model_cfg, site, int(width), arch_name, arch_section)
                    job.total_tokens = int(group.total_tokens)
                    if arch_name in group_sweeps:
                        job.sweep_values = list(group_sweeps[arch_name])
                    _check_same_job(by_name.get(job.name), job)
                    by_name[job.name] = job
    return [by_name[name] for name in sorted(by_name)]


def job_groups(config: ml_collections.ConfigDict, model_cfg) -> dict[str, str]:
    """{job name: the first group (by name) that holds it}, for summaries by group.

    Call it on a config that `expand` accepts.
    """
    cached = set(model_sites.resolve(model_cfg, list(config.sites)))
    groups: dict[str, str] = {}
    for group_name, group in sorted(config.jobs.groups.items()):
        for site in _group_sites(config, model_cfg, group_name, group, cached):
            for width in group.widths:
                for arch_name in sorted(config.jobs.archs):
                    groups.setdefault(job_name(site, int(width), arch_name), group_name)
    return groups


# Job fields that expand() sets per job; the study's `train` section holds every other field.
PER_JOB_FIELDS = (
    "name",
    "site",
    "model",
    "d_in",
    "arch",
    "sae",
    "width",
    "sweep_values",
    "total_tokens",
    "mesh",
)


def _group_sweeps(config, group_name, group) -> dict:
    """A group's own sweep values per architecture (`group.sweep_values`, optional)."""
    sweeps = group.get("sweep_values", None) or {}
    for arch, values in sweeps.items():
        if arch not in config.jobs.archs:
            raise ValueError(
                f"config.jobs.groups.{group_name}.sweep_values.{arch}: not an architecture of "
                f"config.jobs.archs ({', '.join(sorted(config.jobs.archs))})."
            )
        if not values:
            raise ValueError(f"config.jobs.groups.{group_name}.sweep_values.{arch} is empty.")
    return dict(sweeps)


def _check_same_job(previous, job) -> None:
    """Raises ValueError if a job reached from two groups differs in budget or sweep values."""
    if previous is None:
        return
    if previous.total_tokens != job.total_tokens:
        raise ValueError(
            f"Job {job.name} appears in two groups with budgets "
            f"{previous.total_tokens:g} and {job.total_tokens:g} tokens."
        )
    if list(previous.sweep_values) != list(job.sweep_values):
        raise ValueError(
            f"Job {job.name} appears in two groups with sweep values "
            f"{list(previous.sweep_values)} and {list(job.sweep_values)}."
        )


def _group_sites(config, model_cfg, group_name, group, cached) -> list[str]:
    """A group's sites: its globs match among the cached sites; plain names must be cached."""
    group_sites = set()
    for pattern in group.sites:
        matched = model_sites.resolve(model_cfg, [pattern])
        if any(c in pattern for c in "*?["):
            matched = [site for site in matched if site in cached]
        missing = sorted(set(matched) - cached)
        if missing:
            raise ValueError(
                f"config.jobs.groups.{group_name} trains on {missing}, which config.sites "
                f"({list(config.sites)}) does not cache."
            )
        group_sites.update(matched)
    if not group_sites:
        raise ValueError(f"config.jobs.groups.{group_name}: {list(group.sites)} match no site.")
    return sorted(group_sites, key=model_sites.sort_key)


def _make_job(config, model_cfg, site, width, arch_name, arch_section):
    """Builds one job config from the study's train defaults and the architecture's section."""
    if not arch_section.sweep_values:
        raise ValueError(f"config.jobs.archs.{arch_name}.sweep_values is empty.")
    job = train.default_config(arch_name)
    job.update({k: v for k, v in config.train.to_dict().items() if k not in PER_JOB_FIELDS})
    if "sae" in arch_section and arch_section.sae:
        job.sae.update(arch_section.sae.to_dict())
    job.name = job_name(site, width, arch_name)
    job.site = site
    job.model = config.model.preset or config.model.path
    job.d_in = model_sites.dim(model_cfg, site)
    job.width = width
    job.sweep_values = list(arch_section.sweep_values)
    if "k_max" in job.sae and job.sae.k_max is None:
        # TopK-style SAEs size their static top-k by k_max; a sweep over k needs the largest k.
        job.sae.k_max = int(max(job.sweep_values))
    data, model = mesh_shape(config.mesh, width)
    job.mesh = [("data", data), ("model", model)]
    return job


def select(
    all_jobs: list[ml_collections.ConfigDict], selectors: list[str] | None
) -> list[ml_collections.ConfigDict]:
    """Returns the jobs whose names match any selector (names or globs, comma-separated).

    Args:
        all_jobs: Expanded jobs.
        selectors: e.g. ["resid_post-*", "mlp_out-L1-w256-gated,attn_z-L0-*"]; None or empty
            selects every job.

    Raises:
        ValueError: A selector that matches no job (the message lists valid names).
    """
    patterns = [p.strip() for s in (selectors or []) for p in s.split(",") if p.strip()]
    if not patterns:
        return list(all_jobs)
    names = [job.name for job in all_jobs]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            shown = ", ".join(names[:20]) + (
                f", ... ({len(names)} jobs)" if len(names) > 20 else ""
            )
            raise ValueError(f"--jobs {pattern!r} matches no job; valid jobs: {shown}.")
    return [job for job in all_jobs if any(fnmatch.fnmatch(job.name, p) for p in patterns)]


def sites_of(selected: list[ml_collections.ConfigDict]) -> list[str]:
    """Returns the sorted distinct sites the jobs train on."""
    return sorted({job.site for job in selected})
