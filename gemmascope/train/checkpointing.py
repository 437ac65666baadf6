"""Orbax checkpoints of a sweep job (state + data-source position) and the preemption watch.

One `CheckpointManager` per job under `runs/<job>/checkpoints`, with two items:
`state` (the whole stacked train state: params, optimizer state, step, firing counters, sweep
values) saved with `StandardSave` and restored straight into the sharded abstract target, and
`source` (the activation source's `state()`, a small pytree of ints) saved as JSON.

Synopsis:
    manager = make_manager(run_dir / "checkpoints", keep=2, async_save=True)
    save(manager, step, state, source.state(), wait=False)
    restored = restore_latest(manager, abstract_state, source.state())  # None if no checkpoint
    with PreemptionWatch() as preemption:
        ... if preemption.reached(step, at_sync_point=is_log): save and stop ...
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def make_manager(directory: Path, keep: int, async_save: bool) -> ocp.CheckpointManager:
    """Creates the job's CheckpointManager (the directory is created on first save)."""
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"job_cfg.keep_checkpoints must be an int >= 1, got {keep!r}")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "source": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _source_to_json(source_state) -> dict:
    leaves = jax.tree.leaves(source_state)
    return {"leaves": [np.asarray(leaf).tolist() for leaf in leaves]}


def _source_from_json(saved: dict, template):
    """Rebuilds the source state with the structure and dtypes of `template` (a fresh state())."""
    leaves, treedef = jax.tree.flatten(template)
    saved_leaves = saved["leaves"]
    if len(saved_leaves) != len(leaves):
        raise ValueError(
            f"the checkpoint's data-source state has {len(saved_leaves)} entries but this source "
            f"has {len(leaves)}; was the job restarted with a different source?"
        )
    rebuilt = [
        np.asarray(s, dtype=np.asarray(t).dtype) for s, t in zip(saved_leaves, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, rebuilt)


def save(manager: ocp.CheckpointManager, step: int, state, source_state, wait: bool) -> None:
    """Saves `state` and the source position at `step`; blocks until written when `wait`.

    With async checkpointing the device-to-host copy happens before this returns, so the caller
    may donate `state` to the next step right away.
    """
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        source=ocp.args.JsonSave(_source_to_json(source_state)),
    )
    manager.save(step, args=args, force=True)
    if wait:
        manager.wait_until_finished()


class DamagedCheckpointError(ValueError):
    """Every checkpoint step of a job is damaged; the message names the folder and the causes."""


def _short(error: BaseException, limit: int = 240) -> str:
    """The first line of an error's message, cut to `limit` characters."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def restore_latest(manager: ocp.CheckpointManager, abstract_state, source_template):
    """Restores the newest readable checkpoint into the sharded `abstract_state`.

    A step that cannot be read (a damaged or truncated file) is skipped for the one before it,
    with a one-line warning; once an older step is restored, the damaged newer steps are deleted
    (their step numbers are saved again as training passes them).

    Returns:
        (state, source_state) or None when the manager holds no checkpoint.

    Raises:
        ValueError: The newest checkpoint does not fit this job (other shapes).
        DamagedCheckpointError: No step could be read (names the folder and each cause).
    """
    steps = sorted(manager.all_steps(), reverse=True)
    damaged = []
    for step in steps:
        _check_fits(manager, step, abstract_state)
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), source=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # orbax and tensorstore raise many kinds for damaged files
            damaged.append((step, _short(error)))
            log.warning(
                "checkpoint step %d in %s is damaged (%s); trying the one before it",
                step,
                manager.directory,
                _short(error),
            )
            continue
        for bad_step, _ in damaged:
            manager.delete(bad_step)
        if damaged:
            log.warning(
                "resumed from checkpoint step %d in %s; deleted the damaged step(s) %s",
                step,
                manager.directory,
                [bad for bad, _ in damaged],
            )
        return restored["state"], _source_from_json(restored["source"], source_template)
    if damaged:
        causes = "; ".join(f"step {step}: {cause}" for step, cause in damaged)
        raise DamagedCheckpointError(
            f"every checkpoint in {manager.directory} is damaged ({causes}). Delete that folder "
            "to train the job from the start, then rerun the same command."
        )
    return None


def _check_fits(manager, step: int, abstract_state) -> None:
    """Raises ValueError if checkpoint `step` holds params of other shapes than this job's.

    A step whose metadata cannot be read is left for restore to report as damaged.
    """
    try:
        saved_tree = manager.item_metadata(step)["state"]
        saved = jax.tree.map(lambda leaf: tuple(leaf.shape), dict(saved_tree))["params"]
    except Exception:  # damaged metadata: restore() fails on it and falls back
        return
    expected = {name: tuple(leaf.shape) for name, leaf in abstract_state["params"].items()}
    if saved != expected:
        raise ValueError(
            f"the checkpoint at step {step} in {manager.directory} does not fit this job: it "
            f"holds params {saved}, this job needs {expected} (leading axis: sweep members). Was "
            "the source's d_in, the width, the architecture or the sweep changed? Use a new job "
            "name or workdir."
        )


class PreemptionWatch:
    """Context manager that turns a preemption notice (SIGTERM) into one step to save and stop at.

    Preemption (Cloud TPU, Slurm) sends SIGTERM; the loop then saves a checkpoint at a step
    boundary and returns. Every process must pick the same step (a checkpoint is written by all of
    them together), and no step may wait on the other hosts to find out:

    - one process: a SIGTERM handler sets a flag, read by `reached` (nothing to agree on);
    - several processes (`jax.distributed`) with JAX's preemption service (the default,
      `jax_enable_preemption_service`): JAX's own SIGTERM handler, installed by
      `jax.distributed.initialize`, starts a background protocol in which the processes agree
      on the first step all of them can still reach; `reached(step)` is
      `multihost_utils.reached_preemption_sync_point(step)`, a local check (no collective). Our
      handler is not installed, as it would replace JAX's;
    - several processes without the service: the flags of all processes are gathered, but only
      at steps where the loop already synchronises (`at_sync_point`: its log and checkpoint
      steps), so a notice is acted on at the next of those.

    The previous SIGTERM handler is restored on exit. Outside the main thread (where handlers
    cannot be installed) a single process never sees the notice.
    """

    def __init__(self):
        """A watch that is not yet installed (enter the context to install it)."""
        self._flag = False
        self._previous = None
        self._installed = False
        self.mode = "local"

    def _handle(self, signum, frame):
        del signum, frame
        log.warning("SIGTERM received: saving a checkpoint at a step boundary, then stopping")
        self._flag = True

    def __enter__(self) -> PreemptionWatch:
        """Picks the mode (class docstring) and installs the SIGTERM handler where needed."""
        if jax.process_count() > 1:
            self.mode = "service" if jax.config.jax_enable_preemption_service else "gather"
        if self.mode == "service":
            return self
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        else:
            log.warning("not in the main thread: SIGTERM will not trigger a checkpoint")
        return self

    def __exit__(self, *exc) -> None:
        """Restores the previous SIGTERM handler."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, step: int, at_sync_point: bool) -> bool:
        """True at the step every process saves and stops at; never waits on other hosts.

        Args:
            step: the number of steps completed (the same on every process).
            at_sync_point: whether the loop synchronises the processes at this step anyway
                (used only without JAX's preemption service).
        """
        if self.mode == "local":
            return self._flag
        if self.mode == "service":
            return multihost_utils.reached_preemption_sync_point(step)
        if not at_sync_point:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
        return bool(np.any(flags))
