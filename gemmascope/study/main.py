r"""Command line of gemmascope: plan, cache, train, export, evaluate and inspect a study.

Synopsis:
    python -m gemmascope --config=experiments/tiny_demo.py --workdir=workdir/demo --mode=all
    python -m gemmascope --config=experiments/gemma2_9b.py --mode=plan
    python -m gemmascope --config=experiments/tiny_demo.py:runlocal --workdir=/tmp/d \
        --mode=train --jobs='resid_post-*' --config.train.batch_size=256
    python -m gemmascope --config=experiments/tiny_demo.py --show_config   # every field
    python -m gemmascope --help      # these flags and every study's config arguments

Flags:
    --config    an experiment file `experiments/<study>.py[:arg]`, with `--config.a.b=v`
                overrides of existing fields (the config is locked: a typo is an error)
    --workdir   the study's folder (layout: docs/concepts.md): a local path or a
                gs://bucket/prefix URL (docs/faq.md)
    --mode      plan | cache | train | eval | export | inspect | all
    --jobs      job names or globs to restrict cache/train/export to (comma-separated or repeated)
    --import_released  PATH@SITE of a released Gemma Scope params.npz or Gemma Scope 2 folder
                (local or gs://; repeated; SITE is the input site, mlp_in/L for a transcoder):
                placed in the workdir's saes/ before export and evaluated (and inspected) with
                the study's SAEs
    --show_config  print the resolved config (every field, overrides applied) and stop
    --plan_jobs    plan mode: one row per job instead of one per group and architecture
    --traceback    show the Python traceback of every error (by default an expected error, such
                   as a bad field or a damaged file, is one paragraph on stderr)
    --multihost, --coordinator_address, --num_processes, --process_id: multi-process runs;
                `--multihost` alone suits Cloud TPU and Slurm, where JAX finds its peers.

Errors: the whole study is validated before any stage works; an expected error (a bad field or
flag, a missing or damaged file, a workdir holding another study or locked by another run) is
reported as one paragraph naming the culprit and what to do, with exit status 1 and no
traceback (docs/faq.md, "When something goes wrong"); a bug keeps its traceback.

`python -m gemmascope` runs `run()` (gemmascope/__main__.py); `cli(argv)` runs the same command
line inside the current process and returns its exit status. The entry point stays thin: it
parses flags, starts JAX's multi-process runtime when asked, and hands over to
`gemmascope.study.run` (gemmascope/study/stages.py). The config file runs with its own folder
importable (`study.importable_folder`), as with `study.load_config_file`.
"""

from __future__ import annotations

import glob
import json
import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from gemmascope.study import config as study_config
from gemmascope.study import errors, stages

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
    "PATH@SITE of a released Gemma Scope params.npz or Gemma Scope 2 folder to evaluate with the "
    "study (repeatable), e.g. /dl/layer_12/width_16k/average_l0_71/params.npz@resid_post/12 or "
    "/dl/transcoder_all/layer_3_width_16k_l0_small_affine@mlp_in/3.",
)
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print the resolved config (every field, overrides applied) and stop."
)
_PLAN_JOBS = flags.DEFINE_bool(
    "plan_jobs", False, "--mode=plan: one row per job (default: one per group x architecture)."
)
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the Python traceback of every error, expected ones too."
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

_HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def _format_arguments(spec: dict) -> str:
    if not spec:
        return "(no arguments)"
    return ", ".join(f"{name}={default!r}" for name, default in spec.items())


def _study_lines(paths: list[str]) -> list[str]:
    """One line per experiment file: its config arguments with their defaults."""
    lines = []
    for path in paths:
        shown = os.path.relpath(path, _REPO) if path.startswith(_REPO + os.sep) else path
        try:
            spec = study_config.config_arguments(path)
        except Exception as error:  # a broken experiment file must not break --help
            lines.append(f"  {shown}: cannot be loaded ({error})")
            continue
        lines.append(f"  {shown}:{_format_arguments(spec)}")
    return lines


def _is_study(path: str) -> bool:
    """Whether the experiment file defines get_config (common.py does not)."""
    with open(path) as f:
        return "def get_config" in f.read()


def help_text(argv: list[str]) -> str:
    """The --help text: usage, the flags, and the config arguments of the studies."""
    config_args = [a.split("=", 1)[1] for a in argv if a.startswith(("--config=", "-config="))]
    if config_args:
        paths = [config_args[-1].split(":", 1)[0]]
        studies = "The config arguments of this study (with their defaults):"
    else:
        paths = sorted(glob.glob(os.path.join(_REPO, "experiments", "*.py")))
        paths = [p for p in paths if _is_study(p)]
        studies = "Studies in experiments/ and their config arguments (with their defaults):"
    module_doc = sys.modules[__name__].__doc__ or ""
    lines = [
        "usage: python -m gemmascope --config=experiments/<study>.py[:ARG=VALUE,...] "
        "[--workdir=DIR] [--mode=plan|cache|train|eval|export|inspect|all] "
        "[--config.FIELD=VALUE ...]",
        "",
        module_doc.split("\n\n", 1)[1].split("`python -m gemmascope` runs")[0].rstrip(),
        "",
        studies,
        *_study_lines(paths),
        "  e.g. --config=experiments/gemma2_2b.py:runlocal,arch=jumprelu+gated",
        "",
        "Every field of a config can be overridden, e.g. --config.train.batch_size=256; to list "
        "a study's fields with their values:",
        "  python -m gemmascope --config=experiments/tiny_demo.py --show_config",
        "Fields are documented in docs/configuration.md and the experiment files; absl's "
        "--helpfull lists the libraries' flags too.",
    ]
    return "\n".join(lines)


def _forget_overrides() -> None:
    """Undefines the `--config.*` flags of an earlier parse in this process (see cli)."""
    for name in [name for name in flags.FLAGS if name.startswith(f"{_CONFIG.name}.")]:
        delattr(flags.FLAGS, name)


def _without_traceback(message: str) -> str:
    """A flag error's message with an embedded traceback (a failing config file) cut out."""
    head, marker, tail = message.partition("Traceback (most recent call last):")
    if not marker:
        return message
    last = [line.strip() for line in tail.splitlines() if line.strip()][-1:]
    return " ".join([head.strip(), *last])


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags; --help prints help and exits 0; a bad flag exits with one paragraph."""
    if any(arg in _HELP_FLAGS for arg in argv[1:]):
        print(help_text(argv))
        sys.exit(0)
    for arg in argv[1:]:
        if arg.startswith(("--config=", "-config=")):
            path = arg.split("=", 1)[1].split(":", 1)[0]
            if not os.path.isfile(path):
                sys.exit(
                    f"gemmascope: error: --config={path}: no such file; give an experiment file "
                    "such as experiments/tiny_demo.py (--help lists the studies)."
                )
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = str(error) if "--traceback" in argv else _without_traceback(str(error))
        sys.exit(f"gemmascope: error: bad flag: {message}\nPass --help to see the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        message = str(error).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        sys.exit(
            f"gemmascope: error: bad --config or override ({' '.join(overrides) or argv[1:]}): "
            f"{message}\nOverrides may only set fields the config file defines (the config is "
            "locked); --show_config lists them."
        )


class _QuietOrbaxErrors(std_logging.Filter):
    """Drops orbax's error records: a failed save logs a traceback from each of its threads.

    The command line reports the failure as one paragraph naming the checkpoint folder and the
    cause (stages.run_train); --traceback keeps these records.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        """False for orbax's ERROR records."""
        return not (record.levelno >= std_logging.ERROR and _ORBAX_DIR in record.pathname)


_ORBAX_DIR = f"{os.sep}orbax{os.sep}"
_QUIET_ORBAX = _QuietOrbaxErrors()


def _late_callback(value) -> bool:
    return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


def _closed_loop_hook(kind, value, tb):
    """sys.excepthook that drops the 'Event loop is closed' errors of late async callbacks.

    When an orbax save or restore fails, tensorstore completes its remaining futures after
    orbax has closed their asyncio loop; each callback's RuntimeError is printed with a
    traceback. The failure itself is reported as one paragraph (or a one-line warning).
    """
    if not _late_callback(value):
        sys.__excepthook__(kind, value, tb)


def _closed_loop_unraisable(unraisable):
    """sys.unraisablehook counterpart of _closed_loop_hook."""
    if not _late_callback(unraisable.exc_value):
        sys.__unraisablehook__(unraisable)


def _quiet_orbax(on: bool) -> None:
    handlers = {logging.get_absl_handler(), *std_logging.getLogger().handlers}
    for handler in handlers:
        if on:
            handler.addFilter(_QUIET_ORBAX)
        else:
            handler.removeFilter(_QUIET_ORBAX)
    if on:
        sys.excepthook, sys.unraisablehook = _closed_loop_hook, _closed_loop_unraisable
        return
    if sys.excepthook is _closed_loop_hook:
        sys.excepthook = sys.__excepthook__
    if sys.unraisablehook is _closed_loop_unraisable:
        sys.unraisablehook = sys.__unraisablehook__


def main(argv) -> int:
    """Runs the study of `--config` in `--mode` (absl's main; flags are already parsed).

    Returns:
        The exit status: 0, 1 for an expected error (one paragraph on stderr), 130 when
        interrupted. A bug's exception propagates with its traceback.
    """
    if len(argv) > 1:
        print(f"gemmascope: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if not flags.FLAGS["verbosity"].present:
        # Library INFO logs (orbax logs every checkpoint write) drown the stage progress lines;
        # --verbosity=0 brings them back.
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    if _SHOW_CONFIG.value:
        print(json.dumps(study_config.to_json_dict(config), indent=2, sort_keys=True))
        return 0
    _quiet_orbax(not _TRACEBACK.value)
    try:
        initialize_distributed(config)
        logging.info(
            "Process %d of %d; %d local / %d global devices (%s)",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
            jax.default_backend(),
        )
        stages.run(
            config,
            _WORKDIR.value,
            _MODE.value,
            _JOBS.value,
            _IMPORT_RELEASED.value,
            plan_jobs=_PLAN_JOBS.value,
        )
    except KeyboardInterrupt:
        print("gemmascope: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except Exception as error:
        if _TRACEBACK.value or not errors.is_expected(error):
            raise
        print(errors.describe(error), file=sys.stderr, flush=True)
        if isinstance(error, errors.CheckpointError) and _exit_at_once:
            # orbax's background threads of a failed save wait minutes for signals that never
            # come; the lock is released and nothing else is pending: exit now.
            sys.stdout.flush()
            os._exit(1)
        return 1
    finally:
        _quiet_orbax(False)
    return 0


def cli(argv: list[str]) -> int:
    """Runs the command line `argv` (argv[0] = program) in this process; returns the status.

    The same as `python -m gemmascope ...` except that absl's logging set-up is left alone;
    tests call it to run many command lines in one interpreter.
    """
    saved = sys.argv
    sys.argv = list(argv)  # config_flags reads the overrides from sys.argv
    try:
        _forget_overrides()
        flags.FLAGS.unparse_flags()
        try:
            rest = parse_flags(list(argv))
        except SystemExit as stop:
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
                return 1
            return int(stop.code or 0)
        return main(rest)
    finally:
        sys.argv = saved
        _forget_overrides()  # leave the flags as a fresh process has them
        flags.FLAGS.unparse_flags()


# Set by run() (the process is the command): exit at once after a checkpoint failure.
_exit_at_once = False


def run() -> None:
    """Runs the command line (`python -m gemmascope`)."""
    global _exit_at_once
    _exit_at_once = True
    jax.config.config_with_absl()
    app.run(main, flags_parser=parse_flags)
