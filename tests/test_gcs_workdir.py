"""A whole study in a gs:// workdir, against a local GCS emulator, equals the same study on disk.

The emulator (tests/gcs_emulator.py: gcp-storage-emulator, in memory, on a free localhost port)
speaks the GCS JSON API. The CLI runs in subprocesses pointed at it the way a user's run would be
pointed at GCS itself: tensorstore (activation cache, orbax arrays) through
TENSORSTORE_GCS_HTTP_URL, gcsfs (etils.epath: orbax's directories and our JSON/npz/table/plot
files) and google-cloud-storage (TensorBoard) through STORAGE_EMULATOR_HOST.
"""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

import gcs_emulator  # tests/gcs_emulator.py
import numpy as np
import pandas as pd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "gemmascope-test"
JOB = "resid_post-L0-w64-jumprelu"


@pytest.fixture(scope="module")
def gcs_env():
    """Environment variables that send every GCS client to a fresh in-memory emulator."""
    server, env = gcs_emulator.start(BUCKET)
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, like a user's run
    yield env
    server.stop()


def run_cli(env, workdir, *extra):
    argv = [
        sys.executable, "-m", "gemmascope", "--config=experiments/tiny_demo.py:runlocal",
        f"--workdir={workdir}", "--mode=all", f"--jobs={JOB}", "--config.eval.n_sequences=4",
        "--config.eval.plots=True", *extra,
    ]  # fmt: skip
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


_FETCH = """
import base64, json, sys
from gemmascope import files
listing = sys.argv[1] == "list"
b64 = lambda data: base64.b64encode(data).decode()
out = {}
for path in sys.argv[2:]:
    out[path] = files.listdir(path) if listing else b64(files.read_bytes(path))
print(json.dumps(out))
"""


def fetch_gcs(env, paths, listing: bool = False) -> dict:
    """{path: bytes}, or {path: names} with listing, read through gemmascope.files.

    In one fresh process, as a user's would be (one for many paths: each child costs an
    interpreter).
    """
    argv = [sys.executable, "-c", _FETCH, "list" if listing else "read", *paths]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return out if listing else {path: base64.b64decode(data) for path, data in out.items()}


@pytest.mark.slow
def test_study_in_a_gcs_workdir_matches_a_local_one(gcs_env, tmp_path):
    remote = f"gs://{BUCKET}/studies/tiny"
    first = run_cli(gcs_env, remote)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    assert "Metric table (3 SAEs)" in first.stdout

    local_dir = tmp_path / "local"
    local = run_cli(gcs_env, local_dir)
    assert local.returncode == 0, (local.stdout + local.stderr)[-4000:]

    # Nothing of the study went to the local disk, and every stage wrote to the bucket.
    assert not os.path.exists(os.path.join(REPO, "gs:"))
    run = f"{remote}/runs/{JOB}"
    release = local_dir / "gemma_scope_2" / "resid_post"
    listed = fetch_gcs(
        gcs_env,
        [remote, run, f"{remote}/gemma_scope_2/resid_post", f"{remote}/eval/plots",
         f"{remote}/inspect/data"],
        listing=True,
    )  # fmt: skip
    assert set(listed[remote]) == {
        "activations", "config.json", "eval", "gemma_scope_2", "inspect", "runs", "saes"
    }  # fmt: skip
    in_run = set(listed[run])
    assert {"checkpoints", "final_params.npz", "job.json", "metrics.jsonl", "tensorboard"} <= in_run
    assert "metrics-parts" not in in_run  # the per-record objects, merged at the end
    names = sorted(os.listdir(release))
    assert names and sorted(listed[f"{remote}/gemma_scope_2/resid_post"]) == names
    plots = listed[f"{remote}/eval/plots"]
    assert plots and all(p.endswith(".png") for p in plots)
    data = [n for n in listed[f"{remote}/inspect/data"] if n.endswith(".json")]
    assert len(data) == 4  # 3 SAEs and the token table

    released = {n: f"{remote}/gemma_scope_2/resid_post/{n}/params.safetensors" for n in names}
    records = {n: f"{remote}/inspect/data/{n}" for n in data}
    got = fetch_gcs(
        gcs_env,
        [f"{run}/final_params.npz", f"{remote}/eval/saes.csv", f"{run}/metrics.jsonl",
         f"{remote}/eval/plots/{plots[0]}", f"{remote}/inspect/index.html",
         *released.values(), *records.values()],
    )  # fmt: skip

    # The bucket holds the same trained SAEs, bit for bit, as the local run.
    remote_params = np.load(io.BytesIO(got[f"{run}/final_params.npz"]))
    with np.load(local_dir / "runs" / JOB / "final_params.npz") as local_params:
        assert sorted(remote_params.files) == sorted(local_params.files)
        for key in local_params.files:
            np.testing.assert_array_equal(remote_params[key], local_params[key], err_msg=key)
    # The Gemma Scope 2 folders (docs/transcoders.md) too.
    for name, path in released.items():
        assert got[path] == (release / name / "params.safetensors").read_bytes()
    remote_table = pd.read_csv(io.BytesIO(got[f"{remote}/eval/saes.csv"]))
    local_table = pd.read_csv(local_dir / "eval" / "saes.csv")
    pd.testing.assert_frame_equal(remote_table, local_table)

    # The same metrics were logged (wall-clock speed and ETA aside).
    def logged(lines):
        speed = ("tokens_per_sec", "eta_sec", "mfu")
        return [{k: v for k, v in json.loads(x).items() if k not in speed} for x in lines]

    remote_metrics = got[f"{run}/metrics.jsonl"].decode().splitlines()
    local_metrics = (local_dir / "runs" / JOB / "metrics.jsonl").read_text().splitlines()
    assert remote_metrics and logged(remote_metrics) == logged(local_metrics)
    assert got[f"{remote}/eval/plots/{plots[0]}"].startswith(b"\x89PNG")
    # The inspect site went to the bucket too, with the same data as the local run's.
    for name, path in records.items():
        remote_record = json.loads(got[path])
        assert remote_record == json.loads((local_dir / "inspect" / "data" / name).read_text())
    assert got[f"{remote}/inspect/index.html"].startswith(b"<!doctype html>")

    # A rerun finds the bucket's study: the job is skipped, and another study is refused.
    again = run_cli(gcs_env, remote, "--mode=train")
    assert again.returncode == 0 and f"{JOB} already done" in again.stdout
    other = run_cli(gcs_env, remote, "--mode=train", "--config.train.batch_size=128")
    assert other.returncode != 0 and f"{remote} holds a different study" in other.stderr


def run_job(env, workdir, *extra):
    """tests/train/job_runner.py: a tiny sweep job on a (2, 4) mesh of forced CPU devices."""
    runner = os.path.join(REPO, "tests", "train", "job_runner.py")
    env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return subprocess.Popen(
        [sys.executable, runner, str(workdir), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(child) -> dict:
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_preempted_job_resumes_from_its_checkpoint_in_the_bucket(gcs_env, tmp_path):
    local = finish(run_job(gcs_env, tmp_path / "local"))
    assert not local["preempted"] and local["steps"] == 24

    remote = f"gs://{BUCKET}/preempted"
    marker = tmp_path / "reached"
    child = run_job(gcs_env, remote, "--slow-after", "6", str(marker))
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert child.poll() is None, child.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the job never reached batch 6"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    first = finish(child)
    assert first["preempted"] and 6 <= first["steps"] < 24
    run = f"{remote}/runs/tiny"
    listed = fetch_gcs(gcs_env, [run, f"{run}/checkpoints"], listing=True)
    assert "final_params.npz" not in listed[run]
    assert str(first["steps"]) in listed[f"{run}/checkpoints"]

    second = finish(run_job(gcs_env, remote))  # resumes from the bucket's orbax checkpoint
    assert not second["preempted"] and second["steps"] == 24
    got = fetch_gcs(gcs_env, [f"{run}/final_params.npz", f"{run}/metrics.jsonl"])
    resumed = np.load(io.BytesIO(got[f"{run}/final_params.npz"]))
    with np.load(tmp_path / "local" / "runs" / "tiny" / "final_params.npz") as uninterrupted:
        for key in uninterrupted.files:  # bitwise: the same program on the same devices
            np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)
    history = got[f"{run}/metrics.jsonl"].decode().splitlines()
    assert [json.loads(h)["step"] for h in history] == [4, 8, 12, 16, 20, 24]
