"""Assembling global, sharded `jax.Array` batches from rows each process reads for itself.

A source decides which rows form global batch i (a `ShuffleOrder`); this module turns that list
into a `jax.Array` laid out per `sharding`, asking the source to read only the rows that land on
this process's devices:

    batch = global_batch(rows, d_in, sharding, read_rows)   # read_rows(int64 rows) -> (n, d_in) f32

Every host-to-device copy here is an explicit `jax.device_put` onto one device, so the pipeline
works under `jax.config.update("jax_transfer_guard", "disallow")`: no copy is implicit.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np


def check_batch_sharding(batch_size, d_in: int, sharding) -> int:
    """Validates a batch size and a sharding for batches of shape (batch_size, d_in).

    Returns:
      batch_size as an int.

    Raises:
      ValueError: if batch_size is not a positive integer or the sharding cannot lay out
        (batch_size, d_in) (e.g. batch_size not divisible by the data-axis size).
      TypeError: if sharding is not a `jax.sharding.Sharding`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(sharding, jax.sharding.Sharding):
        raise TypeError(
            "sharding must be a jax.sharding.Sharding (e.g. NamedSharding(mesh, P('data', None))),"
            f" got {type(sharding).__name__}"
        )
    shape = (int(batch_size), d_in)
    try:
        sharding.shard_shape(shape)
    except ValueError as e:
        raise ValueError(
            f"sharding {sharding} cannot split a batch of shape {shape}: {e}. Use a batch_size "
            "divisible by the number of devices on the batch axis."
        ) from e
    return int(batch_size)


def global_batch(
    rows: np.ndarray,
    d_in: int,
    sharding: jax.sharding.Sharding,
    read_rows: Callable[[np.ndarray], np.ndarray],
) -> jax.Array:
    """Builds the global batch whose row j is `read_rows([rows[j]])`, reading only local rows.

    Args:
      rows: int64 (batch_size,) row indices of the whole global batch.
      d_in: feature width.
      sharding: layout of the (batch_size, d_in) result.
      read_rows: returns (len(r), d_in) values for int64 rows r; called once per process with
        the rows that this process's devices hold (the union of their slices, in batch order).

    Returns:
      A global `jax.Array` of shape (batch_size, d_in), in read_rows' dtype, laid out per
      `sharding`.
    """
    shape = (len(rows), d_in)
    index_map = sharding.addressable_devices_indices_map(shape)
    # Row slices this process needs: devices replicated over the model axis share one slice.
    slices = sorted({idx[0].indices(shape[0])[:2] for idx in index_map.values()})
    positions = np.concatenate([np.arange(a, b) for a, b in slices])
    local = read_rows(rows[positions])
    offset_of = {}
    offset = 0
    for a, b in slices:
        offset_of[(a, b)] = offset
        offset += b - a
    arrays = []
    for device, (row_index, col_index) in index_map.items():
        a, b = row_index.indices(shape[0])[:2]
        start = offset_of[(a, b)]
        arrays.append(jax.device_put(local[start : start + b - a, col_index], device))
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


_active_producers: set[tuple[threading.Event, threading.Thread]] = set()


@atexit.register
def _stop_producers() -> None:
    """Lets producer threads finish their current item before the interpreter goes away.

    A daemon thread killed in the middle of a JAX computation aborts the process, so every live
    producer is told to stop and joined first.
    """
    for stop, thread in list(_active_producers):
        stop.set()
        thread.join(timeout=60)


def prefetch(iterator: Iterator, size: int) -> Iterator:
    """Runs `iterator` in a background thread, keeping up to `size` items ready.

    Exceptions raised by the producer are re-raised in the consumer. Closing the returned
    generator (or exiting the interpreter) stops the producer after its current item.
    """
    if size <= 0:
        yield from iterator
        return
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterator:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            put((False, e))

    thread = threading.Thread(target=produce, daemon=True)
    entry = (stop, thread)
    _active_producers.add(entry)
    thread.start()
    try:
        while True:
            ok, item = items.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()
        _active_producers.discard(entry)
