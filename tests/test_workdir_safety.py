"""Damaged files are found and named, one writer per workdir or job, files follow the umask.

One small study (the tiny demo at its runlocal size: one site cached in 3 shards, one job
trained, written under umask 002) is built once; each test damages a copy of it and runs the
command line (`gemmascope.study.main.cli`, in this interpreter) on the copy. The oracles are the
files of the undamaged study: a recomputed shard must equal the original byte for byte, a job
resumed from an older checkpoint must reach the same final parameters.
"""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading

import gcs_emulator  # tests/gcs_emulator.py
import numpy as np
import pytest

from gemmascope import files
from gemmascope.activations import storage
from gemmascope.study import errors, lock, main, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = "resid_post-L0-w64-jumprelu"
OTHER_JOB = "resid_post-L0-w64-gated"
FLAGS = [
    "--config=experiments/tiny_demo.py:runlocal",
    # 3 shards of 4096 rows (the runlocal corpus has about 10k tokens per site).
    "--config.cache.shard_rows=4096",
    "--config.cache.chunk_rows=512",
]


def cli(capsys, study, *flags):
    """Runs the command line on `study`; returns (status, stdout, stderr)."""
    status = main.cli(["gemmascope", *FLAGS, f"--workdir={study}", *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The study: resid_post/0 cached, JOB trained, written with umask 002."""
    study = tmp_path_factory.mktemp("built") / "study"
    previous = os.umask(0o002)
    try:
        status = main.cli(
            ["gemmascope", *FLAGS, f"--workdir={study}", "--mode=cache", f"--jobs={JOB}"]
        )
        assert status == 0
        status = main.cli(
            ["gemmascope", *FLAGS, f"--workdir={study}", "--mode=train", f"--jobs={JOB}"]
        )
        assert status == 0
    finally:
        os.umask(previous)
    return study


@pytest.fixture
def study(built, tmp_path):
    """A copy of the built study to damage."""
    copy = tmp_path / "study"
    shutil.copytree(built, copy)
    return copy


def final_params(study):
    with np.load(study / "runs" / JOB / "final_params.npz") as npz:
        return {key: npz[key] for key in npz.files}


def test_files_follow_the_umask(built, tmp_path):
    # Built under umask 002: group-writable files, as on shared storage (mkstemp alone: 0600).
    modes = {(p.is_dir(), p.stat().st_mode & 0o777) for p in built.rglob("*")}
    assert modes == {(False, 0o664), (True, 0o775)}, modes
    # Under umask 022, what gemmascope.files, the lock and tensorstore write is 0644.
    previous = os.umask(0o022)
    try:
        files.write_json(str(tmp_path / "a" / "x.json"), {"a": 1})
        files.save_npz(str(tmp_path / "a" / "x.npz"), {"w": np.zeros(3)})
        storage.write_json(str(tmp_path / "a" / "site"), "meta.json", {"a": 1})
        with lock.hold(str(tmp_path / "b")):
            held = list((tmp_path / "b" / "locks").iterdir())
            assert [p.stat().st_mode & 0o777 for p in held] == [0o644]
    finally:
        os.umask(previous)
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "a").rglob("*") if p.is_file()} == {
        0o644
    }


def test_a_truncated_cache_shard_is_found_and_recomputed(study, capsys, caplog):
    site = study / "activations" / "resid_post" / "0"
    shard = site / "c" / "1" / "0"
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 3])
    meta = json.loads((site / "meta.json").read_text())
    assert storage.shard_problems(str(site), meta) == {
        1: f"{len(original) // 3} bytes, expected {len(original)}: truncated or overwritten"
    }
    previous = os.umask(0o022)
    try:
        status, out, err = cli(capsys, study, "--mode=cache", f"--jobs={JOB}")
    finally:
        os.umask(previous)
    assert status == 0, err[-3000:]
    assert "cache resid_post/0" in caplog.text and "shard 1 is damaged" in caplog.text
    assert shard.read_bytes() == original  # recomputed bit for bit
    assert shard.stat().st_mode & 0o777 == 0o644
    assert json.loads((site / "meta.json").read_text()) == meta  # complete again, same C
    assert storage.shard_problems(str(site), meta) == {}


def test_a_truncated_final_params_is_not_done(study, capsys):
    expected = final_params(study)
    path = study / "runs" / JOB / "final_params.npz"
    path.write_bytes(path.read_bytes()[:1000])
    assert "not a complete .npz archive" in workdir.job_problem(str(study), JOB)

    status, _, err = cli(capsys, study, "--mode=export", f"--jobs={JOB}")
    assert status == 1 and "Traceback" not in err
    assert f"cannot export job {JOB}: {path} is not a complete .npz" in err
    assert f"--mode=train --jobs={JOB}" in err and not (study / "saes").exists()

    status, out, err = cli(capsys, study, "--mode=train", f"--jobs={JOB}")
    assert status == 0, err[-3000:]
    assert f"{JOB}: {path} is not a complete .npz archive" in out
    assert "writing it again from the job's last checkpoint" in out
    for key, value in expected.items():
        np.testing.assert_array_equal(final_params(study)[key], value, err_msg=key)
    # A job whose job.json is missing (killed between the two writes) is not done either.
    (study / "runs" / JOB / "job.json").unlink()
    status, out, _ = cli(capsys, study, "--mode=train", f"--jobs={JOB}")
    assert status == 0 and "job.json: the file does not exist" in out
    assert (study / "runs" / JOB / "job.json").exists()


def test_a_damaged_checkpoint_falls_back_to_the_previous_step(study, capsys, caplog):
    expected = final_params(study)
    run = study / "runs" / JOB
    (run / "final_params.npz").unlink()
    (run / "job.json").unlink()
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [12, 16]
    (run / "checkpoints" / "16" / "state" / "manifest.ocdbt").write_bytes(b"damaged")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")

    status, out, err = cli(capsys, study, "--mode=train", f"--jobs={JOB}")
    assert status == 0, err[-3000:]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3, warnings  # one line each
    assert warnings[0].startswith(f"checkpoint step 16 in {run / 'checkpoints'} is damaged (")
    assert warnings[1].startswith("resumed from checkpoint step 12 in")
    assert warnings[2].startswith(f"{run / 'metrics.jsonl'}, line 2, is damaged")
    for key, value in expected.items():  # steps 13-16 again from step 12: the same result
        np.testing.assert_array_equal(final_params(study)[key], value, err_msg=key)
    history = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert history == [4, 8, 12, 16]

    # Every step damaged: one line naming the folder, and what to do.
    (run / "final_params.npz").unlink()
    for step in (run / "checkpoints").iterdir():
        if step.name.isdigit():
            (step / "state" / "manifest.ocdbt").write_bytes(b"damaged")
    status, _, err = cli(capsys, study, "--mode=train", f"--jobs={JOB}")
    assert status == 1 and "Traceback" not in err
    assert f"every checkpoint in {run / 'checkpoints'} is damaged" in err
    assert "Delete that folder" in err


def test_a_damaged_workdir_config_json_is_named(study, capsys):
    (study / "config.json").write_text('{"name": "tiny')
    status, _, err = cli(capsys, study, "--mode=train", f"--jobs={JOB}")
    assert status == 1 and "Traceback" not in err
    assert f"{study / 'config.json'} is not valid JSON" in err


def test_a_corrected_field_that_no_stage_used_is_accepted(study, capsys, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text((study / "config.json").read_text())
    # Nothing produced yet: a changed field is accepted and recorded.
    changes = workdir.check_config(_config(train__batch_size=128), str(fresh))
    assert changes == ["train.batch_size: 256 -> 128"]
    assert json.loads((fresh / "config.json").read_text())["train"]["batch_size"] == 128
    # The study's cache consumed model, data, sites and cache; its runs consumed everything.
    only_cache = tmp_path / "only_cache"
    shutil.copytree(study, only_cache, ignore=shutil.ignore_patterns("runs"))
    assert workdir.check_config(_config(train__batch_size=128), str(only_cache)) == [
        "train.batch_size: 256 -> 128"
    ]
    with pytest.raises(errors.WorkdirError, match="data.seq_len: workdir has 128, this run has 64 "
                       r"\(used by its cache stage\)"):  # fmt: skip
        workdir.check_config(_config(data__seq_len=64), str(only_cache))
    status, _, err = cli(capsys, study, "--mode=train", "--config.train.batch_size=128")
    assert status == 1 and "train.batch_size: workdir has 256, this run has 128" in err
    assert "(used by its train stage)" in err and "Traceback" not in err


def _config(**changes):
    from gemmascope import study

    _, config = study.load_config_file(os.path.join(REPO, "experiments/tiny_demo.py:runlocal"))
    config.unlock()
    config.cache.shard_rows, config.cache.chunk_rows = 4096, 512
    for key, value in changes.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


def _holder(workdir_path, jobs=None):
    """A process that holds the workdir's (or jobs') lock until its stdin closes."""
    code = (
        "import sys; from gemmascope.study import lock; "
        "locks = lock._Locks(sys.argv[1]); "
        "lock._acquire(locks, sys.argv[1], sys.argv[2:] or None); "
        "print('held', flush=True); sys.stdin.read(); locks.release()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(workdir_path), *(jobs or [])], cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert child.stdout.readline().strip() == "held"
    return child


def test_two_writers(study, capsys):
    # Another run holds the whole workdir: a train run (of any job) and a cache run are refused.
    holder = _holder(study)
    for flags in (["--mode=train", f"--jobs={JOB}"], ["--mode=cache", f"--jobs={JOB}"]):
        status, _, err = cli(capsys, study, *flags)
        assert status == 1 and "Traceback" not in err
        assert f"another run is writing the whole workdir in {study}" in err
        assert f"pid {holder.pid}" in err and socket.gethostname() in err
    # Killed: its lock is stale and taken over with a warning; the lock is released afterwards.
    holder.kill()
    holder.wait()
    status, out, err = cli(capsys, study, "--mode=train", f"--jobs={JOB}")
    assert status == 0 and f"{JOB} already done" in out
    assert f"taking over the stale lock {lock.workdir_lock_path(str(study))}" in err
    assert lock.holders(str(study)) == {}

    # Train tasks on disjoint jobs run side by side (the launchers); the same job is refused.
    holder = _holder(study, [OTHER_JOB])
    status, out, _ = cli(capsys, study, "--mode=train", f"--jobs={JOB}")
    assert status == 0 and f"{JOB} already done" in out
    status, _, err = cli(capsys, study, "--mode=train", f"--jobs={OTHER_JOB}")
    assert status == 1 and f"another run is writing job {OTHER_JOB}" in err
    status, _, err = cli(capsys, study, "--mode=cache", f"--jobs={JOB}")  # cache during training
    assert status == 1 and f"another run is writing job {OTHER_JOB}" in err
    holder.stdin.close()
    holder.wait(timeout=60)
    assert lock.holders(str(study)) == {}

    # A lock taken on another host is never taken over: the message says how to remove it.
    path = lock.workdir_lock_path(str(study))
    files.write_json(path, {"host": "node-17", "pid": 4242, "started": "yesterday"})
    status, _, err = cli(capsys, study, "--mode=train", f"--jobs={JOB}")
    assert status == 1 and "host node-17, pid 4242" in err and f"rm {path}" in err
    assert "check on node-17 whether that run is still going" in err


def test_of_simultaneous_writers_exactly_one_gets_the_lock(tmp_path):
    # Eight writers start together (threads: the file system's atomic link is what decides).
    start = threading.Barrier(8)
    results = []

    def race():
        locks = lock._Locks(str(tmp_path / "w"))
        start.wait()
        try:
            lock._acquire(locks, str(tmp_path / "w"), None)
            results.append("won")
        except errors.WorkdirError:
            results.append("refused")

    racers = [threading.Thread(target=race) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(results) == ["refused"] * 7 + ["won"]


def test_the_lock_in_a_gcs_workdir_is_created_atomically():
    server, env = gcs_emulator.start("lock-bucket")
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        remote = "gs://lock-bucket/study"
        first, second = lock._Locks(remote), lock._Locks(remote)
        lock._acquire(first, remote, None)
        with pytest.raises(errors.WorkdirError, match="another run is writing the whole workdir"):
            lock._acquire(second, remote, None)
        # The create is conditional (ifGenerationMatch=0): it fails once the object exists, even
        # for a writer that looked before the other one wrote.
        store = lock._ObjectStore()
        kv, key = store._kv(lock.workdir_lock_path(remote))
        assert not kv.write(key, b"late", if_equal=b"\x02").result().generation
        first.release()
        lock._acquire(second, remote, None)
        assert lock.holders(remote)[lock.workdir_lock_path(remote)]["pid"] == os.getpid()
        second.release()
        assert lock.holders(remote) == {}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def test_a_full_disk_during_a_checkpoint_is_one_paragraph(study):
    # The file-size limit makes every write past 60 kB fail as a full disk would (EFBIG).
    shutil.rmtree(study / "runs" / JOB)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    # Without the session's compilation cache (conftest.py): the limit would make JAX's own
    # cache writes fail too, and JAX warns about those on stderr.
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="0")
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-m", "gemmascope", *FLAGS, f"--workdir={study}", "--mode=train",
         f"--jobs={JOB}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith("gemmascope: error: job ")
    assert f"its checkpoints in {study / 'runs' / JOB / 'checkpoints'} failed" in result.stderr
    assert "File too large" in result.stderr and len(result.stderr.splitlines()) == 2
    assert lock.holders(str(study)) == {}


def test_released_saes_with_the_same_folder_name_do_not_overwrite_each_other(
    study, capsys, tmp_path
):
    d = 128
    paths = []
    for release, scale in (("a", 1.0), ("b", 2.0)):
        path = tmp_path / release / "layer_0" / "width_256" / "average_l0_9" / "params.npz"
        path.parent.mkdir(parents=True)
        np.savez(
            path, W_enc=np.full((d, 2 * d), scale, np.float32),
            W_dec=np.full((2 * d, d), scale, np.float32), b_enc=np.zeros(2 * d, np.float32),
            b_dec=np.zeros(d, np.float32), threshold=np.zeros(2 * d, np.float32),
        )  # fmt: skip
        paths.append(path)
    flags = [f"--import_released={p}@resid_post/0" for p in paths]
    for _ in range(2):  # a rerun places each file in the same folder again
        status, out, err = cli(capsys, study, "--mode=export", f"--jobs={JOB}", *flags)
        assert status == 0, err[-3000:]
    width = study / "saes" / "resid_post" / "layer_0" / "width_256"
    assert sorted(p.name for p in width.iterdir()) == [
        "gemmascope_average_l0_9",
        "gemmascope_average_l0_9_2",
    ]
    for folder, path in zip(sorted(width.iterdir()), paths, strict=True):
        assert json.loads((folder / "config.json").read_text())["origin"] == str(path)
        with np.load(folder / "params.npz") as npz, np.load(path) as source:
            np.testing.assert_array_equal(npz["W_enc"], source["W_enc"])
