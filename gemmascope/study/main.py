"""Command line of gemmascope: plan, cache, train, export and evaluate a study.

Synopsis:
    python -m gemmascope --config=experiments/tiny_demo.py --workdir=workdir/demo --mode=all
    python -m gemmascope --config=experiments/gemma2_9b.py --mode=plan
    python -m gemmascope --config=experiments/tiny_demo.py:runlocal --workdir=/tmp/d \
        --mode=train --jobs='resid_post-*' --config.train.batch_size=256

Flags:
    --config    an experiment file `experiments/<study>.py[:arg]`, with `--config.a.b=v`
                overrides of existing fields (the config is locked: a typo is an error)
    --workdir   the study's folder (layout: docs/concepts.md): a local path or a
                gs://bucket/prefix URL (docs/faq.md)
    --mode      plan | cache | train | eval | export | all
    --jobs      job names or globs to restrict cache/train/export to (comma-separated or repeated)
    --import_released  PATH@SITE of a released Gemma Scope params.npz (local or gs://; repeated):
                placed in the workdir's saes/ before export and evaluated with the study's SAEs
    --multihost, --coordinator_address, --num_processes, --process_id: multi-process runs;
                `--multihost` alone suits Cloud TPU and Slurm, where JAX finds its peers.

`python -m gemmascope` runs `run()` (gemmascope/__main__.py). The entry point stays thin: it
parses flags, starts JAX's multi-process runtime when asked, and hands over to
`gemmascope.study.run` (gemmascope/study/stages.py). The config file runs with its own folder
importable (`study.importable_folder`), as with `study.load_config_file`.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from gemmascope.study import config as study_config
from gemmascope.study import stages

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file `path.py[:arg]`.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Study folder: a local path or a gs://bucket/prefix URL."
)
_MODE = flags.DEFINE_enum("mode", "all", list(stages.MODES), "Which stage(s) to run.")
_JOBS = flags.DEFINE_multi_string("jobs", [], "Job names or globs (default: all jobs).")
_IMPORT_RELEASED = flags.DEFINE_multi_string(
    "import_released",
    [],
    "PATH@SITE of a released Gemma Scope params.npz to evaluate with the study (repeatable), "
    "e.g. /dl/layer_12/width_16k/average_l0_71/params.npz@resid_post/12.",
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (Cloud TPU, Slurm: no arguments)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for explicit multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

flags.mark_flags_as_required(["config"])


class _SiblingImportsParser(flags.ArgumentParser):
    """absl's config-file parser, run with the config file's folder importable."""

    def __init__(self, parser: flags.ArgumentParser):
        self._parser = parser

    def parse(self, argument):
        """Loads `path.py[:arg]` with absl's parser inside `study.importable_folder(path)`."""
        with study_config.importable_folder(argument.split(":", 1)[0]):
            return self._parser.parse(argument)

    def flag_type(self):
        """The wrapped parser's flag type (for --help)."""
        return self._parser.flag_type()


# config_flags loads the file itself; its folder must be importable while it runs, so that
# `import common` (experiments/common.py) works from any current directory.
flags.FLAGS[_CONFIG.name].parser = _SiblingImportsParser(flags.FLAGS[_CONFIG.name].parser)


def initialize_distributed(config) -> None:
    """Starts JAX's multi-controller runtime when the flags or the config ask for it."""
    if _COORDINATOR.value is not None:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _MULTIHOST.value or config.distributed.initialize:
        jax.distributed.initialize()


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags; a bad flag or config override exits with a one-paragraph message."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"FATAL Flags parsing error: {error}\nPass --helpshort to see help on flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        message = str(error).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        sys.exit(
            f"FATAL Bad --config or override ({' '.join(overrides) or argv[1:]}): {message}\n"
            "Overrides may only set fields the config file defines (the config is locked)."
        )


def main(argv):
    """Runs the study of `--config` in `--mode` (absl's main; flags are already parsed)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Library INFO logs (orbax logs every checkpoint write) drown the stage progress lines;
        # --verbosity=0 brings them back.
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    initialize_distributed(config)
    logging.info(
        "Process %d of %d; %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.default_backend(),
    )
    stages.run(config, _WORKDIR.value, _MODE.value, _JOBS.value, _IMPORT_RELEASED.value)


def run() -> None:
    """Runs the command line (`python -m gemmascope`)."""
    jax.config.config_with_absl()
    app.run(main, flags_parser=parse_flags)
