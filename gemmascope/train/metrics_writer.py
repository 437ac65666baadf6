"""Training metrics of a sweep job: metrics.jsonl, TensorBoard events, a progress bar and log lines.

Only process 0 writes; every other process gets a writer that does nothing. Each logged step is
one JSON record holding every sweep member:

    {"step": 100, "tokens": 409600, "tokens_per_sec": 5.1e5, "eta_sec": 3.2e3, "mfu": 0.41,
     "l0": [s0, s1, ...], "fvu": [...], "recon_loss": [...], "sparsity_loss": [...], "loss": [...],
     "frac_dead": [...], "lr": [...], "sparsity_coeff": [...], "freq_penalty": [...],
     "heldout/fvu": [...], "heldout/l0": [...], "heldout/frac_dead": [...]}

(lists are indexed by sweep member, in the order of `config.sweep_members`; `mfu` only where the
devices' peak is known, `heldout/*` only at held-out steps, `freq_penalty` only for JumpReLU SAEs
with the frequency penalty). Throughput, ETA and MFU are measured over the steps since the
previous record (the first after a start includes compilation). TensorBoard
scalars are named `<metric>/member<i>` (`heldout/fvu/member0`, ...) plus `z/tokens_per_sec` and
`z/mfu`; the progress bar and an INFO log line show tokens/s, MFU, the ETA and the L0 and FVU range
across the sweep.

Files are written by a background thread, so a logged step costs the loop only the formatting;
`flush()` waits for it (the loop flushes before every checkpoint, so a checkpoint never outlives
the records of its steps), and errors in the thread are raised in the loop at the next call.

Where the records go:
- a local disk: appended to metrics.jsonl line by line (a line a kill cut short is dropped on
  resume, and that step is logged again);
- an object store (gs://), which cannot append: each record is one new object
  `metrics-parts/<step>.json` (never an upload of the whole history); `close()` writes them as one
  metrics.jsonl and deletes the parts. `read_history(run_dir)` merges metrics.jsonl and any parts.

Synopsis:
    writer = MetricsWriter(run_dir, total_steps, start_step, batch_size, enabled=..., progress=...)
    writer.write(step, metrics)     # metrics: name -> (S,) numpy array
    writer.advance(step)            # per step, cheap
    writer.flush()                  # everything written so far is on disk
    writer.close()
    history = read_history(run_dir)
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import queue
import threading
import time

import numpy as np
import tqdm

from gemmascope import files

log = logging.getLogger(__name__)

FILE = "metrics.jsonl"
PARTS = "metrics-parts"


def _parts(run_dir: str) -> list[str]:
    """The object-store part files of a run, in step order."""
    folder = files.join(run_dir, PARTS)
    return [files.join(folder, name) for name in files.listdir(folder) if name.endswith(".json")]


def _record(text: str, where: str, remedy: str, skip_damaged: bool) -> dict | None:
    """One JSON record with a step; a damaged one raises, or with `skip_damaged` is None."""
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError("not a record with a step")
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        message = f"{where} is damaged ({error})"
        if not skip_damaged:
            raise ValueError(f"{message}: {remedy} and rerun") from None
        log.warning("%s; left out", message)
        return None
    return record


def _read(run_dir: str, skip_damaged: bool) -> tuple[list[dict], bool]:
    """(records in step order, whether a damaged line or part was left out)."""
    by_step: dict[int, dict] = {}
    damaged = False
    path = files.join(run_dir, FILE)
    if files.exists(path):
        *complete, _cut_short = files.read_text(path).split("\n")
        for number, line in enumerate(complete, 1):
            if line.strip():
                record = _record(line, f"{path}, line {number},", "delete that line", skip_damaged)
                damaged |= record is None
                if record is not None:
                    by_step[record["step"]] = record
    for part in _parts(run_dir):
        record = _record(files.read_text(part), part, "delete that file", skip_damaged)
        damaged |= record is None
        if record is not None:
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)], damaged


def read_history(run_dir: str | os.PathLike, skip_damaged: bool = False) -> list[dict]:
    """The records of a run, in step order: metrics.jsonl merged with any part files.

    Every line of metrics.jsonl ends with a newline, so text after the last newline is a line that
    a kill cut short while it was being appended: it is left out (a resumed run logs that step
    again). A part file is written whole (one object upload) and, where it repeats a step of
    metrics.jsonl, it is the newer record.

    Args:
      run_dir: the job's folder (metrics.jsonl and metrics-parts/ in it).
      skip_damaged: leave out complete lines (and parts) that are not a JSON record, with a
        warning naming each, instead of raising.

    Raises:
      ValueError: a line or part is not a JSON record (names the file and the line).
    """
    return _read(os.fspath(run_dir), skip_damaged)[0]


def _lines(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


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
        flops_per_step: float | None = None,
        peak_flops: float | None = None,
        object_store: bool | None = None,
    ):
        """Opens the writers of one job and drops the records after `start_step`.

        Args:
            run_dir: The job's folder (local or gs://); metrics.jsonl and tensorboard/ go here.
            total_steps: Steps of the whole job (the progress bar's length, the ETA's goal).
            start_step: The step training resumes from (0 for a new job).
            batch_size: Activations per step (for tokens and tokens/s).
            enabled: False on every process but 0: the writer then does nothing.
            progress: Show a tqdm progress bar.
            tensorboard: Write TensorBoard event files.
            flops_per_step: Training FLOPs of one step (the plan's formula), for MFU.
            peak_flops: Peak FLOP/s of all the job's devices together; None (unknown, e.g. CPU)
                leaves MFU out.
            object_store: Write part files instead of appending (default: when run_dir is a
                URL); tests force it on a local disk.
        """
        self.enabled = enabled
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.run_dir = os.fspath(run_dir)
        self.path = files.join(self.run_dir, FILE)
        self._flops_per_step, self._peak_flops = flops_per_step, peak_flops
        self._object_store = files.is_url(self.path) if object_store is None else object_store
        self._last_time, self._last_step = time.perf_counter(), start_step
        self._bar = None
        self._output = None
        if not enabled:
            return
        self._start(start_step)
        self._output = _Output(self.run_dir, self._object_store, tensorboard)
        self._bar = tqdm.tqdm(
            total=total_steps, initial=start_step, unit="step", disable=not progress, leave=False
        )

    def _start(self, start_step: int) -> None:
        """Keeps the records up to `start_step` (one rewrite, only when there is more or parts).

        Damaged records (`read_history`'s) are dropped with a warning naming each.
        """
        history, damaged = _read(self.run_dir, skip_damaged=True)  # damaged lines: warned, dropped
        kept = [record for record in history if record["step"] <= start_step]
        parts = _parts(self.run_dir)
        rewrite = kept != history or parts or damaged
        if rewrite or (files.exists(self.path) and not self._object_store):
            files.write_text(self.path, _lines(kept))  # also drops a line cut short on disk
        for part in parts:
            files.remove(part)
        if not self._object_store:
            files.makedirs(os.path.dirname(self.path))

    def advance(self, step: int) -> None:
        """Moves the progress bar to `step` completed steps."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def write(self, step: int, metrics: dict[str, np.ndarray]) -> dict:
        """Logs one step's per-member metrics; returns the record (written in the background)."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps = max(step - self._last_step, 1)
        self._last_time, self._last_step = now, step
        record = {
            "step": int(step),
            "tokens": int(step) * self.batch_size,
            "tokens_per_sec": steps * self.batch_size / elapsed,
            "eta_sec": (self.total_steps - step) * elapsed / steps,
        }
        if self._flops_per_step and self._peak_flops:
            record["mfu"] = steps * self._flops_per_step / elapsed / self._peak_flops
        record.update({name: [float(v) for v in np.asarray(a)] for name, a in metrics.items()})
        if not self.enabled:
            return record
        self._output.put(record)
        summary = _summary(record)
        if self._bar is not None:
            self._bar.set_postfix_str(summary, refresh=False)
            self.advance(step)
        log.info("step %d/%d: %s", step, self.total_steps, summary)
        return record

    def flush(self) -> None:
        """Waits until every record so far is written (raises the writer thread's error)."""
        if self._output is not None:
            self._output.flush()

    def close(self) -> None:
        """Flushes, closes TensorBoard and the bar; on an object store, merges the parts."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._output is None:
            return
        output, self._output = self._output, None
        output.close()
        if self._object_store:
            parts = _parts(self.run_dir)
            if parts:
                files.write_text(self.path, _lines(read_history(self.run_dir)))
                for part in parts:
                    files.remove(part)


class _Output:
    """The background thread that writes records: metrics.jsonl (or parts) and TensorBoard."""

    def __init__(self, run_dir: str, object_store: bool, tensorboard: bool):
        self._run_dir, self._object_store, self._tensorboard = run_dir, object_store, tensorboard
        self._tb = None  # created on the first record: many tiny jobs never pay for it
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="metrics-writer", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        self._raise()
        self._queue.put(record)

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._tb is not None:
            self._tb.close()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing the metrics of {self._run_dir} failed") from error

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                if self._error is None:
                    self._write(record)
            except BaseException as error:  # noqa: BLE001 - raised in the loop's thread
                self._error = error
            finally:
                self._queue.task_done()

    def _write(self, record: dict) -> None:
        if self._object_store:
            part = files.join(self._run_dir, PARTS, f"{record['step']:012d}.json")
            files.write_text(part, json.dumps(record))
        else:
            with open(files.join(self._run_dir, FILE), "a") as f:
                f.write(json.dumps(record) + "\n")
        if self._tensorboard:
            self._write_tensorboard(record)

    def _write_tensorboard(self, record: dict) -> None:
        if self._tb is None:
            # Imported here: tensorboardX pulls in torch (seconds), paid only by jobs that log.
            # It writes gs:// URLs itself (through google-cloud-storage).
            import tensorboardX

            self._tb = tensorboardX.SummaryWriter(files.join(self._run_dir, "tensorboard"))
        step = record["step"]
        for name, values in record.items():
            if isinstance(values, list):
                for member, value in enumerate(values):
                    self._tb.add_scalar(f"{name}/member{member}", value, step)
        self._tb.add_scalar("z/tokens_per_sec", record["tokens_per_sec"], step)
        if "mfu" in record:
            self._tb.add_scalar("z/mfu", record["mfu"], step)


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _summary(record: dict) -> str:
    """'tok/s=..., MFU=..%, ETA=h:mm:ss, L0=a-b, FVU=c-d' (+ held-out FVU) for the bar and log."""

    def span(values):
        finite = [v for v in values if math.isfinite(v)]
        return f"{min(finite):.3g}-{max(finite):.3g}" if finite else "nan"

    parts = [f"tok/s={record['tokens_per_sec']:.3g}"]
    if "mfu" in record:
        parts.append(f"MFU={100 * record['mfu']:.1f}%")
    parts.append(f"ETA={_duration(record['eta_sec'])}")
    parts.append(f"L0={span(record.get('l0', []))}")
    parts.append(f"FVU={span(record.get('fvu', []))}")
    if "heldout/fvu" in record:
        parts.append(f"held-out FVU={span(record['heldout/fvu'])}")
    return ", ".join(parts)
