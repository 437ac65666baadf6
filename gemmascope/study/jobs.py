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

A group may restrict its architectures (`archs`, a subset of `jobs.archs`), and a *transcoder
group* (`transcoders = ("plain", "affine")`, or one of them) lists input sites `mlp_in/L`: each
becomes a transcoder of `mlp_in/L -> mlp_out/L` (docs/transcoders.md), plain or with an affine
skip connection, named `transcoder-L<layer>-w<width>-<arch>` or `transcoder_affine-...`. Both
sites must be in `config.sites` (the cache stores both); the job's `target_site`,
`sae.d_out`, `sae.pre_encoder_bias = False` and `sae.skip_connection` are set here.

With `config.jobs.init_from` (a finished study's workdir) every job is the fine-tuning of the
job of the same name there: `init_from` is set to its run folder, the budget scaled by
`config.jobs.init_token_fraction` and the sparsity warmup dropped (`_fine_tune`; Gemma Scope 2's
IT SAEs from its PT SAEs, docs/training.md#init-from).
"""

from __future__ import annotations

import fnmatch
import math

import ml_collections

from gemmascope import files, sae, train
from gemmascope.model import sites as model_sites

#: A transcoder group's kinds: `transcoders` holds some of these.
TRANSCODER_KINDS = {"plain": "transcoder", "affine": "transcoder_affine"}


def job_name(site: str, width: int, arch: str, transcoder: str = "") -> str:
    """Returns the stable job name `<kind>-L<layer>-w<width>-<arch>`.

    A transcoder's (`transcoder` "plain" or "affine", `site` its input) is
    `transcoder-L<layer>-...` or `transcoder_affine-L<layer>-...`.
    """
    kind, layer = model_sites.parse(site)
    if transcoder:
        kind = TRANSCODER_KINDS[transcoder]
    return f"{kind}-L{layer}-w{width}-{arch}"


def target_of(site: str) -> str:
    """A transcoder's target site: `mlp_out/L` for its input `mlp_in/L`."""
    _, layer = model_sites.parse(site)
    return f"{model_sites.MLP_OUT}/{layer}"


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
        group_sweeps = _group_sweeps(config, group_name, group)
        for site, width, arch_name, transcoder in _group_jobs(
            config, model_cfg, group_name, group, cached
        ):
            arch_section = config.jobs.archs[arch_name]
            job = _make_job(config, model_cfg, site, width, arch_name, arch_section, transcoder)
            job.total_tokens = int(group.total_tokens)
            if config.jobs.get("init_from"):
                _fine_tune(job, config.jobs.init_from, config.jobs.init_token_fraction)
            if arch_name in group_sweeps:
                job.sweep_values = list(group_sweeps[arch_name])
            _check_same_job(by_name.get(job.name), job)
            by_name[job.name] = job
    return [by_name[name] for name in sorted(by_name)]


def _fine_tune(job: ml_collections.ConfigDict, workdir: str, fraction: float) -> None:
    """Makes `job` the fine-tuning of the same-named job of the study in `workdir`, in place.

    It starts from that job's final params (`train.init_from`), trains on `fraction` of its
    budget (at least one token), and has no sparsity warmup: the SAE it starts from is already
    sparse, and warming λ up from 0 again would first let its L0 climb. A BatchTopK-style running
    threshold, already estimated, is updated from the first step. The lr warmup is kept (a fresh
    Adam's first steps; it costs nothing when the warmup is short against the budget).

    Raises:
        ValueError: `fraction` not in (0, 1].
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        fraction = float("nan")
    if not 0 < fraction <= 1:
        raise ValueError(
            f"config.jobs.init_token_fraction = {fraction!r} must be in (0, 1]: the share of "
            "each group's total_tokens that a job started from config.jobs.init_from trains on."
        )
    job.init_from = files.join(str(workdir), "runs", job.name)
    job.total_tokens = max(1, math.ceil(job.total_tokens * fraction))
    job.sae.sparsity_warmup_steps = 0
    job.sparsity_warmup_tokens = None  # a token warmup would override the step count
    if "threshold_start_step" in job.sae:
        job.sae.threshold_start_step = 0


def job_groups(config: ml_collections.ConfigDict, model_cfg) -> dict[str, str]:
    """{job name: the first group (by name) that holds it}, for summaries by group.

    Call it on a config that `expand` accepts.
    """
    cached = set(model_sites.resolve(model_cfg, list(config.sites)))
    groups: dict[str, str] = {}
    for group_name, group in sorted(config.jobs.groups.items()):
        for site, width, arch_name, transcoder in _group_jobs(
            config, model_cfg, group_name, group, cached
        ):
            groups.setdefault(job_name(site, width, arch_name, transcoder), group_name)
    return groups


def _group_jobs(config, model_cfg, group_name, group, cached):
    """(site, width, architecture, transcoder kind or "") of every job of one group, in order.

    Raises:
        ValueError: A width <= 0, an unknown transcoder kind or group architecture, a transcoder
            group site that is not mlp_in or whose mlp_out is not cached, or an architecture
            that does not train transcoders in a transcoder group.
    """
    transcoders = _group_transcoders(group_name, group)
    archs = _group_archs(config, group_name, group, transcoders)
    group_sites = _group_sites(config, model_cfg, group_name, group, cached)
    if transcoders:
        _check_transcoder_sites(config, group_name, group_sites, cached)
    for site in group_sites:
        for width in group.widths:
            if int(width) <= 0:
                raise ValueError(f"config.jobs.groups.{group_name}: width {width} <= 0.")
            for arch_name in archs:
                for transcoder in transcoders or ("",):
                    yield site, int(width), arch_name, transcoder


def _group_transcoders(group_name, group) -> tuple[str, ...]:
    """A group's transcoder kinds (`group.transcoders`), () for an SAE group."""
    kinds = group.get("transcoders", None) or ()
    if isinstance(kinds, str):
        kinds = (kinds,)
    bad = [kind for kind in kinds if kind not in TRANSCODER_KINDS]
    if bad:
        raise ValueError(
            f"config.jobs.groups.{group_name}.transcoders = {list(kinds)}: {bad} unknown; valid: "
            f"{sorted(TRANSCODER_KINDS)} (an mlp_in -> mlp_out transcoder without or with an "
            "affine skip connection)"
        )
    return tuple(dict.fromkeys(kinds))


def _group_archs(config, group_name, group, transcoders) -> list[str]:
    """The architectures a group trains: `group.archs` (default every one), checked."""
    archs = list(group.get("archs", None) or sorted(config.jobs.archs))
    unknown = [arch for arch in archs if arch not in config.jobs.archs]
    if unknown:
        raise ValueError(
            f"config.jobs.groups.{group_name}.archs: {unknown} are not architectures of "
            f"config.jobs.archs ({', '.join(sorted(config.jobs.archs))})."
        )
    if transcoders:
        refused = [arch for arch in archs if not sae.supports_transcoders(sae.get(arch))]
        if refused:
            valid = sorted(n for n, a in sae.ARCHITECTURES.items() if sae.supports_transcoders(a))
            raise ValueError(
                f"config.jobs.groups.{group_name} trains transcoders, which {refused} cannot "
                f"train (architectures that do: {valid}); set the group's archs to those of "
                f"config.jobs.archs that do."
            )
    return sorted(archs)


def _check_transcoder_sites(config, group_name, group_sites, cached) -> None:
    """A transcoder group reads mlp_in/L and writes mlp_out/L, both cached."""
    not_inputs = [s for s in group_sites if model_sites.parse(s)[0] != model_sites.MLP_IN]
    if not_inputs:
        raise ValueError(
            f"config.jobs.groups.{group_name} is a transcoder group, whose sites are the "
            f"transcoders' inputs mlp_in/L (each maps mlp_in/L -> mlp_out/L), not {not_inputs}."
        )
    missing = [target_of(s) for s in group_sites if target_of(s) not in cached]
    if missing:
        raise ValueError(
            f"config.jobs.groups.{group_name}: its transcoders write {missing}, which "
            f"config.sites ({list(config.sites)}) does not cache; add them."
        )


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
    "target_site",
    "init_from",
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


def _make_job(config, model_cfg, site, width, arch_name, arch_section, transcoder=""):
    """Builds one job config from the study's train defaults and the architecture's section.

    A transcoder job (`transcoder` "plain" or "affine") reads `site` (mlp_in/L) and writes
    `target_site` (mlp_out/L); its SAE config gets `d_out`, no pre-encoder bias and the skip
    connection of its kind (docs/transcoders.md).
    """
    if not arch_section.sweep_values:
        raise ValueError(f"config.jobs.archs.{arch_name}.sweep_values is empty.")
    job = train.default_config(arch_name)
    job.update({k: v for k, v in config.train.to_dict().items() if k not in PER_JOB_FIELDS})
    if "sae" in arch_section and arch_section.sae:
        job.sae.update(arch_section.sae.to_dict())
    job.name = job_name(site, width, arch_name, transcoder)
    job.site = site
    if transcoder:
        job.target_site = target_of(site)
        job.sae.d_out = int(model_sites.dim(model_cfg, job.target_site))
        job.sae.pre_encoder_bias = False
        job.sae.skip_connection = transcoder == "affine"
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
    """Returns the sorted distinct sites the jobs train on (a transcoder's input and target)."""
    sites = {job.site for job in selected}
    sites |= {job.target_site for job in selected if job.get("target_site")}
    return sorted(sites)
