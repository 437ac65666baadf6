"""Orbax checkpoints of a sweep job (state + data-source position) and the SIGTERM flag.

One `CheckpointManager` per job under `runs/<job>/checkpoints`, with two items:
`state` (the whole stacked train state: params, optimizer state, step, firing counters, sweep
values) saved with `StandardSave` and restored straight into the sharded abstract target, and
`source` (the activation source's `state()`, a small pytree of ints) saved as JSON.

Synopsis:
    manager = make_manager(run_dir / "checkpoints", keep=2, async_save=True)
    save(manager, step, state, source.state(), wait=False)
    restored = restore_latest(manager, abstract_state, source.state())  # None if no checkpoint
    with SigtermFlag() as preempt:
        ... if preempt.requested(): save and stop ...
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


def restore_latest(manager: ocp.CheckpointManager, abstract_state, source_template):
    """Restores the newest checkpoint into the sharded `abstract_state`.

    Returns:
        (state, source_state) or None when the manager holds no checkpoint.
    """
    step = manager.latest_step()
    if step is None:
        return None
    saved_tree = manager.item_metadata(step)["state"]
    saved = jax.tree.map(lambda leaf: tuple(leaf.shape), dict(saved_tree))["params"]
    expected = {name: tuple(leaf.shape) for name, leaf in abstract_state["params"].items()}
    if saved != expected:
        raise ValueError(
            f"the checkpoint at step {step} in {manager.directory} does not fit this job: it "
            f"holds params {saved}, this job needs {expected} (leading axis: sweep members). Was "
            "the source's d_in, the width, the architecture or the sweep changed? Use a new job "
            "name or workdir."
        )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), source=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], _source_from_json(restored["source"], source_template)


class SigtermFlag:
    """Context manager that turns SIGTERM into a flag the training loop polls.

    Preemption (Cloud TPU, Slurm) sends SIGTERM; the handler only records it, and the loop saves a
    checkpoint and returns at the next step boundary. The previous handler is restored on exit.
    Outside the main thread (where handlers cannot be installed) the flag stays False.
    """

    def __init__(self):
        """A flag that is not yet installed (enter the context to install it)."""
        self._flag = False
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame):
        del signum, frame
        log.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")
        self._flag = True

    def __enter__(self) -> SigtermFlag:
        """Installs the SIGTERM handler (main thread only)."""
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

    def requested(self) -> bool:
        """True once any process got SIGTERM (all processes agree, so they save the same step)."""
        if jax.process_count() == 1:
            return self._flag
        flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
        return bool(np.any(flags))
