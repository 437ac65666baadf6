r"""Cloud TPU VM launcher: create or reuse a TPU VM or queued resource; run a study on all workers.

    python -m launch.tpu_vm --config=experiments/gemma2_9b.py:model_dir=/data/gemma-2-9b \
        --workdir=/mnt/gcs/gemma2_9b --name=gs-v4 --zone=us-central2-b \
        --accelerator_type=v4-32 --setup='pip install -e ~/gemmascope' --dry_run

Steps, each a `gcloud` command (printed, not run, with --dry_run):
    1. `gcloud compute tpus tpu-vm describe` to reuse an existing VM of that name; otherwise
       `gcloud compute tpus tpu-vm create` (or, with --queued, `queued-resources create`, which
       waits for capacity; add --spot for spot capacity);
    2. the --setup line on every worker (`ssh --worker=all`);
    3. `--mode=cache`, then per sweep task `--mode=train` and `--mode=export`, then `--mode=eval`,
       each on every worker at once with `--multihost` (JAX finds its peers on Cloud TPU, so
       `jax.distributed.initialize()` takes no arguments).
The remote command is shell-quoted twice (once for the remote shell, once for the local one), so
workdirs with spaces, quotes or $ arrive intact. Keep the workdir on a GCS bucket mounted with
gcsfuse on every worker (in --setup) so every worker and later runs see the same files.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

from launch import tasks as tasks_lib


def gcloud_tpu(args, *words: str) -> list[str]:
    """`gcloud compute tpus tpu-vm <words> --zone=Z [--project=P]`."""
    argv = ["gcloud", "compute", "tpus", "tpu-vm", *words, f"--zone={args.zone}"]
    return argv + ([f"--project={args.project}"] if args.project else [])


def create_argv(args) -> list[str]:
    """The command that creates the VM (directly or as a queued resource)."""
    if args.queued:
        argv = [
            "gcloud", "compute", "tpus", "queued-resources", "create", f"{args.name}-qr",
            f"--node-id={args.name}", f"--zone={args.zone}",
            f"--accelerator-type={args.accelerator_type}", f"--runtime-version={args.version}",
        ]  # fmt: skip
        argv += [f"--project={args.project}"] if args.project else []
    else:
        argv = gcloud_tpu(args, "create", args.name) + [
            f"--accelerator-type={args.accelerator_type}",
            f"--version={args.version}",
        ]
    return argv + (["--spot"] if args.spot else [])


def on_all_workers(args, remote: str) -> list[str]:
    """`ssh --worker=all --command=<remote>`: runs one shell line on every worker."""
    return gcloud_tpu(args, "ssh", args.name) + ["--worker=all", f"--command={remote}"]


def remote_main(args, mode: str, task=None) -> str:
    """The shell line that runs `python -m gemmascope` on a worker."""
    argv = tasks_lib.main_argv(
        args.config, args.workdir, mode, task, python=args.python, extra_flags=("--multihost",)
    )
    return f"cd {_quote_path(args.repo)} && {tasks_lib.shell_join(argv)}"


def _quote_path(path: str) -> str:
    """Quotes a remote path but keeps a leading ~/ expandable by the remote shell."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def run_commands(args) -> list[list[str]]:
    """The commands after the VM exists: setup, cache, train + export per task, eval."""
    commands = []
    if args.setup:
        commands.append(on_all_workers(args, args.setup))
    commands.append(on_all_workers(args, remote_main(args, "cache")))
    for task in tasks_lib.load_tasks(args.config):
        commands.append(on_all_workers(args, remote_main(args, "train", task)))
        commands.append(on_all_workers(args, remote_main(args, "export", task)))
    commands.append(on_all_workers(args, remote_main(args, "eval")))
    return commands


def main(argv=None) -> int:
    """Parses the flags and launches (or prints, with --dry_run); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="Experiment file path.py[:arg].")
    parser.add_argument("--workdir", required=True, help="The study's workdir (a gcsfuse mount).")
    parser.add_argument("--name", required=True, help="TPU VM name (reused if it exists).")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None)
    parser.add_argument("--accelerator_type", default="v4-8", help="e.g. v3-8, v4-32, v5p-16.")
    parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU runtime version.")
    parser.add_argument("--queued", action="store_true", help="Create via a queued resource.")
    parser.add_argument("--spot", action="store_true", help="Spot (preemptible) capacity.")
    parser.add_argument("--repo", default="~/gemmascope", help="Checkout path on the workers.")
    parser.add_argument("--python", default="python3", help="Python on the workers.")
    parser.add_argument("--setup", default="", help="Shell line run first on every worker.")
    parser.add_argument("--dry_run", action="store_true", help="Print the commands only.")
    args = parser.parse_args(argv)

    describe = gcloud_tpu(args, "describe", args.name)
    if args.dry_run:
        print(f"# reuse {args.name} if this succeeds: {tasks_lib.shell_join(describe)}")
        print(f"# otherwise create it: {tasks_lib.shell_join(create_argv(args))}")
        for command in run_commands(args):
            print(tasks_lib.shell_join(command))
        return 0
    exists = subprocess.call(describe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
    if not exists:
        code = subprocess.call(create_argv(args))
        if code:
            return code
        while subprocess.call(describe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            print(f"launch.tpu_vm: waiting for {args.name} (queued resource)...")
            time.sleep(60)
    for command in run_commands(args):
        code = subprocess.call(command)
        if code:
            print(f"launch.tpu_vm: failed (exit {code}): {tasks_lib.shell_join(command)}")
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
