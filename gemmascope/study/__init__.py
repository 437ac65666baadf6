"""The study machinery: the config schema, its expansion into jobs, and the pipeline stages.

A study is one `experiments/<study>.py` (a `get_config(arg)` built on `study.base_config()`);
`study.expand` turns it into training jobs (one per site x width x architecture, each a stacked
sweep), and `study.run` runs a mode (plan, cache, train, export, eval, all) in a workdir. The
command line `python -m gemmascope` (gemmascope/study/main.py) is a thin absl wrapper around
`study.run`. See docs/configuration.md and docs/concepts.md.

Synopsis:
    from gemmascope import study
    module, config = study.load_config_file("experiments/tiny_demo.py:runlocal")
    model_cfg = study.model_config(config.model)       # preset or config.json, no weights
    all_jobs = study.expand(config, model_cfg)         # train job ConfigDicts, sorted by name
    chosen = study.select(all_jobs, ["resid_post-*"])  # names or globs
    study.run(config, workdir, "all", job_selectors=["resid_post-*"])
    checked = study.validate(config, "all", workdir=workdir, devices=(8, 8))  # ConfigError

The errors a run expects (a bad field, a workdir in another state, a damaged file) are
`study.StudyError`s; the command line reports them as one paragraph (gemmascope/study/errors.py).
"""

# The study config: the schema experiment files fill in, and loading them.
from gemmascope.study.config import (
    NON_STUDY_FIELDS,
    NON_STUDY_SECTIONS,
    base_config,
    config_arguments,
    importable_folder,
    load_config_file,
    model_config,
    parse_arg,
    to_json_dict,
)

# The errors a run expects (one paragraph on the command line, no traceback).
from gemmascope.study.errors import (
    CheckpointError,
    ConfigError,
    DamagedFileError,
    StudyError,
    WorkdirError,
)

# Jobs: the study expanded into (site, width, architecture) training jobs.
from gemmascope.study.jobs import PER_JOB_FIELDS, expand, job_name, mesh_shape, select, sites_of

# Stages: plan | cache -> train -> export -> eval, each resumable.
from gemmascope.study.stages import MODES, check_workdir_config, parse_released, run, summary

# Validation of a whole study before any stage works.
from gemmascope.study.validate import CheckedStudy, validate

__all__ = [
    "CheckedStudy",
    "CheckpointError",
    "ConfigError",
    "DamagedFileError",
    "MODES",
    "StudyError",
    "WorkdirError",
    "NON_STUDY_FIELDS",
    "NON_STUDY_SECTIONS",
    "PER_JOB_FIELDS",
    "base_config",
    "check_workdir_config",
    "config_arguments",
    "expand",
    "importable_folder",
    "job_name",
    "load_config_file",
    "mesh_shape",
    "model_config",
    "parse_arg",
    "parse_released",
    "run",
    "select",
    "sites_of",
    "summary",
    "to_json_dict",
    "validate",
]
