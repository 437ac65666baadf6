"""A study's launcher tasks and the `python -m gemmascope` command lines that run them.

Synopsis:
    from launch import tasks
    study_tasks = tasks.load_tasks("experiments/tiny_demo.py:runlocal")   # list[tasks.Task]
    argv = tasks.main_argv("experiments/tiny_demo.py", "/tmp/w", "train", study_tasks[0])
    print(tasks.shell_join(argv))     # safely quoted for a POSIX shell

A task is one `add(jobs=..., **overrides)` call of the experiment file's `sweep(add, arg)`: a
job selector (names or globs) plus `--config.<key>=<value>` overrides. Without a `sweep` function
every job is its own task. Every launcher runs the same three phases: cache (one command), train
+ export (one command pair per task, the parallel part), eval (one command).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys

from gemmascope import study


@dataclasses.dataclass(frozen=True)
class Task:
    """One launcher task.

    Attributes:
        jobs: Job selector for `--jobs` (names or globs, comma-separated).
        overrides: Config overrides, dotted key -> value (`--config.<key>=<value>`).
    """

    jobs: str
    overrides: tuple[tuple[str, str], ...] = ()


def load_tasks(config_spec: str) -> list[Task]:
    """Returns the tasks of `config_spec` (`path.py[:arg]`) from its sweep(add, arg).

    Raises:
        ValueError: A sweep that adds nothing, or an add() without `jobs`.
    """
    module, config = study.load_config_file(config_spec)
    _, _, arg = config_spec.partition(":")
    sweep = getattr(module, "sweep", None)
    if sweep is None:
        model_cfg = study.model_config(config.model)
        return [Task(jobs=job.name) for job in study.expand(config, model_cfg)]
    added: list[Task] = []

    def add(jobs: str | None = None, **overrides):
        if not jobs:
            raise ValueError(f"{config_spec}: sweep add() needs jobs=<names or globs>.")
        items = tuple(sorted((key, _override_text(value)) for key, value in overrides.items()))
        added.append(Task(jobs=jobs, overrides=items))

    sweep(add, arg or None)
    if not added:
        raise ValueError(f"{config_spec}: sweep() added no task.")
    return added


def _override_text(value) -> str:
    """Formats an override value as ml_collections' flag parser reads it."""
    if isinstance(value, (list, tuple)):
        return (
            "("
            + ",".join(_override_text(v) for v in value)
            + ("," if len(value) == 1 else "")
            + ")"
        )
    return str(value)


def main_argv(
    config_spec: str,
    workdir: str,
    mode: str,
    task: Task | None = None,
    *,
    python: str = sys.executable,
    extra_flags: tuple[str, ...] = (),
) -> list[str]:
    """Returns the argv of one `python -m gemmascope` run.

    Args:
        config_spec: `path.py[:arg]`.
        workdir: The study's workdir.
        mode: A `--mode` of the command line (gemmascope.study.MODES).
        task: Restricts the run to a task's jobs and adds its overrides (None: every job).
        python: The Python interpreter.
        extra_flags: Appended flags, e.g. ("--multihost",).
    """
    argv = [python, "-m", "gemmascope", f"--config={config_spec}", f"--workdir={workdir}"]
    argv.append(f"--mode={mode}")
    if task is not None:
        argv.append(f"--jobs={task.jobs}")
        argv += [f"--config.{key}={value}" for key, value in task.overrides]
    return argv + list(extra_flags)


def shell_join(argv: list[str]) -> str:
    """Quotes argv for a POSIX shell (spaces, quotes and $ survive: shlex.split inverts it)."""
    return shlex.join(argv)
