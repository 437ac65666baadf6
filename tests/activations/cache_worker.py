"""Subprocess entry point for cache tests that need their own process (SIGKILL, multi-host).

    python cache_worker.py build MODEL WORKDIR [--kill-after-forwards N | --kill-in-finalize]
    python cache_worker.py multihost MODEL WORKDIR PORT PROCESS_ID OUT_NPZ

`build` runs activations.build_cache with the tests' study config and, if asked, SIGKILLs itself
after N forward passes (writes of earlier shards may still be in flight) or while computing
the normalisation scalar (all shards written, meta.json not yet complete).
`multihost` joins a 2-process JAX runtime on localhost, builds the cache (each process writing
its own shards), then reads two global batches and saves this process's shards of them, and
one StreamingSource batch's local rows.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _kill_self(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _light_tokenizer():
    # transformers would import torch (seconds per process); tokenizers alone gives the same ids.
    from activation_setup import LightTokenizer

    from gemmascope import model

    model.load_tokenizer = LightTokenizer


def build(model_path, workdir, *flags):
    from activation_setup import study_config

    from gemmascope.activations import capture, writer

    _light_tokenizer()

    if flags and flags[0] == "--kill-after-forwards":
        limit, calls = int(flags[1]), [0]
        dispatch = capture.Capturer.dispatch

        def counting_dispatch(self, tokens):
            calls[0] += 1
            if calls[0] > limit:
                _kill_self()
            return dispatch(self, tokens)

        capture.Capturer.dispatch = counting_dispatch
    elif flags and flags[0] == "--kill-in-finalize":
        writer.estimate_norm_scale = _kill_self
    writer.build_cache(study_config(model_path), workdir)


def multihost(model_path, workdir, port, process_id, out_path):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
    import numpy as np
    from activation_setup import study_config
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from gemmascope import activations

    _light_tokenizer()
    activations.build_cache(study_config(model_path), workdir)
    mesh = Mesh(np.array(jax.devices()).reshape(4, 4), ("data", "model"))
    src = activations.open_source(workdir, "resid_post/1", seed=2, window_tokens=256)
    it = src.iter_batches(64, NamedSharding(mesh, P("data", None)))
    saved = {}
    for i in range(2):
        batch = next(it)
        for shard in batch.addressable_shards:
            rows = shard.index[0].indices(64)[:2]
            saved[f"b{i}_rows{rows[0]}_{rows[1]}"] = np.asarray(shard.data)
    saved["chunks_read"] = np.asarray(len(src._chunks._chunks))
    stream = activations.StreamingSource.from_config(
        study_config(model_path), "resid_post/1", seed=0, buffer_tokens=320, norm_scale=1.0
    )
    stream_it = stream.iter_batches(64, NamedSharding(mesh, P("data", None)))
    batch = next(stream_it)
    stream_it.close()
    local = {s.index[0].indices(64)[0]: np.asarray(s.data) for s in batch.addressable_shards}
    saved["stream_rows"] = np.concatenate([local[lo] for lo in sorted(local)])
    it.close()  # stop the readers' prefetch threads before the runtime shuts down
    np.savez(out_path, **saved)
    jax.distributed.shutdown()


if __name__ == "__main__":
    {"build": build, "multihost": multihost}[sys.argv[1]](*sys.argv[2:])
