r"""Local launcher: a study's sweep tasks as processes on this machine, several at a time.

    python -m launch.local --config=experiments/tiny_demo.py --workdir=workdir/demo --parallel=2
    python -m launch.local --config=experiments/tiny_demo.py --workdir=workdir/demo --dry_run
    python -m launch.local --config=experiments/tiny_demo.py:runlocal --workdir=/tmp/w \
        --num_processes=2        # every command as 2 JAX processes on localhost (multi-host test)

Phases: cache (one command), then per task `--mode=train` followed by `--mode=export`
(`--parallel` tasks at once), then `--mode=eval`. Every command is an argv list run without a
shell, and `--dry_run` prints each as a shell-quoted line instead of running it. A failed command
stops the launcher at the end of its phase; rerunning resumes (every stage skips done work).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys

from launch import tasks as tasks_lib


def free_port() -> int:
    """Returns a TCP port free on localhost (for the JAX coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_argvs(argv: list[str], num_processes: int, port: int | None = None) -> list[list[str]]:
    """Returns one argv per JAX process for `argv` (itself when num_processes is 1)."""
    if num_processes == 1:
        return [argv]
    port = port or free_port()
    return [
        argv
        + [
            f"--coordinator_address=localhost:{port}",
            f"--num_processes={num_processes}",
            f"--process_id={i}",
        ]
        for i in range(num_processes)
    ]


def plan_commands(args) -> list[list[list[str]]]:
    """Returns the phases, each a list of steps; a step is a list of argvs run in order."""
    study_tasks = tasks_lib.load_tasks(args.config)

    def cmd(mode, task=None):
        return tasks_lib.main_argv(args.config, args.workdir, mode, task, python=args.python)

    return [
        [[cmd("cache")]],
        [[cmd("train", task), cmd("export", task)] for task in study_tasks],
        [[cmd("eval")]],
    ]


def run_step(step: list[list[str]], num_processes: int, log_dir: str | None) -> int:
    """Runs a step's commands in order (each as num_processes processes); returns the exit code."""
    for argv in step:
        procs = []
        for i, process_argv in enumerate(process_argvs(argv, num_processes)):
            log = None
            if log_dir:
                os.makedirs(log_dir, exist_ok=True)
                name = "_".join(
                    a.split("=", 1)[1] for a in argv if a.startswith(("--mode", "--jobs"))
                )
                log = open(os.path.join(log_dir, f"{_safe(name)}.{i}.log"), "ab")  # noqa: SIM115
            procs.append((subprocess.Popen(process_argv, stdout=log, stderr=log), log))
        codes = []
        for proc, log in procs:
            codes.append(proc.wait())
            if log:
                log.close()
        if any(codes):
            return next(c for c in codes if c)
    return 0


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "run"


def main(argv=None) -> int:
    """Parses the flags and launches (or prints, with --dry_run); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="Experiment file path.py[:arg].")
    parser.add_argument("--workdir", required=True, help="The study's workdir.")
    parser.add_argument("--parallel", type=int, default=1, help="Tasks running at once.")
    parser.add_argument("--num_processes", type=int, default=1, help="JAX processes per command.")
    parser.add_argument("--python", default=sys.executable, help="Python interpreter to use.")
    parser.add_argument("--log_dir", default=None, help="Write each command's output here.")
    parser.add_argument("--dry_run", action="store_true", help="Print the commands only.")
    args = parser.parse_args(argv)
    if args.parallel < 1 or args.num_processes < 1:
        parser.error("--parallel and --num_processes must be >= 1")

    phases = plan_commands(args)
    if args.dry_run:
        for phase in phases:
            for step in phase:
                for command in step:
                    for process_argv in process_argvs(command, args.num_processes, port=12345):
                        print(tasks_lib.shell_join(process_argv))
        return 0
    for phase in phases:
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            codes = list(pool.map(lambda s: run_step(s, args.num_processes, args.log_dir), phase))
        if any(codes):
            print(f"launch.local: a command failed (exit {max(codes)}); rerun to resume.")
            return max(codes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
