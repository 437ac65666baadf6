"""One validation pass over a study, before any stage works: every field, every job, every input.

Synopsis:
    from gemmascope import study
    checked = study.validate(config, "all", workdir="/tmp/w", devices=(8, 8))
    checked.model_cfg, checked.jobs, checked.selected, checked.notes
    study.validate(config, "plan")      # plan mode runs the same checks, for its accelerator

`validate` checks the resolved study config and every job it expands into, and raises one
`ConfigError` listing every problem found, each naming the field (`train.batch_size`), the bad
value and what is valid; nothing has been written when it raises. It reuses the packages' own
checks (data.check_config, activations' check_config, eval's validate, each architecture's
validate and sweep-value checks, the train budgets) and adds what only the whole study can
know: widths and batch sizes against the mesh and the device count, sites against the model,
input files that must exist and be whole (model config.json and safetensors, corpus file,
released params.npz), --jobs selectors and --import_released entries.

Which inputs are read depends on the mode: the model weights and the corpus by cache, eval and
a streaming train; plan mode reads neither, so there a missing input file is a note in the plan
(it may be made on another machine than the run), not an error.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from gemmascope import files
from gemmascope.study import integrity, job_checks, jobs
from gemmascope.study.errors import ConfigError
from gemmascope.study.job_checks import Problems

SECTIONS = (
    "name", "model", "data", "sites", "cache", "source", "train", "jobs", "eval", "inspect", "mesh"
)  # fmt: skip
MODEL_DTYPES = ("float32", "bfloat16")
SOURCES = ("cache", "stream")


@dataclasses.dataclass
class CheckedStudy:
    """What validation established about a study, for the stages to use.

    Attributes:
        model_cfg: The model's config (preset or config.json).
        jobs: Every job of the study, sorted by name.
        selected: The jobs `--jobs` selects (all of them without selectors).
        stages: The stages the mode runs, in order.
        notes: Things plan mode could not check here (missing input files), one line each.
    """

    model_cfg: object
    jobs: list
    selected: list
    stages: tuple[str, ...]
    notes: list[str]


def stages_of(mode: str, source: str, inspect_in_all: bool = False) -> tuple[str, ...]:
    """The stages a mode runs.

    "all" is cache (for a cache source), train, export, eval, then inspect when
    `inspect_in_all` (`config.inspect.in_all`).
    """
    if mode == "all":
        after_cache = ("train", "export", "eval") + (("inspect",) if inspect_in_all else ())
        return ("cache", *after_cache) if source == "cache" else after_cache
    return () if mode == "plan" else (mode,)


def validate(
    config: ml_collections.ConfigDict,
    mode: str,
    *,
    workdir: str | None = None,
    selectors: list[str] | None = None,
    released: list[str] | None = None,
    devices: tuple[int, int] | None = None,
) -> CheckedStudy:
    """Checks the whole study for `mode`; raises one ConfigError listing every problem.

    Args:
        config: The resolved study config (overrides applied).
        mode: One of `study.MODES`.
        workdir: The --workdir (required by every mode but plan).
        selectors: The --jobs names or globs.
        released: The --import_released "PATH@SITE" entries.
        devices: (global, local) device counts of the run; None in plan mode, which checks
            meshes against `config.plan` (chips x devices per chip).

    Returns:
        The CheckedStudy (model config, jobs, selected jobs, stages, notes).

    Raises:
        ConfigError: Every problem found, one line each; nothing has been written.
    """
    problems = Problems()
    _check_sections(config, mode)
    stages = stages_of(mode, str(config.source), config.inspect.get("in_all") is True)
    plan_only = mode == "plan"
    notes: list[str] = []
    _check_mode_and_workdir(mode, workdir, selectors, config.source, problems)
    model_cfg = _check_model(config, stages, plan_only, problems, notes)
    _check_data(config, stages, plan_only, problems, notes)
    with problems.catch():
        from gemmascope.activations import config as cache_config

        cache_config.check_config(config.cache)
    train_ok = _check_train_section(config.train, problems)
    if devices:
        n_devices, n_local = devices
        devices_text = f"the {n_devices} devices of this run"
    else:
        n_devices, n_local, devices_text = _planned_devices(config, problems)
    _check_eval(config, stages, n_local, problems)
    all_jobs, selected = [], []
    if model_cfg is not None and _check_sites(config, model_cfg, problems):
        all_jobs = job_checks.expand(config, model_cfg, problems)
        if train_ok:
            job_checks.check_each_job(all_jobs, problems)
        mesh_jobs = all_jobs if train_ok else []
        job_checks.check_mesh(config, mesh_jobs, (n_devices, devices_text), problems)
        with problems.catch():
            selected = jobs.select(all_jobs, selectors)
        if "train" in stages:
            job_checks.check_init_from(selected, problems)
        _check_released(released or [], model_cfg, problems, plan_only, notes)
    if problems.lines:
        raise ConfigError(_report(problems.lines))
    return CheckedStudy(model_cfg, all_jobs, selected, stages, notes)


def _report(lines: list[str]) -> str:
    count = f"{len(lines)} problem{'s' if len(lines) > 1 else ''}"
    return (
        f"the study config is not valid ({count}; nothing was run or written):\n"
        + "\n".join(f"  - {line}" for line in lines)
        + "\nFix the experiment file or the --config.<field>=... overrides and rerun; "
        "--show_config prints every field with its value."
    )


def _check_sections(config: ml_collections.ConfigDict, mode: str) -> None:
    """Raises at once for a config that is not a study config (nothing else can be checked)."""
    from gemmascope.study.stages import MODES

    if mode not in MODES:
        raise ConfigError(f"--mode={mode}: unknown mode; valid modes: {', '.join(MODES)}.")
    missing = [name for name in SECTIONS + ("plan",) if name not in config]
    if missing:
        raise ConfigError(
            f"the config has no {', '.join(missing)}: a study config starts from "
            "gemmascope.study.base_config() (see experiments/tiny_demo.py)."
        )


def _check_mode_and_workdir(mode, workdir, selectors, source, problems: Problems) -> None:
    if source not in SOURCES:
        problems.add(f"source = {source!r}: must be one of {', '.join(SOURCES)}")
    if mode == "eval" and any(s.strip() for s in selectors or []):
        problems.add(
            "--jobs does not apply to --mode=eval: evaluation covers every SAE in the workdir's "
            "saes/ (one metric table for the study); drop --jobs"
        )
    if mode == "inspect" and any(s.strip() for s in selectors or []):
        problems.add(
            "--jobs does not apply to --mode=inspect: it covers every SAE in the workdir's saes/ "
            "(one site for the study); drop --jobs"
        )
    if mode == "plan":
        return
    if not workdir:
        problems.add(f"--workdir is required for --mode={mode}")
    elif files.is_url(workdir) and not workdir.startswith("gs://"):
        problems.add(
            f"--workdir={workdir}: unsupported URL scheme; use a local path or a "
            "gs://bucket/prefix URL"
        )


def _reads_model(stages: tuple[str, ...], source: str) -> bool:
    """Whether the stages load the model weights and read the corpus."""
    reads = {"cache", "eval", "inspect"} & set(stages)
    return bool(reads) or ("train" in stages and source == "stream")


def _check_model(config, stages, plan_only, problems: Problems, notes: list[str]):
    """Checks the model section; returns the model config (preset or config.json) or None."""
    from gemmascope import model

    section = config.model
    if section.dtype not in MODEL_DTYPES:
        problems.add(f"model.dtype = {section.dtype!r}: must be one of {', '.join(MODEL_DTYPES)}")
    preset_cfg = None
    if section.preset:
        with problems.catch("model.preset: "):
            preset_cfg = model.presets.get(section.preset)
    weights = _reads_model(stages, str(config.source))
    needs_files = weights or not section.preset
    path_problems: list[str] = []
    folder_cfg = _read_model_folder(section.path, weights, path_problems)
    if path_problems and needs_files and not (plan_only and section.preset):
        for line in path_problems:
            problems.add(line)
    elif path_problems:
        notes.extend(path_problems)
    if preset_cfg is not None and folder_cfg is not None:
        fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim")
        differ = [f for f in fields if getattr(preset_cfg, f) != getattr(folder_cfg, f)]
        if differ:
            problems.add(
                f"model.preset = {section.preset!r} does not describe the model at model.path = "
                f"{section.path!r} (they differ in {', '.join(differ)}); fix one of them"
            )
    return preset_cfg if section.preset else folder_cfg


def _read_model_folder(path: str, weights: bool, problems: list[str]):
    """The config of the HF folder `path`, checking its files; problems go to `problems`."""
    from gemmascope import model

    if not isinstance(path, str) or not path:
        problems.append("model.path is empty: give an HF Gemma folder or 'embedded'")
        return None
    folder = model.resolve_path(path)
    if not os.path.isdir(folder):
        problems.append(
            f"model.path = {path!r}: no such folder (an HF Gemma 2 or 3 folder with config.json, "
            "model.safetensors and the tokenizer files, or 'embedded')"
        )
        return None
    config_path = os.path.join(folder, "config.json")
    damage = integrity.json_problem(config_path)
    if damage:
        problems.append(f"model.path: {config_path} is {damage}; download the model again")
        return None
    try:
        model_cfg = model.read_config(folder)
    except (ValueError, KeyError, TypeError) as error:
        problems.append(f"model.path: {config_path} is not a supported Gemma config.json ({error})")
        return None
    if weights:
        for line in integrity.safetensors_problems(folder):
            problems.append(f"model.path: {line}; download the model again")
        tokenizer_files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
        if not any(os.path.isfile(os.path.join(folder, name)) for name in tokenizer_files):
            problems.append(f"model.path: no tokenizer in {folder} ({', '.join(tokenizer_files)})")
    return model_cfg


def _check_data(config, stages, plan_only, problems: Problems, notes: list[str]) -> None:
    """The data section: every field, and the corpus file when a stage reads it."""
    from gemmascope import data
    from gemmascope.data import corpus

    section = config.data
    with problems.catch():
        data.check_config(section)
    held_out = [stage for stage in ("eval", "inspect") if stage in stages]
    if held_out and section.eval_fraction == 0:
        problems.add(
            f"data.eval_fraction = 0: the {' and '.join(held_out)} stage needs held-out text; use "
            "a fraction in (0, 1)"
        )
    path_problems = []
    try:
        local = corpus.local_file(section.corpus)
    except (FileNotFoundError, ValueError) as error:
        path_problems.append(f"data.corpus = {section.corpus!r}: {error}")
        local = None
    if local is not None:
        try:
            with open(local, "rb") as f:
                f.read(1)
        except OSError as error:
            path_problems.append(f"data.corpus = {section.corpus!r}: cannot be read ({error})")
    elif not path_problems and section.eval_split == "tail":
        problems.add(
            f"data.eval_split = 'tail' needs a local corpus file, and data.corpus = "
            f"{section.corpus!r} is a hub dataset: download it to a .jsonl/.parquet file, or use "
            "eval_split='random'"
        )
    if plan_only or not _reads_model(stages, str(config.source)):
        notes.extend(path_problems)
    else:
        for line in path_problems:
            problems.add(line)


def _check_train_section(train, problems: Problems) -> bool:
    """The study's train defaults (per-job fields are checked on the jobs); True if valid."""
    before = len(problems.lines)
    if not job_checks.is_count(train.batch_size):
        problems.add(
            f"train.batch_size = {train.batch_size!r}: must be a positive integer (activations "
            "per optimizer step; Gemma Scope: 4096)"
        )
    for field in ("log_every_tokens", "ckpt_every_tokens", "dead_window_tokens"):
        if not job_checks.is_positive_number(train[field]):
            problems.add(f"train.{field} = {train[field]!r}: must be a positive number of tokens")
    if not job_checks.is_count(train.keep_checkpoints):
        problems.add(
            f"train.keep_checkpoints = {train.keep_checkpoints!r}: must be an integer >= 1"
        )
    seeds = list(train.seeds) if isinstance(train.seeds, (list, tuple)) else None
    if not seeds or not all(job_checks.is_count(seed, 0) for seed in seeds):
        problems.add(f"train.seeds = {train.seeds!r}: must be a non-empty list of integers >= 0")
    for field in ("lr_warmup_tokens", "sparsity_warmup_tokens"):
        value = train.get(field)
        if value is not None and not (job_checks.is_positive_number(value) or value == 0):
            problems.add(f"train.{field} = {value!r}: must be None or a number of tokens >= 0")
    value = train.get("members_per_pass")
    if value is not None and not job_checks.is_count(value, 0):
        problems.add(f"train.members_per_pass = {value!r}: must be None or an integer >= 0")
    value = train.get("block_tokens")
    if value is not None and job_checks.is_count(train.batch_size):
        from gemmascope.sae import token_blocks

        try:
            token_blocks.check_block_tokens(value, train.batch_size)
        except ValueError as error:
            problems.add(f"train.{error}")
    return len(problems.lines) == before


def _planned_devices(config, problems: Problems) -> tuple[int | None, None, str]:
    """(devices, None, their name) of the planned run: plan.n_chips x devices per chip."""
    from gemmascope.plan import accelerators

    plan = config.plan
    if not job_checks.is_count(plan.n_chips):
        problems.add(f"plan.n_chips = {plan.n_chips!r}: must be a positive integer")
    if not (job_checks.is_positive_number(plan.mfu) and plan.mfu <= 1):
        problems.add(f"plan.mfu = {plan.mfu!r}: must be a fraction in (0, 1]")
    try:
        chip = accelerators.get(plan.accelerator)
    except ValueError as error:
        problems.add(f"plan.accelerator: {error}")
        return None, None, ""
    if not job_checks.is_count(plan.n_chips):
        return None, None, ""
    n_devices = int(plan.n_chips) * chip.devices_per_chip
    text = f"the {n_devices} devices of the plan ({plan.n_chips} x {plan.accelerator} chips)"
    return n_devices, None, text  # plan mode reports the LM's model_parallel itself (lm_memory)


def _check_eval(config, stages, n_local: int | None, problems: Problems) -> None:
    """The eval and inspect sections, and each LM model_parallel against the local devices."""
    from gemmascope.eval import config as eval_config
    from gemmascope.inspect import config as inspect_config

    with problems.catch():
        eval_config.validate(config.eval)
    with problems.catch():
        inspect_config.validate(config.inspect)
    uses = {"cache": "cache" in stages or ("train" in stages and config.source == "stream")}
    uses["eval"] = "eval" in stages
    uses["inspect"] = "inspect" in stages
    for section, used in uses.items():
        value = config[section].get("model_parallel", 1)
        if not used or n_local is None or not job_checks.is_count(value):
            continue
        if n_local % value:
            valid = [m for m in range(1, n_local + 1) if n_local % m == 0]
            problems.add(
                f"{section}.model_parallel = {value}: does not divide the {n_local} local "
                f"devices of this process; valid values: {valid}"
            )


def _check_sites(config, model_cfg, problems: Problems) -> bool:
    """The sites to cache against the model; True if they are valid."""
    from gemmascope.model import sites as model_sites

    try:
        resolved = model_sites.resolve(model_cfg, list(config.sites))
    except ValueError as error:
        problems.add(f"sites = {list(config.sites)}: {error}")
        return False
    if not resolved:
        problems.add(f"sites = {list(config.sites)}: matches no site of the model")
    return bool(resolved)


def _check_released(entries, model_cfg, problems: Problems, plan_only, notes) -> None:
    """--import_released entries: PATH@SITE syntax, a site of the model, a readable npz."""
    from gemmascope.export import gs2_format
    from gemmascope.model import sites as model_sites
    from gemmascope.study import stages

    for entry in entries:
        try:
            path, site = stages.parse_released(entry)
            model_sites.check(model_cfg, site)
        except ValueError as error:
            problems.add(f"--import_released={entry}: {error}")
            continue
        if not files.exists(path):
            line = f"--import_released={entry}: {path} does not exist"
            (notes.append(line) if plan_only else problems.add(line))
            continue
        if gs2_format.is_release(path):
            _check_release_folder(entry, path, site, model_cfg, problems)
            continue
        damage = integrity.npz_problem(path)
        if damage:
            problems.add(f"--import_released={entry}: {path} is {damage}")
            continue
        try:
            d_in, _ = integrity.npz_member_shape(path, "W_enc", "w_enc")
        except ValueError as error:
            problems.add(f"--import_released={entry}: {error}")
            continue
        if d_in != model_sites.dim(model_cfg, site):
            problems.add(
                f"--import_released={entry}: W_enc has d_in {d_in}, but site {site} has "
                f"{model_sites.dim(model_cfg, site)}; is it the right site or model?"
            )


def _check_release_folder(entry, path, site, model_cfg, problems: Problems) -> None:
    """A Gemma Scope 2 folder: its hook points name `site` (the input), widths fit the model."""
    from gemmascope.export import gs2_format
    from gemmascope.model import sites as model_sites

    try:
        info = gs2_format.describe(path)
    except (ValueError, FileNotFoundError) as error:
        problems.add(f"--import_released={entry}: {error}")
        return
    if info.site != site:
        problems.add(
            f"--import_released={entry}: the folder's hf_hook_point_in is the hook of "
            f"{info.site}, not {site}; give @{info.site}"
        )
        return
    widths = [("w_enc", "d_in", site, info.d_in)]
    if info.target_site is not None:
        try:
            model_sites.check(model_cfg, info.target_site)
        except ValueError as error:
            problems.add(f"--import_released={entry}: hf_hook_point_out: {error}")
            return
        widths.append(("w_dec", "d_out", info.target_site, info.d_out))
    for tensor, name, where, got in widths:
        if got != model_sites.dim(model_cfg, where):
            problems.add(
                f"--import_released={entry}: {tensor} has {name} {got}, but site {where} has "
                f"{model_sites.dim(model_cfg, where)}; is it the right site or model?"
            )
