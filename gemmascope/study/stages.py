"""The pipeline stages behind `python -m gemmascope`: cache -> train -> export -> eval, resumable.

Synopsis:
    from gemmascope import study
    study.run(config, workdir, mode="all", job_selectors=["resid_post-*"])
    study.check_workdir_config(config, workdir)     # writes or checks workdir/config.json

Every stage skips or resumes finished work, so the same command rerun after a kill finishes the
study: the cache writer resumes from its atomic progress record, a job whose
`runs/<job>/final_params.npz` exists is skipped and an unfinished job resumes from its last orbax
checkpoint, export rewrites its (atomic) files, and evaluation rewrites the table atomically.
"""

from __future__ import annotations

import contextlib
import io
import time

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from gemmascope import files
from gemmascope.study import config as study_config
from gemmascope.study import jobs

MODES = ("plan", "cache", "train", "eval", "export", "all")


def run(
    config: ml_collections.ConfigDict,
    workdir: str | None,
    mode: str,
    job_selectors: list[str] | None = None,
    released: list[str] | None = None,
) -> None:
    """Runs `mode` for the study `config` in `workdir`.

    Args:
        config: A study config.
        workdir: The study's folder, a local path or a `gs://bucket/prefix` URL; unused by plan
            mode.
        mode: One of MODES. "all" runs cache, train, export and eval in that order.
        job_selectors: Job names or globs (default: every job).
        released: "PATH@SITE" of released Gemma Scope params.npz files to import into
            workdir/saes/ (modes export, eval and all), evaluated alongside the study's SAEs.

    Raises:
        ValueError: Unknown mode, missing workdir, a selector matching nothing, or a workdir
            holding a different study.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; valid modes: {', '.join(MODES)}.")
    model_cfg = study_config.model_config(config.model)
    selected = jobs.select(jobs.expand(config, model_cfg), job_selectors)
    if mode == "plan":
        from gemmascope import plan

        if is_main_process():
            print(plan.format_plan(plan.make_plan(config, model_cfg, selected)))
        return
    _check_workdir_and_source(config, workdir, mode)
    check_workdir_config(config, workdir)
    if mode == "cache" or (mode == "all" and config.source == "cache"):
        with _stage("cache"):
            run_cache(config, workdir, jobs.sites_of(selected) if job_selectors else None)
    if mode in ("train", "all"):
        with _stage(f"train ({len(selected)} jobs)"):
            run_train(config, workdir, selected)
    if released and mode in ("export", "eval", "all"):
        with _stage(f"import ({len(released)} released SAEs)"):
            run_import(config, model_cfg, workdir, released)
    if mode in ("export", "all"):
        with _stage("export"):
            run_export(workdir, selected)
    if mode in ("eval", "all"):
        with _stage("eval"):
            run_eval(config, workdir)
        if is_main_process():
            print(summary(workdir), flush=True)


def _check_workdir_and_source(config: ml_collections.ConfigDict, workdir, mode: str) -> None:
    """Raises ValueError for a missing or unsupported workdir, or an unknown `config.source`."""
    if not workdir:
        raise ValueError(f"--workdir is required for --mode={mode}.")
    if files.is_url(workdir) and not workdir.startswith("gs://"):
        raise ValueError(
            f"--workdir={workdir}: unsupported URL scheme; use a local path or a "
            "gs://bucket/prefix URL."
        )
    if config.source not in ("cache", "stream"):
        raise ValueError(f"config.source must be 'cache' or 'stream', got {config.source!r}.")


@contextlib.contextmanager
def _stage(name: str):
    """Prints when a stage starts and how long it took (process 0 only)."""
    start = time.time()
    if is_main_process():
        print(f"[gemmascope] {name}...", flush=True)
    yield
    if is_main_process():
        print(f"[gemmascope] {name} done in {time.time() - start:.1f} s", flush=True)


def is_main_process() -> bool:
    """True on the process that writes shared files and prints."""
    return jax.process_index() == 0


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes workdir/config.json, or checks that the workdir holds this same study.

    Sections in `study.NON_STUDY_SECTIONS` (plan, eval, distributed) and fields in
    `study.NON_STUDY_FIELDS` (cache.model_parallel) may differ: they do not change what is cached
    or trained.

    Raises:
        ValueError: The workdir's config.json differs; the message names each differing field
            with both values.
    """
    path = files.join(workdir, "config.json")
    resolved = study_config.to_json_dict(config)
    if files.exists(path):
        stored = files.read_json(path)
        differences = [
            f"  {key}: workdir has {old!r}, this run has {new!r}"
            for key, old, new in _diff(stored, resolved)
            if key.split(".")[0] not in study_config.NON_STUDY_SECTIONS
            and key not in study_config.NON_STUDY_FIELDS
        ]
        if differences:
            raise ValueError(
                f"{workdir} holds a different study ({path}):\n"
                + "\n".join(differences[:20])
                + "\nUse a new --workdir, or the same config and overrides as before."
            )
        return
    if is_main_process():
        # Atomic: readers see no file or the whole file.
        files.write_json(path, resolved, sort_keys=True)


def _diff(old, new, prefix=""):
    """Yields (dotted key, old value, new value) for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            dotted = f"{prefix}.{key}" if prefix else key
            if key not in old or key not in new:
                yield dotted, old.get(key, "<absent>"), new.get(key, "<absent>")
            else:
                yield from _diff(old[key], new[key], dotted)
    elif old != new:
        yield prefix, old, new


def run_cache(config: ml_collections.ConfigDict, workdir: str, sites: list[str] | None) -> None:
    """Builds (or finishes) the activation cache for `sites` (default: config.sites)."""
    from gemmascope import activations

    if sites is not None:
        config = ml_collections.ConfigDict(config.to_dict())
        config.sites = tuple(sites)
    logging.info("Cache: %s", list(config.sites))
    activations.build_cache(config, workdir)


def run_train(
    config: ml_collections.ConfigDict, workdir: str, selected: list[ml_collections.ConfigDict]
) -> None:
    """Trains every selected job that has no final_params.npz yet (resuming unfinished ones).

    Activations come from the cache, or with `config.source == "stream"` from the model itself
    (loaded once for all jobs) through a shuffle buffer.
    """
    from gemmascope import train

    open_source = _source_opener(config, workdir)
    for index, job in enumerate(selected):
        if files.exists(files.join(workdir, "runs", job.name, "final_params.npz")):
            if is_main_process():
                print(f"[gemmascope] train {index + 1}/{len(selected)}: {job.name} already done")
            continue
        if is_main_process():
            print(f"[gemmascope] train {index + 1}/{len(selected)}: {job.name}", flush=True)
        train.train_sweep(job, open_source(job.site, int(job.seeds[0])), workdir)


def _source_opener(config: ml_collections.ConfigDict, workdir: str):
    """Returns open_source(site, seed) for the study's activation source."""
    from gemmascope import activations

    if config.source == "cache":
        return lambda site, seed: activations.open_source(workdir, site, seed=seed)
    from gemmascope import data, model
    from gemmascope.model import params as lm_params

    # lm_mesh checks the field (a clear error before the model is loaded).
    mesh = lm_params.lm_mesh(config.cache.get("model_parallel", 1), field="cache.model_parallel")
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
    """Exports every trained selected job to Gemma Scope params.npz files."""
    from gemmascope import export

    if is_main_process():
        for job in selected:
            if files.exists(files.join(workdir, "runs", job.name, "final_params.npz")):
                export.export_run(workdir, job.name)
            else:
                logging.warning("Export: %s is not trained yet; skipped", job.name)
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
            "/dl/layer_12/width_16k/average_l0_71/params.npz@resid_post/12"
        )
    return path, site


def run_import(
    config: ml_collections.ConfigDict, model_cfg, workdir: str, released: list[str]
) -> None:
    """Places released Gemma Scope params.npz files in workdir/saes/ (checked against the model)."""
    from gemmascope import export, model

    entries = [parse_released(entry) for entry in released]  # every entry checked before writing
    for path, site in entries:
        model.sites.check(model_cfg, site)
        if not files.exists(path):
            raise FileNotFoundError(f"--import_released: {path} does not exist")
    if is_main_process():
        for path, site in entries:
            folder = export.import_released(
                path, workdir, site, model_cfg=model_cfg, model=str(config.model.path)
            )
            print(f"[gemmascope] imported {path} -> {folder}", flush=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("gemmascope import done")


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Evaluates every SAE under workdir/saes into the metric table and plots."""
    from gemmascope import eval as evaluation

    evaluation.evaluate(config, workdir)


def summary(workdir: str, n_best: int = 10) -> str:
    """Returns where the table and plots are, one line per architecture, and the best rows.

    "Best" = lowest delta LM loss (the primary Gemma Scope metric, docs/recipe.md#metrics), then
    FVU.
    """
    import pandas as pd

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
    sort_by = [c for c in ("delta_loss", "fvu") if c in table.columns]
    columns = [
        c for c in ("sae", "l0", "fvu", "delta_loss", "kl_div", "frac_dead") if c in table.columns
    ]
    best = table.sort_values(sort_by).head(n_best)[columns]
    lines += ["", f"Best {len(best)} SAEs by delta LM loss:", best.to_string(index=False)]
    return "\n".join(lines)
