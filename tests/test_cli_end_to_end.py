"""The tiny demo through the CLI at its runlocal size, killed mid-training and rerun to the end.

One site's Gated and JumpReLU jobs keep the test short (TopK takes the same CLI path; the GCS
test, tests/test_gcs_workdir.py, runs the other site through the same stages).
"""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(workdir, *extra):
    argv = [
        sys.executable, "-m", "gemmascope", "--config=experiments/tiny_demo.py:runlocal",
        f"--workdir={workdir}", "--mode=all", "--config.eval.n_sequences=4", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, like a user's run
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


JOBS = "--jobs=attn_z-L1-w64-gated,attn_z-L1-w64-jumprelu"


@pytest.mark.slow
def test_tiny_demo_kill_and_rerun(tmp_path):
    workdir = tmp_path / "demo dir"
    first = cli(workdir, JOBS)
    seen = []
    for line in first.stdout:  # kill it once the second job has started
        seen.append(line)
        if "train 2/2" in line:
            first.send_signal(signal.SIGKILL)
            break
    first.wait(timeout=300)
    assert any("train 2/2" in line for line in seen), "".join(seen[-30:])
    assert not (workdir / "eval").exists()

    second = cli(workdir, JOBS)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    # The finished first job is skipped; the rest run; the table has every SAE.
    assert "train 1/2: attn_z-L1-w64-gated already done" in out
    table = pd.read_csv(workdir / "eval" / "saes.csv")
    assert len(table) == 2 * 3  # architectures x sweep values (one site, one width)
    assert set(table.site) == {"attn_z/1"}
    assert set(table.architecture) == {"jumprelu", "gated"}
    assert table.fvu.between(0, 1.5).all() and (table.l0 > 0).all()
    assert "Metric table (6 SAEs)" in out and "Best 6 SAEs by delta LM loss" in out
    assert list((workdir / "eval" / "plots").glob("*.png"))
    assert len(list((workdir / "saes").rglob("params.npz"))) == 6
    assert len(list((workdir / "saes").rglob("saelens/sae_weights.safetensors"))) == 6
    # --mode=all ends with the inspect site (inspect.in_all): a page and a record per SAE.
    assert f"Inspect site: {workdir / 'inspect' / 'index.html'}" in out
    assert len(list((workdir / "inspect" / "saes").glob("*.html"))) == 6
    record = json.loads(next((workdir / "inspect" / "data").glob("attn_z*.json")).read_text())
    assert record["latents_inspected"] == 64 and record["metrics"]["l0"] > 0

    # (A rerun of a finished study skipping every job: tests/test_gcs_workdir.py.)


@pytest.mark.slow
def test_streaming_source_trains_without_a_cache(tmp_path):
    from gemmascope import study
    from gemmascope.study import stages

    _, config = study.load_config_file(os.path.join(REPO, "experiments/tiny_demo.py:runlocal"))
    config.unlock()
    config.source = "stream"
    config.inspect.in_all = False  # the inspect stage is covered by the test above
    stages.run(config, str(tmp_path), "all", ["resid_post-L0-w64-jumprelu"])
    assert not (tmp_path / "activations").exists()  # nothing was cached
    job = json.loads((tmp_path / "runs" / "resid_post-L0-w64-jumprelu" / "job.json").read_text())
    assert job["norm_scale"] > 0 and job["tokens_trained"] >= 4096
    table = pd.read_csv(tmp_path / "eval" / "saes.csv")
    assert sorted(table.sweep_value) == [8, 16, 32] and (table.fvu < 1.5).all()
