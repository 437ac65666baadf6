"""The pipeline stages behind `python -m gemmascope`: cache -> train -> export -> eval, resumable.

Synopsis:
    from gemmascope import study
    study.run(config, workdir, mode="all", job_selectors=["resid_post-*"])
    study.check_workdir_config(config, workdir)     # writes or checks workdir/config.json

Before any stage works, `run` validates the whole study (gemmascope/study/validate.py), takes
the workdir's lock (lock.py) and writes or checks its config.json (workdir.py). Every stage skips
or resumes finished work, so the same command rerun after a kill finishes the study: the cache
writer resumes from its atomic progress record (and `--mode=cache` also verifies finished sites
and recomputes damaged shards), a job whose `runs/<job>/final_params.npz` and job.json are whole
is skipped and any other resumes from its last orbax checkpoint, export rewrites its (atomic)
files, and evaluation rewrites the table atomically.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from gemmascope import files
from gemmascope.study import errors, integrity, jobs, lock, validate
from gemmascope.study import workdir as workdir_state
from gemmascope.study.errors import WorkdirError

if TYPE_CHECKING:  # the stages import the heavy packages only when a mode needs them
    from gemmascope.activations import ActivationSource

MODES = ("plan", "cache", "train", "eval", "export", "inspect", "all")


def run(
    config: ml_collections.ConfigDict,
    workdir: str | None,
    mode: str,
    job_selectors: list[str] | None = None,
    released: list[str] | None = None,
    plan_jobs: bool = False,
) -> None:
    """Runs `mode` for the study `config` in `workdir`.

    Everything is validated first (`study.validate`: the config, every job, the flags and the
    input files); then, except in plan mode, the workdir (cache, eval, all) or the selected jobs
    (train, export) are locked (`study.lock`), config.json is written or checked, and each
    stage's prerequisites are checked before any stage starts.

    Args:
        config: A study config.
        workdir: The study's folder, a local path or a `gs://bucket/prefix` URL; unused by plan
            mode.
        mode: One of MODES. "all" runs cache, train, export and eval in that order, then
            inspect when `config.inspect.in_all`.
        job_selectors: Job names or globs (default: every job).
        released: "PATH@SITE" of released Gemma Scope params.npz files to import into
            workdir/saes/ (modes export, eval, inspect and all), evaluated and inspected
            alongside the study's SAEs.
        plan_jobs: Plan mode prints one row per job (default: one per group and architecture).

    Raises:
        ConfigError: Anything invalid in the config or the flags (every problem listed).
        WorkdirError: The workdir holds another study, another run holds its lock, or a stage's
            prerequisite is missing.
    """
    devices = None if mode == "plan" else (jax.device_count(), jax.local_device_count())
    checked = validate.validate(
        config, mode, workdir=workdir, selectors=job_selectors, released=released, devices=devices
    )
    if mode == "plan":
        from gemmascope import plan

        if is_main_process():
            study_plan = plan.make_plan(config, checked.model_cfg, checked.selected)
            print(plan.format_plan(study_plan, all_jobs=plan_jobs, notes=checked.notes))
        return
    # cache, eval, inspect and imports write what the whole study shares; train and export of
    # selected jobs only those jobs' folders, so the launchers' parallel tasks on disjoint jobs
    # may run side by side (without --jobs, every job: the whole workdir, one lock).
    shared = bool({"cache", "eval", "inspect"} & set(checked.stages)) or bool(released)
    by_job = job_selectors and not shared
    with lock.hold(workdir, [job.name for job in checked.selected] if by_job else None):
        for change in check_workdir_config(config, workdir):
            _say(f"config.json updated (no stage had used it yet): {change}")
        _check_prerequisites(config, workdir, checked, released)
        _run_stages(config, workdir, checked, job_selectors, released)


def _run_stages(config, workdir, checked, job_selectors, released) -> None:
    selected = checked.selected
    if "cache" in checked.stages:
        with _stage("cache"):
            sites = jobs.sites_of(selected) if job_selectors else None
            run_cache(config, workdir, sites, verify=checked.stages == ("cache",))
    if "train" in checked.stages:
        with _stage(f"train ({len(selected)} jobs)"):
            finished = run_train(config, workdir, selected)
        if not finished:  # preempted: a checkpoint is saved; the same command resumes
            return
    if released and {"export", "eval", "inspect"} & set(checked.stages):
        with _stage(f"import ({len(released)} released SAEs)"):
            run_import(config, checked.model_cfg, workdir, released)
    if "export" in checked.stages:
        with _stage("export"):
            run_export(workdir, selected)
    if "eval" in checked.stages:
        with _stage("eval"):
            run_eval(config, workdir)
        if is_main_process():
            print(summary(workdir), flush=True)
    if "inspect" in checked.stages:
        with _stage("inspect"):
            index = run_inspect(config, workdir)
        if is_main_process():
            print(f"Inspect site: {index} (open it in a browser; docs/inspect.md)", flush=True)


def _check_prerequisites(config, workdir, checked, released) -> None:
    """Raises WorkdirError when a stage of this run lacks what an earlier mode produces."""
    stages = checked.stages
    if "train" in stages and "cache" not in stages and config.source == "cache":
        workdir_state.require_cache(workdir, jobs.sites_of(checked.selected))
    if stages == ("export",) and not released:
        states = [workdir_state.job_problem(workdir, job.name) for job in checked.selected]
        if all(problem == "not trained" for problem in states):
            raise WorkdirError(
                f"none of the {len(states)} selected jobs is trained in "
                f"{files.join(workdir, 'runs')}: run the same command with --mode=train first."
            )
    if stages in (("eval",), ("inspect",)) and not released:
        from gemmascope.export import layout

        if not layout.list_saes(workdir):
            verb = "evaluate" if stages == ("eval",) else "inspect"
            raise WorkdirError(
                f"there are no SAEs in {files.join(workdir, 'saes')} to {verb}: run the same "
                "command with --mode=train and then --mode=export first (or --mode=all), or "
                "give --import_released."
            )


def _say(message: str) -> None:
    if is_main_process():
        print(f"[gemmascope] {message}", flush=True)


@contextlib.contextmanager
def _stage(name: str):
    """Prints when a stage starts and how long it took (process 0 only)."""
    start = time.time()
    _say(f"{name}...")
    yield
    _say(f"{name} done in {time.time() - start:.1f} s")


def is_main_process() -> bool:
    """True on the process that writes shared files and prints."""
    return jax.process_index() == 0


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Writes workdir/config.json, or checks that the workdir holds this same study.

    A field no stage has consumed yet may change (config.json is rewritten); see
    gemmascope/study/workdir.py. Sections in `study.NON_STUDY_SECTIONS` (plan, eval, inspect,
    distributed) and fields in `study.NON_STUDY_FIELDS` (cache.model_parallel) may always differ.

    Returns:
        One line per accepted change ([] if none).

    Raises:
        WorkdirError: A consumed field differs; the message names each with both values.
    """
    return workdir_state.check_config(config, workdir, write=is_main_process())


def run_cache(
    config: ml_collections.ConfigDict, workdir: str, sites: list[str] | None, verify: bool = False
) -> None:
    """Builds (or finishes) the activation cache for `sites` (default: config.sites).

    With `verify` (`--mode=cache`), the shards of finished sites are checked too, and damaged
    ones are computed again (activations.build_cache).
    """
    from gemmascope import activations

    if sites is not None:
        config = ml_collections.ConfigDict(config.to_dict())
        config.sites = tuple(sites)
    logging.info("Cache: %s", list(config.sites))
    activations.build_cache(config, workdir, verify=verify)


def run_train(
    config: ml_collections.ConfigDict, workdir: str, selected: list[ml_collections.ConfigDict]
) -> bool:
    """Trains every selected job that is not finished yet (resuming unfinished ones).

    A job is finished when its runs/<job>/final_params.npz and job.json are whole; a damaged
    one is written again from the job's last checkpoint. Activations come from the cache, or
    with `config.source == "stream"` from the model itself (loaded once for all jobs) through a
    shuffle buffer.

    Returns:
        False when a job was preempted (its checkpoint is saved; no later job is started, and
        rerunning the same command resumes it), else True.

    Raises:
        CheckpointError: Orbax could not save or restore a job's checkpoints (names the folder
            and the cause).
    """
    from gemmascope import train

    open_source = _source_opener(config, workdir)
    for index, job in enumerate(selected):
        where = f"train {index + 1}/{len(selected)}: {job.name}"
        problem = workdir_state.job_problem(workdir, job.name)
        if problem is None:
            _say(f"{where} already done")
            continue
        if problem != "not trained":
            _say(f"{where}: {problem}; writing it again from the job's last checkpoint")
        _say(where)
        try:
            result = train.train_sweep(job, _job_source(open_source, job), workdir)
        except Exception as error:
            if errors.touches(error, "orbax") and not isinstance(error, errors.StudyError):
                folder = files.join(workdir, "runs", job.name, "checkpoints")
                raise errors.CheckpointError(
                    f"job {job.name}: saving or restoring its checkpoints in {folder} failed: "
                    f"{errors.root_cause(error)}. Fix the cause (disk space, permissions, another "
                    "run writing the same workdir) and rerun the same command: the job resumes "
                    "from its last complete checkpoint."
                ) from error
            raise
        if result.preempted:
            _say(f"preempted in {job.name}; rerun the same command to resume")
            return False
    return True


def _job_source(open_source: Callable[[str, int], ActivationSource], job) -> ActivationSource:
    """A job's source: its site's, or a transcoder's (input, target) pair of the same tokens."""
    seed = int(job.seeds[0])
    if not job.get("target_site"):
        return open_source(job.site, seed)
    from gemmascope import activations

    return activations.PairedSource(open_source(job.site, seed), open_source(job.target_site, seed))


def _source_opener(
    config: ml_collections.ConfigDict, workdir: str
) -> Callable[[str, int], ActivationSource]:
    """Returns open_source(site, seed) for the study's activation source."""
    from gemmascope import activations

    if config.source == "cache":
        return lambda site, seed: activations.open_source(workdir, site, seed=seed)
    from gemmascope import data, model
    from gemmascope.model import params as lm_params

    # lm_mesh checks the field (a clear error before the model is loaded).
    mesh = lm_params.lm_mesh(config.cache.model_parallel, field="cache.model_parallel")
    model_parallel = mesh.shape["model"]
    model_cfg, params, tokenizer = model.load_from_config(config.model, mesh=mesh)
    sequences = data.sequences(config.data, tokenizer, split="train")
    user_prefix = data.user_prefix_mask(config.data, tokenizer, sequences)  # chat_wrap only
    return lambda site, seed: activations.StreamingSource(
        model_cfg,
        params,
        sequences,
        site,
        seed=seed,
        buffer_tokens=int(config.cache.shuffle_window_tokens),
        forward_batch=int(config.cache.batch_size),
        drop_special=bool(config.cache.drop_special),
        norm_sample_tokens=int(config.cache.norm_sample_tokens),
        exclude=user_prefix,
        model_parallel=model_parallel,
    )


def run_export(workdir: str, selected: list[ml_collections.ConfigDict]) -> None:
    """Exports every trained selected job to Gemma Scope params.npz files.

    Raises:
        DamagedFileError: A selected job's final_params.npz or job.json is damaged.
    """
    from gemmascope import export

    if is_main_process():
        for job in selected:
            problem = workdir_state.job_problem(workdir, job.name)
            if problem == "not trained":
                logging.warning("Export: %s is not trained yet; skipped", job.name)
            elif problem:
                raise errors.DamagedFileError(
                    f"cannot export job {job.name}: {problem}. Rerun with --mode=train "
                    f"--jobs={job.name}: it writes the file again from the job's last checkpoint."
                )
            else:
                export.export_run(workdir, job.name)
    if jax.process_count() > 1:  # the other processes evaluate what process 0 just wrote
        multihost_utils.sync_global_devices("gemmascope export done")


def parse_released(entry: str) -> tuple[str, str]:
    """Splits "PATH@SITE" (the last '@' separates them).

    Raises:
        ValueError: No '@', or an empty path or site.
    """
    path, sep, site = entry.rpartition("@")
    if not sep or not path or not site:
        raise ValueError(
            f"--import_released={entry!r}: expected PATH@SITE, e.g. "
            "/dl/layer_12/width_16k/average_l0_71/params.npz@resid_post/12 or "
            "/dl/transcoder_all/layer_3_width_16k_l0_small@mlp_in/3 (a Gemma Scope 2 folder; "
            "a transcoder's SITE is its input)"
        )
    return path, site


def run_import(
    config: ml_collections.ConfigDict, model_cfg, workdir: str, released: list[str]
) -> None:
    """Places released Gemma Scope params.npz files and Gemma Scope 2 folders in workdir/saes/.

    Checked beforehand by validate.

    Each SAE gets its own folder: entries that would share one (the same site, width and
    `average_l0_<N>` tag) get `_2`, `_3`... appended to the tag, in the order given, and a folder
    holding an SAE of another origin is never overwritten.
    """
    from gemmascope import export
    from gemmascope.export import layout

    if is_main_process():
        taken: set[str] = set()
        for path, site in (parse_released(entry) for entry in released):
            site_dir, width, arch, tag = _released_folder(path, site)
            tag = _free_tag(workdir, path, site_dir, width, arch, tag, taken)
            taken.add(layout.sae_dir(workdir, site_dir, width, arch, tag))
            folder = export.import_released(
                path, workdir, site, model_cfg=model_cfg, tag=tag, model=str(config.model.path)
            )
            _say(f"imported {path} -> {folder}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("gemmascope import done")


def _released_folder(path: str, site: str) -> tuple[str, int, str, str]:
    """(kind/layer, width, architecture label, tag) of the folder a released SAE goes to."""
    from gemmascope import export
    from gemmascope.export import gs2_format, layout

    if gs2_format.is_release(path):  # a Gemma Scope 2 folder
        info = gs2_format.describe(path)
        _, layer = layout.split_site(site)
        if info.target_site is None:
            return site, info.width, "gemmascope2", info.tag
        kind = "transcoder_affine" if info.affine else "transcoder"
        return f"{kind}/{layer}", info.width, "gemmascope2", info.tag
    width = integrity.npz_member_shape(path, "W_enc", "w_enc")[1]
    return site, width, "gemmascope", export.released_tag(path)


def _free_tag(
    workdir: str, path: str, site: str, width: int, arch: str, tag: str, taken: set
) -> str:
    """`tag`, or `tag_2`, `tag_3`...: the first whose folder is free or holds this same file."""
    from gemmascope.export import layout

    origin = path if files.is_url(path) else os.path.abspath(path)
    for n in range(1, 1000):
        candidate = tag if n == 1 else f"{tag}_{n}"
        folder = layout.sae_dir(workdir, site, width, arch, candidate)
        if folder in taken:
            continue
        config_path = files.join(folder, layout.CONFIG_FILE)
        if not files.exists(config_path) or files.read_json(config_path).get("origin") == origin:
            return candidate
    raise errors.WorkdirError(f"more than 999 released SAEs share the folder tag {tag!r}")


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Evaluates every SAE under workdir/saes into the metric table and plots."""
    from gemmascope import eval as evaluation

    evaluation.evaluate(config, workdir)


def run_inspect(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the per-latent statistics and site of every SAE; returns the index page's path."""
    from gemmascope import inspect

    return inspect.inspect(config, workdir)


def summary(workdir: str, n_best: int = 10) -> str:
    """Returns where the table and plots are, one line per architecture, and the best rows.

    Also one line per pair of architectures compared at equal L0 (``eval.equal_l0``). "Best" =
    lowest delta LM loss (the primary Gemma Scope metric, docs/recipe.md#metrics), then FVU.
    """
    import pandas as pd

    from gemmascope.eval import equal_l0

    eval_dir = files.join(workdir, "eval")
    table = pd.read_csv(io.BytesIO(files.read_bytes(files.join(eval_dir, "saes.csv"))))
    lines = [
        f"Metric table ({len(table)} SAEs): {files.join(eval_dir, 'saes.md')} "
        "(also saes.csv, saes.parquet)",
        f"Plots: {files.join(eval_dir, 'plots')}",
        "",
    ]
    for arch, rows in table.groupby("architecture"):
        lines.append(
            f"{arch:<10} {len(rows):>4} SAEs  L0 {rows.l0.min():.1f}-{rows.l0.max():.1f}  "
            f"FVU median {rows.fvu.median():.3f}  delta LM loss median "
            f"{rows.delta_loss.median():.4f}"
        )
    lines += ["", f"Architectures at equal L0 ({files.join(eval_dir, 'equal_l0.csv')}):"]
    lines += equal_l0.summary_lines(equal_l0.compare(table)) or ["  no overlapping L0 ranges"]
    sort_by = [c for c in ("delta_loss", "fvu") if c in table.columns]
    columns = [
        c for c in ("sae", "l0", "fvu", "delta_loss", "kl_div", "frac_dead") if c in table.columns
    ]
    best = table.sort_values(sort_by).head(n_best)[columns]
    lines += ["", f"Best {len(best)} SAEs by delta LM loss:", best.to_string(index=False)]
    return "\n".join(lines)
