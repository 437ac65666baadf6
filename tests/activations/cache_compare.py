"""Helpers comparing whole caches: every array's values and every meta.json."""

import json
import os

import numpy as np

from gemmascope.activations import storage


def array_dirs(workdir: str) -> list[str]:
    root = storage.cache_root(workdir)
    found = []
    for path, _, files in os.walk(root):
        if "zarr.json" in files:
            found.append(os.path.relpath(path, root))
    return sorted(found)


def assert_same_cache(workdir_a: str, workdir_b: str) -> None:
    dirs = array_dirs(workdir_a)
    assert dirs == array_dirs(workdir_b) and dirs
    for rel in dirs:
        a = storage.join(storage.cache_root(workdir_a), rel)
        b = storage.join(storage.cache_root(workdir_b), rel)
        assert json.loads(storage.read_bytes(a, "meta.json")) == json.loads(
            storage.read_bytes(b, "meta.json")
        ), rel
        values_a = storage.open_array(a).read().result()
        values_b = storage.open_array(b).read().result()
        assert values_a.dtype == values_b.dtype
        np.testing.assert_array_equal(values_a, values_b, err_msg=rel)
