"""One stacked sweep job fed from memory, from the cache on disk and from the LM, against its floor.

Issue 14: one stacked job of S SAEs should cost no more than S single SAEs' compute plus one data
pass. For one site of the embedded tiny Gemma 2 (Tiny Shakespeare, the demo's corpus), this times
side by side in one process:

- ``S x single``: the compiled step of a one-member job (the trainer's own program, on one fixed
  batch), times S: the compute of S single SAEs;
- ``stacked``: the compiled step of the S-member job on one fixed batch;
- ``data pass``: one batch from each source alone (``next(source.iter_batches(...))``, made
  ready): from memory (``ArraySource``), from the cache on disk (``CacheSource``, written first by
  ``activations.build_cache``), streamed from the LM (``StreamingSource``: its forward passes);
- ``trainer``: ``train.train_sweep`` of the S-member job from each source, per step (the
  difference between a run of 2 and of 2 + ``--steps`` steps, so start-up, compilation and the
  final checkpoint cancel);

and reports each trainer's time against its floor, S x single + that source's data pass. Two
cores run both the step and the source, so a data pass adds to the step instead of hiding
behind it.

Usage:
    PYTHONPATH=. python benchmarks/sweep_sources.py [--site resid_post/3 --members 8
        --width 1024 --batch 1024 --steps 32 --rounds 2 --stream_buffer 16384]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from benchmarks.speed_job import bare_step_seconds, speed_job
from gemmascope import activations, study, train
from gemmascope import mesh as mesh_lib
from gemmascope.train import loop, step

_EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments", "tiny_demo.py")
_WARM_STEPS = 2


def _study_config(site: str):
    _, config = study.load_config_file(_EXPERIMENT)
    config.sites = (site,)
    return config


def _job(args, d_in: int, members: int, steps: int, name: str):
    values = [float(v) for v in np.geomspace(1e-4, 1e-2, members)]
    return speed_job(
        name, d_in=d_in, width=args.width, batch=args.batch, steps=steps, sweep_values=values
    )


def _data_pass_seconds(source, batch_size: int, sharding, n: int) -> float:
    """Mean seconds per ready batch over `n` batches of `source` (its iterator started first).

    A mean, not a median: a streaming source runs its forward passes once per shuffle buffer,
    so most of its batches are free and a few carry the model's cost.
    """
    batches = source.iter_batches(batch_size, sharding)
    jax.block_until_ready(next(batches))
    start = time.perf_counter()
    for _ in range(n):
        jax.block_until_ready(next(batches))
    seconds = (time.perf_counter() - start) / n
    batches.close()
    return seconds


def _trainer_seconds_per_step(args, source, d_in: int, workdir: str) -> float:
    """Per-step seconds of train_sweep: the difference of a 2-step and a (2 + steps)-step run."""
    times = []
    for steps in (_WARM_STEPS, _WARM_STEPS, _WARM_STEPS + args.steps):  # the first compiles
        shutil.rmtree(workdir, ignore_errors=True)
        job = _job(args, d_in, args.members, steps, "sources")
        start = time.perf_counter()
        result = train.train_sweep(job, source, workdir)
        times.append(time.perf_counter() - start)
        assert result.steps == steps
    return (times[2] - times[1]) / args.steps


def main():
    """Parses the flags, builds the three sources, measures and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="resid_post/3")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=32, help="steps per trainer difference")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds")
    parser.add_argument(
        "--stream_buffer",
        type=int,
        default=1 << 14,
        help="StreamingSource buffer_tokens: its forward passes run once per this many tokens "
        "(the default 2^18 holds the demo's whole corpus: one forward per epoch)",
    )
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="sweep_sources_")
    try:
        config = _study_config(args.site)
        start = time.perf_counter()
        activations.build_cache(config, tmp)
        cache_seconds = time.perf_counter() - start
        cache = activations.open_source(tmp, args.site, seed=0)
        d_in = cache.d_in
        mesh = mesh_lib.make_mesh([("data", -1), ("model", 1)])
        sharding = step.compiled_functions(
            loop.job_shape(_job(args, d_in, 1, 1, "shape"), d_in, mesh)
        ).batch_sharding
        batches = cache.iter_batches(args.batch, sharding)
        rows = np.concatenate([np.asarray(next(batches)) for _ in range(32)])
        batches.close()
        sources = {
            "memory (ArraySource)": activations.ArraySource(rows, seed=0, norm_scale=1.0),
            "cache on disk (CacheSource)": activations.open_source(tmp, args.site, seed=0),
            "streamed from the LM (StreamingSource)": activations.StreamingSource.from_config(
                config,
                args.site,
                seed=0,
                norm_scale=cache.norm_scale,
                buffer_tokens=args.stream_buffer,
            ),
        }
        batch = rows[: args.batch]
        floor, stacked = [], []
        data = {name: [] for name in sources}
        trainer = {name: [] for name in sources}
        for _ in range(args.rounds):  # interleaved: load changes hit every candidate alike
            single_job = _job(args, d_in, 1, 5, "bare1")
            stacked_job = _job(args, d_in, args.members, 5, "bare")
            floor.append(args.members * bare_step_seconds(single_job, d_in, batch, 5))
            stacked.append(bare_step_seconds(stacked_job, d_in, batch, 5))
            for name, source in sources.items():
                data[name].append(_data_pass_seconds(source, args.batch, sharding, 64))
                workdir = os.path.join(tmp, "work")
                trainer[name].append(_trainer_seconds_per_step(args, source, d_in, workdir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    single = min(floor)
    print(
        f"site {args.site} (d_in {d_in}), S = {args.members} JumpReLU SAEs of width {args.width},"
        f" batch {args.batch}; {jax.devices()[0].platform}, {jax.device_count()} device(s); "
        f"best of {args.rounds} rounds; cache written in {cache_seconds:.1f} s"
    )
    print(f"S x single step: {1e3 * single:.1f} ms; stacked step: {1e3 * min(stacked):.1f} ms "
          f"({min(stacked) / single:.2f}x S x single)")  # fmt: skip
    print("| source | data pass ms | floor: S x single + data pass, ms | trainer ms/step | "
          "trainer / floor |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for name in sources:
        pass_ms = 1e3 * min(data[name])
        floor_ms = 1e3 * single + pass_ms
        step_ms = 1e3 * min(trainer[name])
        print(
            f"| {name} | {pass_ms:.1f} | {floor_ms:.1f} | {step_ms:.1f} | "
            f"{step_ms / floor_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
