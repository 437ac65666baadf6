"""Preemption poll benchmark: step time of a 2-process sweep job, per-step poll before vs now.

    PYTHONPATH=. python benchmarks/preemption_poll.py [--devices 2] [--rounds 8] [--steps 160]

Starts two local processes that join one `jax.distributed` job on a localhost coordinator, each
with `--devices` forced host CPU devices (as tests/train does), and trains the same sweep job
(ArraySource, a (data, model) = (2 x devices, 1) mesh) in both, alternating round by round between
two ways of polling for preemption:

- before: every step, every process's SIGTERM flag gathered with
  `multihost_utils.process_allgather` (what `train_sweep` did until this change; restored here by
  patching `checkpointing.PreemptionWatch.reached`);
- now: `PreemptionWatch.reached` as shipped, i.e. JAX's preemption service
  (`reached_preemption_sync_point`, a local check), with no collective in the step.

The step time of a round is read from the job's own metrics: the median over its logged intervals
(after the first, which includes compilation) of batch_size / tokens_per_sec. Checkpoints are
written only at the end, TensorBoard and the progress bar are off, so both ways differ only in the
poll. Each process also times the two polls alone (`--calls` calls each, outside training). Prints
a Markdown table: the poll's own cost, the best and the median round's step time per way, and the
ratios before / now (the best rounds are the ones least disturbed by other load on the host).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

WAYS = ("before: allgather every step", "now: no collective per step")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _per_step_allgather(self, step, at_sync_point):
    """The poll this change removed: every process's flag, gathered at every step."""
    import numpy as np
    from jax.experimental import multihost_utils

    del step, at_sync_point
    flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
    return bool(np.any(flags))


def _job(name: str, steps: int, log_every: int, args):
    from gemmascope import train

    cfg = train.default_config("jumprelu")
    cfg.update(
        name=name,
        width=args.width,
        sweep_values=[1e-4 * (i + 1) for i in range(args.members)],
        batch_size=args.batch,
        total_tokens=args.batch * steps,
        log_every_tokens=args.batch * log_every,
        ckpt_every_tokens=args.batch * steps,
        mesh=[("data", -1), ("model", 1)],
        progress_bar=False,
        tensorboard=False,
    )
    return cfg


def child(args) -> None:
    """One of the two processes: trains the job in both ways, prints its step times as JSON."""
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np

    jax.distributed.initialize(f"localhost:{args.port}", num_processes=2, process_id=args.process)
    from gemmascope import activations, train
    from gemmascope.train import checkpointing

    shipped = checkpointing.PreemptionWatch.reached
    watch = checkpointing.PreemptionWatch().__enter__()
    poll_seconds = {}
    for way in WAYS:
        poll = _per_step_allgather if way.startswith("before") else shipped
        poll(watch, 0, False)  # compile the gather once
        start = time.perf_counter()
        for step in range(args.calls):
            poll(watch, step, False)
        poll_seconds[way] = (time.perf_counter() - start) / args.calls
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch * 16, args.d_in)).astype(np.float32)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for round_index in range(args.rounds):
        for way in WAYS:
            patched = _per_step_allgather if way.startswith("before") else shipped
            checkpointing.PreemptionWatch.reached = patched
            name = f"r{round_index}-{way.split(':')[0]}"
            job = _job(name, args.steps, args.log_every, args)
            result = train.train_sweep(job, activations.ArraySource(x, seed=1), args.workdir)
            rates = [h["tokens_per_sec"] for h in result.history[1:]]
            if jax.process_index() == 0:
                times[way].append(statistics.median(args.batch / r for r in rates))
    checkpointing.PreemptionWatch.reached = shipped
    if jax.process_index() == 0:
        summary = {"times": times, "poll": poll_seconds, "mode": watch.mode}
        print(json.dumps({**summary, "devices": jax.device_count()}))
    jax.distributed.shutdown()


def main() -> None:
    """Parses the flags; the parent starts the two processes and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2, help="forced CPU devices per process")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--log-every", type=int, default=40)
    parser.add_argument("--d-in", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--calls", type=int, default=500, help="poll calls timed alone")
    parser.add_argument("--process", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.process is not None:
        child(args)
        return
    with tempfile.TemporaryDirectory() as workdir:
        port = _free_port()
        flags = list(sys.argv[1:])
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        env.pop("XLA_FLAGS", None)
        children = [
            subprocess.Popen(
                [sys.executable, __file__, *flags, "--process", str(i), "--port", str(port)]
                + ["--workdir", workdir],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in (0, 1)
        ]
        outputs = [c.communicate()[0] for c in children]
        if any(c.returncode for c in children):
            raise SystemExit(f"a process failed: {[c.returncode for c in children]}")
    result = json.loads(outputs[0].strip().splitlines()[-1])
    medians = {way: statistics.median(result["times"][way]) for way in WAYS}
    best = {way: min(result["times"][way]) for way in WAYS}
    print(
        f"2 processes x {args.devices} CPU devices ({result['devices']} in the mesh), "
        f"preemption mode now: {result['mode']}; d_in {args.d_in}, width {args.width}, "
        f"batch {args.batch}, {args.members} members; {args.rounds} rounds of {args.steps} steps"
    )
    print(
        "\n| poll | one poll alone, ms | step, ms: best round | median round | rounds, ms |\n"
        "| --- | --- | --- | --- | --- |"
    )
    for way in WAYS:
        rounds = ", ".join(f"{1e3 * t:.2f}" for t in result["times"][way])
        poll = 1e3 * result["poll"][way]
        print(
            f"| {way} | {poll:.4f} | {1e3 * best[way]:.2f} | {1e3 * medians[way]:.2f} | {rounds} |"
        )
    ratio_best = best[WAYS[0]] / best[WAYS[1]]
    ratio_median = medians[WAYS[0]] / medians[WAYS[1]]
    print(f"\nratio before / now: best rounds {ratio_best:.2f}, median rounds {ratio_median:.2f}")


if __name__ == "__main__":
    main()
