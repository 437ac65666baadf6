"""Two JAX processes (jax.distributed on localhost) against one process.

They write the same cache as one process, read global batches in which each process reads only its
own rows, and stream from their own sequences.
"""

import socket
import subprocess
import sys

import numpy as np
from cache_compare import assert_same_cache
from test_cache_resume import WORKER, worker_env

from gemmascope.activations import storage
from gemmascope.activations.shuffle import ShuffleOrder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_write_and_read_like_one(reference_cache, model_path, tmp_path):
    _, reference = reference_cache
    workdir = str(tmp_path / "work")
    env = worker_env(tmp_path)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                "multihost",
                model_path,
                workdir,
                port,
                str(i),
                str(tmp_path / f"p{i}.npz"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    # Same rows in the same order: the row layout never depends on the process count.
    assert_same_cache(reference, workdir)

    site_dir = storage.site_dir(reference, "resid_post/1")
    meta = storage.read_meta(site_dir)
    values = storage.open_array(site_dir).read().result()
    order = ShuffleOrder(meta["n_tokens"], 2, block_rows=32, window_tokens=256)
    expected = [np.sort(order.rows(64 * i, 64 * (i + 1))) for i in range(2)]
    chunks_needed = len(np.unique(np.concatenate(expected) // 32))
    covered = set()
    for i in range(2):
        saved = np.load(tmp_path / f"p{i}.npz")
        # Each process read only the chunks of its own rows, fewer than the batches need.
        assert 0 < int(saved["chunks_read"]) < chunks_needed
        for key in saved.files:
            if key.startswith(("b0_", "b1_")):
                batch, rows = key.split("_rows")
                lo, hi = map(int, rows.split("_"))
                rows_wanted = expected[int(batch[1:])][lo:hi]
                np.testing.assert_allclose(
                    saved[key], values[rows_wanted] / np.float32(meta["norm_scale"]), rtol=3e-7
                )
                covered.add((batch, lo))
    assert len(covered) == 2 * 4, "the two processes together hold all 4 data shards of 2 batches"

    # Streaming: process p's rows of a global batch are activations of its sequences p, p+2, ...
    tokens = storage.open_array(storage.join(storage.cache_root(reference), "tokens"))
    sequence_ids = tokens.read().result()[:, 2]
    for i in range(2):
        rows = np.load(tmp_path / f"p{i}.npz")["stream_rows"]
        assert rows.shape == (32, values.shape[1])
        candidates = values[sequence_ids % 2 == i]
        others = values[sequence_ids % 2 != i]
        distinctive = 0
        for row in rows:
            assert np.abs(candidates - row).max(axis=1).min() < 1e-4
            # (A token right after BOS has the same activation in every sequence.)
            distinctive += np.abs(others - row).max(axis=1).min() > 1e-3
        assert distinctive >= len(rows) // 2
