"""The workdir's record of its study (config.json), and what its stages have produced.

Synopsis:
    from gemmascope.study import workdir as workdir_state
    workdir_state.check_config(config, workdir)    # writes or checks workdir/config.json
    workdir_state.produced(workdir)                # {"cache": True, "train": False, ...}
    workdir_state.job_problem(workdir, job_name)   # None if runs/<job> is finished and whole
    workdir_state.require_cache(workdir, sites)    # WorkdirError naming --mode=cache

config.json records the study a workdir holds, written once the config has been validated. A
rerun may change a field that no stage has *consumed* yet: a stage consumes the config sections
its outputs depend on once it has written any output:

    cache    activations/ exists    model, data, sites, cache
    train    runs/ has a job        every study section
    export   saes/ has an SAE       every study section

(sections `plan`, `eval`, `inspect`, `distributed` and field `cache.model_parallel` never change
what a study computes and may always differ). An accepted change rewrites config.json and is
printed; a change to a consumed field is refused, naming each field with both values and the stage
that consumed it. So a typo found by the first stage (say the corpus path) can be fixed and rerun in
the same workdir, while a change that would mix two studies' results cannot.
"""

from __future__ import annotations

from gemmascope import files
from gemmascope.study import config as study_config
from gemmascope.study import integrity
from gemmascope.study.errors import DamagedFileError, WorkdirError

CONFIG_FILE = "config.json"
# The config sections the activation cache depends on.
CACHE_INPUTS = ("model", "data", "sites", "cache")
# Per stage: the folder whose entries are its outputs.
OUTPUT_FOLDERS = {"cache": "activations", "train": "runs", "export": "saes"}


def produced(workdir: str) -> dict[str, bool]:
    """Which stages have written outputs in `workdir` (cache, train, export)."""
    return {
        stage: bool(files.listdir(files.join(workdir, folder)))
        for stage, folder in OUTPUT_FOLDERS.items()
    }


def _consumer(key: str, outputs: dict[str, bool]) -> str | None:
    """The stage that consumed the dotted config `key`, or None if none has."""
    if outputs["train"] or outputs["export"]:
        return "train" if outputs["train"] else "export"
    if outputs["cache"] and key.split(".")[0] in CACHE_INPUTS:
        return "cache"
    return None


def _study_differences(stored: dict, resolved: dict) -> list[tuple[str, object, object]]:
    return [
        (key, old, new)
        for key, old, new in _diff(stored, resolved)
        if key.split(".")[0] not in study_config.NON_STUDY_SECTIONS
        and key not in study_config.NON_STUDY_FIELDS
    ]


def check_config(config, workdir: str, write: bool = True) -> list[str]:
    """Writes workdir/config.json, or checks the workdir holds this study.

    Args:
        config: The validated study config.
        workdir: The study's folder.
        write: Whether this process writes config.json (process 0 of a multi-process run).

    Returns:
        One line per accepted change of a field that no stage had consumed (config.json was
        rewritten with the new values); [] when nothing changed.

    Raises:
        WorkdirError: A consumed field differs (each named, with both values).
        DamagedFileError: The workdir's config.json is not valid JSON.
    """
    path = files.join(workdir, CONFIG_FILE)
    resolved = study_config.to_json_dict(config)
    if not files.exists(path):
        if write:
            files.write_json(path, resolved, sort_keys=True)  # atomic
        return []
    damage = integrity.json_problem(path)
    if damage:
        raise DamagedFileError(
            f"{path} is {damage}. It records which study the workdir holds: restore it from a "
            "backup, or delete it if you are sure this command's config is the workdir's study "
            "(the next run writes it again)."
        )
    differences = _study_differences(files.read_json(path), resolved)
    outputs = produced(workdir)
    refused = [(k, o, n, _consumer(k, outputs)) for k, o, n in differences]
    refused = [entry for entry in refused if entry[3]]
    if refused:
        lines = [
            f"  {key}: workdir has {old!r}, this run has {new!r} (used by its {stage} stage)"
            for key, old, new, stage in refused
        ]
        raise WorkdirError(
            f"{workdir} holds a different study ({path}):\n"
            + "\n".join(lines[:20])
            + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
            + "\nUse a new --workdir, or the same config and overrides as before."
        )
    if differences and write:
        files.write_json(path, resolved, sort_keys=True)
    return [f"{key}: {old!r} -> {new!r}" for key, old, new in differences]


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


def job_problem(workdir: str, job_name: str) -> str | None:
    """None if runs/<job> holds a whole final_params.npz and job.json; else what is wrong.

    "not trained" when neither exists.
    """
    run_dir = files.join(workdir, "runs", job_name)
    params, job = files.join(run_dir, "final_params.npz"), files.join(run_dir, "job.json")
    if not files.exists(params):
        return "not trained"
    damage = integrity.npz_problem(params)
    if damage:
        return f"{params} is {damage}"
    damage = integrity.json_problem(job)
    if damage:
        return f"{job}: {damage}"
    return None


def require_cache(workdir: str, sites: list[str]) -> None:
    """Raises WorkdirError unless every site has a complete activation cache.

    Raises:
        WorkdirError: Naming the sites without a complete cache and the command to build them.
    """
    from gemmascope.activations import storage

    lacking = []
    for site in sites:
        path = storage.site_dir(workdir, site)
        raw = storage.read_bytes(path, storage.META)
        if raw is None:
            lacking.append(f"{site} (not cached)")
            continue
        try:
            complete = bool(storage.read_meta(path).get("complete"))
        except storage.CacheError:
            complete = False
        if not complete:
            lacking.append(f"{site} (incomplete)")
    if lacking:
        raise WorkdirError(
            f"training reads the activation cache, and {files.join(workdir, 'activations')} has "
            f"no complete cache of {', '.join(lacking)}: run the same command with --mode=cache "
            "first (or --mode=all, which caches, trains, exports and evaluates)."
        )
