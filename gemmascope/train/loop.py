"""`train_sweep`: train the S SAEs of one job on one activation source, resumably.

The loop reads top to bottom, in numbered sections: config -> logging -> mesh -> model and
optimizer (compiled per job shape) -> held-out batch -> checkpoint/resume (state created sharded)
-> loop -> outputs. Fork this file rather than adding flags that switch code paths.

Synopsis:
    job_cfg = train.default_config("jumprelu"); job_cfg.width = 4096; ...
    result = train.train_sweep(job_cfg, activations.ArraySource(x), workdir)
    result.params["W_enc"]            # (S, d_in, width) numpy, training form
    result.member_params(0)           # member 0's params
    result.history                    # the metrics.jsonl records

Outputs under workdir/runs/<name>/: checkpoints/ (orbax), metrics.jsonl, tensorboard/, and at the
end job.json and final_params.npz (the exporter's contract, docs/internals.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from gemmascope import activations, files, sae
from gemmascope import mesh as mesh_lib
from gemmascope.activations import global_batch
from gemmascope.train import (
    checkpointing,
    config,
    init_from,
    metrics_writer,
    sharding,
    step,
    throughput,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a sweep job produced.

    Attributes:
        params: training-form params, each (S, ...) numpy with the sweep axis first.
        members: per member, {"sweep_field", "sweep_value", "seed"} in stacking order.
        history: the metrics.jsonl records of the whole run (one dict per logged step).
        tokens_trained: tokens seen by every member (steps x batch size).
        steps: optimizer steps completed.
        preempted: True when SIGTERM stopped the run early (checkpoint saved; rerun to resume).
        run_dir: workdir/runs/<name> (an epath.Path: a local path or a gs:// URL).
    """

    params: dict
    members: list
    history: list
    tokens_trained: int
    steps: int
    preempted: bool
    run_dir: epath.Path

    def member_params(self, member: int) -> dict:
        """The params of one sweep member (no sweep axis)."""
        return {name: value[member] for name, value in self.params.items()}


def _absolute(path: epath.Path) -> epath.Path:
    """`path` made absolute (orbax needs it), leaving URLs as they are."""
    return path if files.is_url(os.fspath(path)) else path.absolute()


class NonFiniteLossError(FloatingPointError):
    """A sweep member's loss became NaN or Inf; the last good checkpoint is kept."""


def resolve_sae_config(
    job_cfg: ml_collections.ConfigDict, arch: sae.Architecture, d_out: int | None = None
) -> ml_collections.ConfigDict:
    """The SAE config the step uses: job_cfg.sae checked against the arch, token warmups applied.

    Its windows are tied to the job's by `config.link_sae_config` (AuxK's dead window, the
    BatchTopK threshold start). `d_out`, a paired source's target width, makes it a transcoder's
    (`sae.d_out`; docs/transcoders.md).

    Raises:
        ValueError: a field of job_cfg.sae is not a field of the architecture's config, or its
            windows disagree with the job's (`config.link_sae_config`), or `sae.d_out` disagrees
            with the source's target width, or the architecture trains no transcoders.
    """
    defaults = arch.default_config()
    sae_cfg = ml_collections.ConfigDict(job_cfg.sae.to_dict() if job_cfg.sae else {})
    unknown = sorted(set(sae_cfg.keys()) - set(defaults.keys()))
    if unknown:
        raise ValueError(
            f"job_cfg.sae has fields {unknown} that the {job_cfg.arch!r} architecture does not "
            f"know; valid fields: {sorted(defaults.keys())}"
        )
    defaults.update(sae_cfg)
    if d_out is not None:
        if defaults.get("d_out") not in (None, int(d_out)):
            raise ValueError(
                f"job_cfg.sae.d_out is {defaults.d_out} but the source's target site "
                f"({job_cfg.get('target_site')!r}) is {d_out} wide; leave sae.d_out None"
            )
        defaults.d_out = int(d_out)
    sae.registry.check_transcoder_support(job_cfg.arch, defaults)
    for tokens_field, steps_field in (
        ("lr_warmup_tokens", "lr_warmup_steps"),
        ("sparsity_warmup_tokens", "sparsity_warmup_steps"),
    ):
        tokens = job_cfg.get(tokens_field)
        if tokens is not None:
            if tokens < 0:
                raise ValueError(f"job_cfg.{tokens_field} must be >= 0 tokens, got {tokens!r}")
            defaults[steps_field] = -(-int(tokens) // job_cfg.batch_size)
    values = list(job_cfg.sweep_values)
    if arch.sweep_field(defaults) == "k" and defaults.get("k_max", 0) is None and values:
        # top_k runs with the static k_max; each member's traced k picks its k-th value below it.
        defaults.k_max = max(max(int(v) for v in values), int(defaults.k))
    config.link_sae_config(job_cfg, defaults)
    arch.validate(defaults)
    sae.check_sweep_values(job_cfg.arch, defaults, values, width=int(job_cfg.width))
    return defaults


def _to_host(tree):
    """Fetches global arrays to numpy on every process (gathering across processes if needed)."""

    def one(x):
        if x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def _check_finite(state, members, sweep_field, manager) -> None:
    """Raises NonFiniteLossError naming the first member and step whose loss was not finite."""
    bad_step = np.asarray(jax.device_get(state["bad_step"]))
    bad = np.flatnonzero(bad_step >= 0)
    if bad.size == 0:
        return
    manager.wait_until_finished()
    member = int(bad[np.argmin(bad_step[bad])])
    value, seed = members[member]
    raise NonFiniteLossError(
        f"non-finite loss in sweep member {member} ({sweep_field}={value}, seed={seed}) at step "
        f"{int(bad_step[member])}; stopped. The last good checkpoint (step "
        f"{manager.latest_step()}) is kept in {manager.directory}"
    )


def train_sweep(
    job_cfg: ml_collections.ConfigDict,
    source: activations.ActivationSource,
    workdir,
    devices: list | None = None,
) -> TrainResult:
    """Trains every sweep member of `job_cfg` on batches of `source`; resumes if checkpointed.

    Args:
        job_cfg: a `default_config()` (with overrides).
        source: an `activations.ActivationSource` (docs/internals.md): d_in, norm_scale,
            iter_batches(batch size, sharding), state(), restore(state); an
            `activations.PairedSource` trains transcoders (docs/transcoders.md).
        workdir: the study's workdir; this job writes workdir/runs/<job_cfg.name>/.
        devices: the devices job_cfg.mesh lays out (default: every device of every process).

    Returns:
        TrainResult. When SIGTERM arrived, `preempted` is True and a checkpoint of the last
        completed step is on disk; rerunning the same call resumes from it.

    Raises:
        ValueError: unknown architecture or SAE config field, width or batch not divisible by
            the mesh, a source whose d_in differs from the checkpoint's, bad budgets.
        TypeError: `source` lacks a member of `activations.ActivationSource`.
        NonFiniteLossError: a member's loss became NaN/Inf (names the member and the step).
    """
    # 1. Config: architecture, SAE config, members, step budgets; the source's contract.
    activations.check_source(source)
    arch = config.get_architecture(job_cfg.arch)
    d_out = _target_width(job_cfg, source)
    sae_cfg = resolve_sae_config(job_cfg, arch, d_out)
    sweep_field = arch.sweep_field(sae_cfg)
    members = config.sweep_members(job_cfg)
    budget = config.resolve_budget(job_cfg)
    d_in = _source_width(job_cfg, source)

    # 2. Logging: the run directory; only process 0 writes files.
    #    A local path or a gs:// URL: epath.Path joins both (pathlib would break "gs://").
    run_dir = epath.Path(os.fspath(workdir)) / "runs" / job_cfg.name
    is_writer = jax.process_index() == 0
    if is_writer:
        files.makedirs(os.fspath(run_dir))

    # 3. Mesh (gemmascope.mesh: the one mesh and sharding vocabulary).
    mesh = mesh_lib.make_mesh(job_cfg.mesh, devices, field="job_cfg.mesh")
    sharding.check_divisible(mesh, int(job_cfg.width), job_cfg.batch_size)

    # 4. Model and optimizer: one compiled init, step and held-out evaluation per job shape
    #    (cached across jobs).
    shape = _job_shape(job_cfg, sae_cfg, members, budget, d_in, mesh)
    fns = step.compiled_functions(shape)

    # 5. The held-out batch: taken from the source before its stream starts, so training never
    #    sees it (docs/internals.md, "activations").
    heldout = _heldout_batch(source, fns, shape) if budget.heldout_every else None

    # 6. Checkpoint / resume. Resume order:
    #    (1) the newest checkpoint in run_dir/checkpoints (same job, e.g. after preemption);
    #    (2) otherwise from scratch: state created already sharded from the members' seeds,
    #        its params replaced by another job's final params when job_cfg.init_from names one
    #        (IT fine-tuning; the optimizer state and the step counter stay fresh).
    manager = checkpointing.make_manager(
        _absolute(run_dir / "checkpoints"), job_cfg.keep_checkpoints, job_cfg.async_checkpointing
    )
    state = _restore_or_init(manager, fns, source, members, shape, sweep_field, job_cfg)
    start_step = int(jax.device_get(state["step"]))

    # 7. The loop: one batch feeds every member; periodic logs (with held-out metrics), NaN
    #    checks and checkpoints.
    writer = metrics_writer.MetricsWriter(
        run_dir,
        budget.total_steps,
        start_step,
        job_cfg.batch_size,
        enabled=is_writer,
        progress=job_cfg.progress_bar,
        tensorboard=job_cfg.tensorboard,
        flops_per_step=throughput.step_flops(shape),
        peak_flops=throughput.peak_flops(mesh.devices.flat),
    )
    batches = source.iter_batches(job_cfg.batch_size, fns.batch_sharding)
    current, preempted = start_step, False
    try:
        with checkpointing.PreemptionWatch() as preemption:
            while current < budget.total_steps and not preempted:
                batch = next(batches)
                # Batches and state are already on device; the step itself moves no data.
                with jax.transfer_guard("disallow"):
                    state, metrics = fns.train_step(state, batch)
                current += 1
                due = budget.due(current)
                # Never a collective: the processes agree on the step in the background.
                preempted = preemption.reached(current, at_sync_point=due.log or due.ckpt)
                if due.log or due.ckpt or preempted:
                    _check_finite(state, members, sweep_field, manager)
                if due.heldout:
                    metrics = {**metrics, **_heldout_metrics(fns, state, heldout)}
                if due.log:
                    writer.write(current, _to_host(metrics))
                else:
                    writer.advance(current)
                if due.ckpt or preempted:
                    writer.flush()  # the records of every step <= current are written first
                    last = current == budget.total_steps
                    checkpointing.save(
                        manager, current, state, source.state(), wait=preempted or last
                    )
        if preempted:
            log.warning("preempted at step %d; rerun the same job to resume", current)
        manager.wait_until_finished()
    finally:
        writer.close()
        manager.close()
        batches.close()

    # 8. Outputs: final params and job.json (written atomically, by process 0).
    params = _to_host(state["params"])
    if not preempted and is_writer:
        files.save_npz(os.fspath(run_dir / "final_params.npz"), params)
        job = job_cfg.to_dict()
        if d_out is not None:  # a transcoder: export folds both scalars (docs/transcoders.md)
            job.update(d_out=d_out, target_norm_scale=float(source.target_norm_scale))
        job.update(
            norm_scale=float(source.norm_scale),
            d_in=d_in,
            tokens_trained=current * job_cfg.batch_size,
            steps=current,
            sweep_field=sweep_field,
            members=[{"sweep_value": v, "seed": s} for v, s in members],
        )
        job["sae"] = sae_cfg.to_dict()
        files.write_json(os.fspath(run_dir / "job.json"), job, default=_json_default)
    return TrainResult(
        params=params,
        members=[{"sweep_field": sweep_field, "sweep_value": v, "seed": s} for v, s in members],
        history=metrics_writer.read_history(run_dir) if is_writer else [],
        tokens_trained=current * job_cfg.batch_size,
        steps=current,
        preempted=preempted,
        run_dir=run_dir,
    )


def _source_width(job_cfg: ml_collections.ConfigDict, source) -> int:
    """The source's d_in, checked against job_cfg.d_in when the job names one."""
    d_in = int(source.d_in)
    if job_cfg.get("d_in") is not None and int(job_cfg.d_in) != d_in:
        raise ValueError(
            f"the source's d_in is {d_in} but job_cfg.d_in is {job_cfg.d_in} (site "
            f"{job_cfg.site!r}); give this job the activations of its own site"
        )
    return d_in


def _target_width(job_cfg: ml_collections.ConfigDict, source) -> int | None:
    """A paired source's target width d_out (a transcoder job), or None for an SAE's source.

    Raises:
        ValueError: the job names a target site but the source is not paired, or the reverse.
    """
    d_out = getattr(source, "d_out", None)
    target_site = job_cfg.get("target_site") or ""
    if target_site and d_out is None:
        raise ValueError(
            f"job {job_cfg.name!r} is a transcoder (target_site {target_site!r}) but its source "
            f"yields one site; give it an activations.PairedSource ({job_cfg.site!r} -> "
            f"{target_site!r})"
        )
    return None if d_out is None else int(d_out)


def _sweep_dtype(members) -> np.dtype:
    """int32 for integer sweeps (k), else float32."""
    values = [value for value, _ in members]
    return np.dtype(np.int32 if all(isinstance(v, int) for v in values) else np.float32)


def job_shape(job_cfg, d_in: int, mesh, d_out: int | None = None) -> step.JobShape:
    """The `step.JobShape` train_sweep compiles for this job: the key of its compiled functions.

    `step.compiled_functions(job_shape(...))` is the trainer's own program, which benchmarks time
    without the loop around it (benchmarks/vs_saelens.py).

    Args:
        job_cfg: a `default_config()` (with overrides).
        d_in: the source's activation width.
        mesh: the job's mesh (`gemmascope.mesh.make_mesh(job_cfg.mesh)`).
        d_out: a transcoder's target width (None for an SAE).
    """
    sae_cfg = resolve_sae_config(job_cfg, config.get_architecture(job_cfg.arch), d_out)
    members = config.sweep_members(job_cfg)
    return _job_shape(job_cfg, sae_cfg, members, config.resolve_budget(job_cfg), d_in, mesh)


def _job_shape(job_cfg, sae_cfg, members, budget, d_in, mesh) -> step.JobShape:
    """`job_shape` from the job's already resolved SAE config, members and budget."""
    return step.JobShape(
        arch=job_cfg.arch,
        sae_cfg=sae_cfg,
        d_in=d_in,
        width=int(job_cfg.width),
        n_members=len(members),
        batch_size=job_cfg.batch_size,
        dead_window=budget.dead_window,
        sweep_dtype=_sweep_dtype(members),
        mesh=mesh,
        rules=tuple(job_cfg.logical_axis_rules),
        members_per_pass=config.members_per_pass(job_cfg, mesh.devices.flat[0].platform),
        block_tokens=config.block_tokens(
            job_cfg, mesh.devices.flat[0].platform, mesh.shape["data"]
        ),
    )


def _restore_or_init(
    manager, fns, source, members, shape: step.JobShape, sweep_field: str, job_cfg
):
    """The newest checkpoint's state (the source restored to its position), or a fresh state.

    A fresh state of a job with `init_from` holds that job's final params (`train.init_from`).
    """
    values = np.asarray([value for value, _ in members], shape.sweep_dtype)
    restored = checkpointing.restore_latest(manager, fns.abstract_state, source.state())
    if restored is None:
        seeds = np.asarray([seed for _, seed in members], np.int32)
        state = fns.init(seeds, values)
        if job_cfg.get("init_from"):
            abstract = fns.abstract_state["params"]
            loaded = init_from.load(job_cfg, shape.sae_cfg, members, shape.d_in, abstract)
            # Adam's moments and the other optimizer states do not depend on the params'
            # values, so the fresh `opt` is the optimizer's init of the loaded params.
            state = {**state, "params": _placed(loaded, fns.state_shardings["params"])}
            log.info("initialised from %s", job_cfg.init_from)
        return state
    state, source_state = restored
    source.restore(source_state)
    saved_values = np.asarray(jax.device_get(state["sweep_value"]))
    if not np.allclose(saved_values, values):
        raise ValueError(
            f"the checkpoint in {manager.directory} trained {sweep_field}="
            f"{saved_values.tolist()} but job_cfg.sweep_values gives {values.tolist()}; use a new "
            "job name or workdir"
        )
    log.info("resumed from step %d", int(jax.device_get(state["step"])))
    return state


def _placed(arrays: dict, shardings: dict) -> dict:
    """Host numpy arrays (every process holds all of them) laid out as global arrays."""
    return {
        name: jax.make_array_from_callback(
            value.shape, shardings[name], lambda index, value=value: value[index]
        )
        for name, value in arrays.items()
    }


def _heldout_batch(source, fns, shape: step.JobShape) -> jax.Array:
    """The source's held-out rows, one batch, laid out like a training batch."""
    held = source.hold_out(shape.batch_size)

    def laid_out(rows):
        return global_batch.global_batch(
            np.arange(shape.batch_size), rows.shape[1], fns.batch_sharding, lambda r: rows[r]
        )

    if isinstance(held, tuple):  # a transcoder's (input, target) rows
        return tuple(laid_out(rows) for rows in held)
    return laid_out(held)


def _heldout_metrics(fns, state, batch) -> dict:
    """Every member's held-out metrics, named heldout/<metric>."""
    return {f"heldout/{name}": value for name, value in fns.heldout(state, batch).items()}


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"job config value {value!r} of type {type(value).__name__} is not JSON")
