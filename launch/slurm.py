r"""Slurm launcher: a cache job, a job array over the sweep's tasks, then an eval job.

    python -m launch.slurm --config=experiments/gemma2_9b.py:model_dir=/data/gemma-2-9b \
        --workdir=/shared/gemma2_9b --out_dir=slurm/gemma2_9b --nodes=1 --gpus_per_node=8 \
        --partition=gpu --time=2-00:00:00 --dry_run

Writes three sbatch scripts and submit.sh into --out_dir (then runs submit.sh unless --dry_run,
which prints them instead). submit.sh chains the jobs with `--dependency=afterok`:
    cache.sbatch   --mode=cache on --nodes nodes (one process per node via srun)
    train.sbatch   an array, element i = task i: --mode=train then --mode=export for its jobs;
                   `--max_parallel` elements run at once (`--array=0-N%P`)
    eval.sbatch    --mode=eval
Multi-node steps run one process per node with `srun` and `--multihost`: JAX's
`jax.distributed.initialize()` reads the Slurm environment, so no address is passed. Every command
is shell-quoted with shlex, so paths with spaces, quotes or $ arrive intact.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from launch import tasks as tasks_lib


def sbatch_header(args, name: str, array: str | None = None) -> list[str]:
    """#SBATCH lines shared by the three scripts."""
    q = shlex.quote
    log_name = "%x-%A_%a.out" if array else "%x-%j.out"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={q(name)}",
        f"#SBATCH --nodes={args.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --time={q(args.time)}",
        f"#SBATCH --output={q(os.path.join(args.out_dir, log_name))}",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={q(args.partition)}")
    if args.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={args.gpus_per_node}")
    if args.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
    if array:
        lines.append(f"#SBATCH --array={array}")
    lines += ["set -euo pipefail"]
    if args.setup:
        lines.append(args.setup)
    lines.append(f"cd {q(args.repo)}")
    return lines


def distributed(args, argv: list[str]) -> str:
    """One command line: under srun with --multihost when several nodes run it."""
    if args.nodes > 1:
        return tasks_lib.shell_join(["srun", *argv, "--multihost"])
    return tasks_lib.shell_join(argv)


def build_scripts(args) -> dict[str, str]:
    """Returns {file name: content} of cache.sbatch, train.sbatch, eval.sbatch and submit.sh."""
    study_tasks = tasks_lib.load_tasks(args.config)
    name = args.name or os.path.splitext(os.path.basename(args.config.split(":")[0]))[0]

    def cmd(mode, task=None):
        return tasks_lib.main_argv(args.config, args.workdir, mode, task, python=args.python)

    cache = sbatch_header(args, f"{name}-cache") + [distributed(args, cmd("cache"))]
    array = f"0-{len(study_tasks) - 1}" + (f"%{args.max_parallel}" if args.max_parallel else "")
    train = sbatch_header(args, f"{name}-train", array) + ['case "$SLURM_ARRAY_TASK_ID" in']
    for i, task in enumerate(study_tasks):
        export = tasks_lib.shell_join(cmd("export", task))  # export runs on one process
        train.append(f"  {i}) {distributed(args, cmd('train', task))} && {export} ;;")
    train += ['  *) echo "no task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac"]
    evaluate = sbatch_header(args, f"{name}-eval") + [distributed(args, cmd("eval"))]
    q = shlex.quote
    path = lambda f: q(os.path.join(args.out_dir, f))
    submit = [
        "#!/bin/bash",
        "set -euo pipefail",
        f"cache=$(sbatch --parsable {path('cache.sbatch')})",
        f"train=$(sbatch --parsable --dependency=afterok:$cache {path('train.sbatch')})",
        f"sbatch --dependency=afterok:$train {path('eval.sbatch')}",
    ]
    return {
        "cache.sbatch": "\n".join(cache) + "\n",
        "train.sbatch": "\n".join(train) + "\n",
        "eval.sbatch": "\n".join(evaluate) + "\n",
        "submit.sh": "\n".join(submit) + "\n",
    }


def main(argv=None) -> int:
    """Parses the flags and launches (or prints, with --dry_run); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="Experiment file path.py[:arg].")
    parser.add_argument("--workdir", required=True, help="The study's workdir (shared storage).")
    parser.add_argument("--out_dir", required=True, help="Where scripts and logs go.")
    parser.add_argument("--repo", default=os.getcwd(), help="gemmascope checkout on the nodes.")
    parser.add_argument("--python", default="python", help="Python on the nodes.")
    parser.add_argument("--name", default=None, help="Slurm job name prefix (default: study file).")
    parser.add_argument("--nodes", type=int, default=1, help="Nodes per command (multi-host).")
    parser.add_argument("--gpus_per_node", type=int, default=0)
    parser.add_argument("--cpus_per_task", type=int, default=0)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time", default="1-00:00:00", help="Slurm time limit per job.")
    parser.add_argument("--max_parallel", type=int, default=0, help="Array elements at once.")
    parser.add_argument("--setup", default="", help="Shell line run first (e.g. activate a venv).")
    parser.add_argument("--dry_run", action="store_true", help="Print the scripts only.")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be >= 1")

    scripts = build_scripts(args)
    if args.dry_run:
        for file_name, content in scripts.items():
            print(f"# ---- {os.path.join(args.out_dir, file_name)}")
            print(content, end="")
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    for file_name, content in scripts.items():
        tmp = os.path.join(args.out_dir, f".{file_name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(content)
        os.replace(tmp, os.path.join(args.out_dir, file_name))
    return subprocess.call(["bash", os.path.join(args.out_dir, "submit.sh")])


if __name__ == "__main__":
    sys.exit(main())
