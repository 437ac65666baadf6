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
    assert metrics_writer.read_history(str(path)) == complete

    # A run resumed from the step-8 checkpoint keeps steps <= 8 and logs from there on.
    writer = metrics_writer.MetricsWriter(
        tmp_path, total_steps=16, start_step=8, batch_size=2, enabled=True, progress=False,
        tensorboard=False,
    )  # fmt: skip
    writer.write(12, {"l0": np.array([2.0])})
    writer.close()
    assert [r["step"] for r in metrics_writer.read_history(str(path))] == [4, 8, 12]
    assert path.read_text().endswith("\n")


def test_a_corrupt_complete_line_is_still_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 4}\nnot json\n{"step": 8}\n')
    # The error names the file and the line (and is a ValueError, which the CLI reports as one
    # paragraph); a resumed job drops the line with a warning and goes on.
    with pytest.raises(ValueError, match=f"{path}, line 2, is damaged .*delete that line"):
        metrics_writer.read_history(str(path))
    kept = metrics_writer.truncate_history(str(path), last_step=8)
    assert [json.loads(line)["step"] for line in kept] == [4, 8]
    assert [h["step"] for h in metrics_writer.read_history(str(path))] == [4, 8]
