"""Training metrics of a sweep job: metrics.jsonl, TensorBoard events and a progress bar.

Only process 0 writes; every other process gets a writer that does nothing.
On a local disk metrics.jsonl is appended to line by line; an object store (gs://) cannot append,
so there the whole file is rewritten (one atomic upload) at each logged step.
Each logged step is one JSON line holding every sweep member:

    {"step": 100, "tokens": 409600, "tokens_per_sec": 5.1e5,
     "l0": [s0, s1, ...], "fvu": [...], "recon_loss": [...], "sparsity_loss": [...], "loss": [...],
     "frac_dead": [...], "lr": [...], "sparsity_coeff": [...]}

(lists are indexed by sweep member, in the order of `config.sweep_members`). TensorBoard scalars
are named `<metric>/member<i>`; the progress bar shows tokens/s and the L0 and FVU range across
the sweep.

Synopsis:
    writer = MetricsWriter(run_dir, total_steps, start_step, batch_size, enabled=..., progress=...)
    writer.write(step, metrics)     # metrics: name -> (S,) numpy array
    writer.advance(step)            # per step, cheap
    writer.close()
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np
import tqdm

from gemmascope import files

log = logging.getLogger(__name__)


def read_history(path: str, skip_damaged: bool = False) -> list[dict]:
    """Reads metrics.jsonl (missing file = empty history).

    Every record ends with a newline, so text after the last newline is a line that a kill cut
    short while it was being appended: it is left out (a resumed run logs that step again).

    Args:
      path: the metrics.jsonl file.
      skip_damaged: leave out lines that are not a JSON record, with a warning naming each,
        instead of raising.

    Raises:
      ValueError: a line is not a JSON record (names the file and the line).
    """
    if not files.exists(path):
        return []
    *complete, _cut_short = files.read_text(path).split("\n")
    records = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a record with a step")
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            message = f"{path}, line {number}, is damaged ({error})"
            if not skip_damaged:
                raise ValueError(f"{message}: delete that line and rerun") from None
            log.warning("%s; left out", message)
            continue
        records.append(record)
    return records


def truncate_history(path: str, last_step: int) -> list[str]:
    """Drops lines logged after `last_step` and damaged lines, atomically.

    A resumed run logs the dropped steps again.

    Returns:
      The JSON lines kept (each ending in a newline).
    """
    history = read_history(path, skip_damaged=True)
    lines = [json.dumps(h) + "\n" for h in history if h["step"] <= last_step]
    files.write_text(path, "".join(lines))
    return lines


class MetricsWriter:
    """Writes the metrics of one job (a no-op unless `enabled`)."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        total_steps: int,
        start_step: int,
        batch_size: int,
        enabled: bool,
        progress: bool,
        tensorboard: bool = True,
    ):
        """Opens the writers of one job.

        Args:
            run_dir: The job's folder (local or gs://); metrics.jsonl and tensorboard/ go here.
            total_steps: Steps of the whole job (the progress bar's length).
            start_step: The step training resumes from (0 for a new job).
            batch_size: Activations per step (for tokens and tokens/s).
            enabled: False on every process but 0: the writer then does nothing.
            progress: Show a tqdm progress bar.
            tensorboard: Write TensorBoard event files.
        """
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.batch_size = batch_size
        self.path = files.join(os.fspath(run_dir), "metrics.jsonl")
        self._last_time, self._last_step = time.perf_counter(), start_step
        self._tb = None
        self._bar = None
        self._lines: list[str] = []  # the whole file, kept only where it cannot be appended to
        if not enabled:
            return
        kept = truncate_history(self.path, start_step) if files.exists(self.path) else []
        if files.is_url(self.path):
            self._lines = kept
        else:
            files.makedirs(os.path.dirname(self.path))
        # TensorBoard's writer is created lazily: many tiny jobs never pay for it until they log.
        # tensorboardX writes gs:// URLs itself (through google-cloud-storage).
        self._tb_dir = files.join(os.fspath(run_dir), "tensorboard")
        self._bar = tqdm.tqdm(
            total=total_steps, initial=start_step, unit="step", disable=not progress, leave=False
        )

    def advance(self, step: int) -> None:
        """Moves the progress bar to `step` completed steps."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def write(self, step: int, metrics: dict[str, np.ndarray]) -> dict:
        """Logs one step's per-member metrics; returns the record that was written."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        tokens_per_sec = (step - self._last_step) * self.batch_size / elapsed
        self._last_time, self._last_step = now, step
        record = {
            "step": int(step),
            "tokens": int(step) * self.batch_size,
            "tokens_per_sec": float(tokens_per_sec),
        }
        record.update({name: [float(v) for v in np.asarray(a)] for name, a in metrics.items()})
        if not self.enabled:
            return record
        line = json.dumps(record) + "\n"
        if files.is_url(self.path):
            self._lines.append(line)
            files.write_text(self.path, "".join(self._lines))
        else:
            with open(self.path, "a") as f:
                f.write(line)
        if self.tensorboard:
            self._write_tensorboard(step, metrics, tokens_per_sec)
        if self._bar is not None:
            self._bar.set_postfix_str(_summary(record), refresh=False)
            self.advance(step)
        return record

    def _write_tensorboard(self, step, metrics, tokens_per_sec) -> None:
        if self._tb is None:
            # Imported here: tensorboardX pulls in torch (seconds), paid only by jobs that log.
            import tensorboardX

            self._tb = tensorboardX.SummaryWriter(self._tb_dir)
        for name, values in metrics.items():
            for member, value in enumerate(np.asarray(values)):
                self._tb.add_scalar(f"{name}/member{member}", float(value), step)
        self._tb.add_scalar("z/tokens_per_sec", tokens_per_sec, step)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer and the progress bar."""
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def _summary(record: dict) -> str:
    """'tok/s=..., L0=a-b, FVU=c-d' for the progress bar."""

    def span(values):
        finite = [v for v in values if math.isfinite(v)]
        return f"{min(finite):.3g}-{max(finite):.3g}" if finite else "nan"

    return (
        f"tok/s={record['tokens_per_sec']:.3g}, L0={span(record.get('l0', []))}, "
        f"FVU={span(record.get('fvu', []))}"
    )
