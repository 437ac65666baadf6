"""metrics.jsonl across a kill: a line cut short mid-append is dropped on resume, not fatal."""

import json

import numpy as np
import pytest

from gemmascope.train import metrics_writer


def test_resume_drops_a_line_cut_short_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    complete = [{"step": 4, "l0": [3.0]}, {"step": 8, "l0": [2.5]}]
    cut_short = json.dumps({"step": 12, "l0": [2.0]})[:9]  # what a kill mid-append leaves
    path.write_text("".join(json.dumps(r) + "\n" for r in complete) + cut_short)
    assert metrics_writer.read_history(tmp_path) == complete

    # A run resumed from the step-8 checkpoint keeps steps <= 8 and logs from there on.
    writer = metrics_writer.MetricsWriter(
        tmp_path, total_steps=16, start_step=8, batch_size=2, enabled=True, progress=False,
        tensorboard=False,
    )  # fmt: skip
    writer.write(12, {"l0": np.array([2.0])})
    writer.close()
    assert [r["step"] for r in metrics_writer.read_history(tmp_path)] == [4, 8, 12]
    assert path.read_text().endswith("\n")


def test_a_corrupt_complete_line_is_still_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 4}\nnot json\n{"step": 8}\n')
    # The error names the file and the line (and is a ValueError, which the CLI reports as one
    # paragraph); a resumed job drops the line with a warning and goes on.
    with pytest.raises(ValueError, match=f"{path}, line 2, is damaged .*delete that line"):
        metrics_writer.read_history(tmp_path)
    assert [h["step"] for h in metrics_writer.read_history(tmp_path, skip_damaged=True)] == [4, 8]
    _writer(tmp_path, 8, object_store=False).close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [4, 8]
    assert [h["step"] for h in metrics_writer.read_history(tmp_path)] == [4, 8]
    # On an object store too, where nothing else would make the start rewrite metrics.jsonl.
    path.write_text('{"step": 4}\nnot json\n{"step": 8}\n')
    _writer(tmp_path, 8, object_store=True).close()
    assert [h["step"] for h in metrics_writer.read_history(tmp_path)] == [4, 8]


def _writer(run_dir, start_step, object_store):
    return metrics_writer.MetricsWriter(
        run_dir, total_steps=12, start_step=start_step, batch_size=2, enabled=True,
        progress=False, tensorboard=False, object_store=object_store,
    )  # fmt: skip


def test_object_store_logs_are_parts_never_a_whole_rewrite(tmp_path, monkeypatch):
    # An object store cannot append: each record is one new object, and metrics.jsonl is written
    # once per start (only when records must be dropped) and once at close, never per log.
    whole_writes = []
    write_text = metrics_writer.files.write_text

    def counting(path, text):
        if path.endswith("metrics.jsonl"):
            whole_writes.append(text.count("\n"))
        write_text(path, text)

    monkeypatch.setattr(metrics_writer.files, "write_text", counting)
    writer = _writer(tmp_path, 0, object_store=True)
    for step in (4, 8):
        writer.write(step, {"l0": np.array([float(step), 1.0])})
    writer.flush()
    parts = tmp_path / "metrics-parts"
    assert sorted(p.name for p in parts.iterdir()) == ["000000000004.json", "000000000008.json"]
    assert not (tmp_path / "metrics.jsonl").exists() and whole_writes == []
    assert [r["l0"] for r in metrics_writer.read_history(tmp_path)] == [[4.0, 1.0], [8.0, 1.0]]

    # Killed here (no close). The resumed run (from the step-4 checkpoint) keeps step 4 only.
    resumed = _writer(tmp_path, 4, object_store=True)
    assert whole_writes == [1] and not list(parts.iterdir())
    for step in (8, 12):
        resumed.write(step, {"l0": np.array([float(step), 2.0])})
    resumed.close()
    assert whole_writes == [1, 3] and not list(parts.iterdir())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["l0"] for line in lines] == [[4.0, 1.0], [8.0, 2.0], [12.0, 2.0]]


def test_a_failed_background_write_is_raised_in_the_loop(tmp_path):
    run_dir = tmp_path / "run"
    writer = _writer(run_dir, 0, object_store=False)
    (run_dir / "metrics.jsonl").mkdir()  # appending to a directory fails in the writer thread
    writer.write(4, {"l0": np.array([1.0])})
    with pytest.raises(RuntimeError, match="writing the metrics of .*run failed"):
        writer.flush()
    writer.close()
