"""SIGKILL the cache writer at several points; rerunning finishes a bit-identical cache."""

import json
import os
import subprocess
import sys

import pytest
from cache_compare import assert_same_cache

from gemmascope.activations import storage

WORKER = os.path.join(os.path.dirname(__file__), "cache_worker.py")


def worker_env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    # Later processes reuse the first one's compiled forward pass.
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    # datasets' streaming mode imports torch when it is installed; these workers never need it.
    env["USE_TORCH"] = "0"
    return env


def _run(env, *args):
    return subprocess.run(
        [sys.executable, WORKER, *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_sigkill_and_rerun_gives_the_uninterrupted_cache(reference_cache, model_path, tmp_path):
    _, reference = reference_cache
    workdir = str(tmp_path / "work")
    env = worker_env(tmp_path)
    site_dir = storage.site_dir(workdir, "resid_post/1")
    n_shards = -(-storage.read_meta(site_dir.replace(workdir, reference))["n_tokens"] // 128)
    seen = []
    # Killed after 3 forward passes (shard 0 possibly mid-write), then after 11 more passes of
    # the resumed run, then while estimating C (all shards written, meta.json not complete).
    for flags in (
        ["--kill-after-forwards", "3"],
        ["--kill-after-forwards", "11"],
        ["--kill-in-finalize"],
    ):
        proc = _run(env, "build", model_path, workdir, *flags)
        assert proc.returncode == -9, proc.stderr[-3000:]
        meta = json.loads(storage.read_bytes(site_dir, "meta.json"))
        assert meta["complete"] is False
        seen.append(len(storage.written_shards(site_dir)))
    assert seen[0] < seen[1] < seen[2] == n_shards, seen
    proc = _run(env, "build", model_path, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_cache(reference, workdir)
