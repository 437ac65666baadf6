"""The sparse path's support listing and sparse products as compiled CPU kernels (numba).

On XLA:CPU a gather or scatter of rows runs element by element through a materialised
(rows, C, d) array: at d 512 / width 16k / batch 4096 and 1% L0 each of the path's four sparse
products took ~200-330 ms, and listing the support (mask, counts, slots, L0, firing counts:
five passes over the (B, M) pre-activations) ~250 ms, so the sparse step stayed at 1.3-1.6x the
dense one (docs/benchmarks.md#sparse-kernels). These kernels do the same work in one pass each,
as loops that read each row once:

- :func:`listing`: one pass over the support's bits (π > θ, or π in θ's STE window; packed by
  XLA in one pass over π, since a callback is handed a copy of every input and π's would cost
  more than the listing) lists each token's support into its C slots, with the counts, the L0
  and the firing counts;
- :func:`decode`: Σ_c f[b, c] W_dec[idx[b, c]], token by token;
- :func:`backward_products`: latent by latent (each thread owns a range of latents and sorts the
  slots that name them by counting), the slots' g_f = g_x̂ · W_dec[j], and the rows
  g_W_dec[j] = Σ f g_x̂ and g_W_enc[:, j] = Σ g_z (x − b_dec) and g_b_enc[j] = Σ g_z, each
  written once: no scatter, no write conflicts between threads.

Each kernel runs as ``jax.pure_callback`` (``vmap_method="sequential"``) on a thread pool of
this process's cores (the kernels release the GIL). Every output element is summed in a fixed
order (ascending token, then slot), so results do not depend on the thread count: a step is
deterministic, and it equals the XLA gathers' to fp32 rounding (tests/sae/test_sparse_support.py
runs both against autodiff of the dense products). :mod:`sparse_support` imports this module
(and numba) only when the path runs on CPU; the kernels compile on first call (~2 s, cached on
disk).

Synopsis::

    idx, counts, l0, fired = listing(support_words, on_words, capacity=256, width=16384)
    decoded = decode(f, idx, w_dec)                                         # (B, d_out)
    g_f, g_w_dec, g_w_enc, g_b_enc = backward_products(idx, f, on, g_dec, centred, w_dec)
"""

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numba
import numpy as np

# Reassociation lets LLVM vectorise the dot products; a build's order is fixed, so results are
# reproducible run to run. No other fast-math flag: comparisons must see NaN and inf as they are.
_FASTMATH = {"reassoc", "contract"}
_kernel = numba.njit(nogil=True, cache=True, fastmath=_FASTMATH)


@_kernel
def _listing_kernel(support_words, on_words, capacity, width, idx, counts, l0, fired, lo, hi):
    n_words = support_words.shape[1]
    for b in range(lo, hi):
        n = 0
        n_on = 0
        for w in range(n_words):
            bits = support_words[b, w]
            on = on_words[b, w]
            j = w * 32
            while bits != 0:  # the set bits, lowest first; stops at the highest
                if bits & 1:
                    if n < capacity:
                        idx[b, n] = j
                    n += 1
                    if on & 1:
                        n_on += 1
                        fired[j] += 1.0
                bits >>= 1
                on >>= 1
                j += 1
        counts[b] = n
        l0[b] = n_on
        first_empty = 0 if n > capacity else n  # a crowded token gets no slots
        for c in range(first_empty, capacity):
            idx[b, c] = width


@_kernel
def _decode_kernel(f, idx, table, out, lo, hi):
    width, dim = table.shape
    for b in range(lo, hi):
        for c in range(idx.shape[1]):
            j = idx[b, c]
            if j >= width:  # slots ascend; the empty ones are at the end
                break
            a = f[b, c]
            if a != 0.0:
                for k in range(dim):
                    out[b, k] += a * table[j, k]


@_kernel
def _slots_by_latent(idx, width, lo, hi):
    """The slots b·C + c naming latents lo..hi-1, sorted by latent (a counting sort).

    Returns (start, slots): latent j's slots, in token order, are
    slots[start[j - lo]:start[j - lo + 1]].
    """
    n_rows, capacity = idx.shape
    mine = np.empty(n_rows * capacity, np.int64)  # this range's slots, in token order
    n = 0
    for b in range(n_rows):
        for c in range(capacity):
            j = idx[b, c]
            if j >= width:
                break
            if lo <= j < hi:
                mine[n] = b * capacity + c
                n += 1
    start = np.zeros(hi - lo + 1, np.int64)
    for e in range(n):
        start[idx[mine[e] // capacity, mine[e] % capacity] - lo + 1] += 1
    for i in range(hi - lo):
        start[i + 1] += start[i]
    fill = start[:-1].copy()
    slots = np.empty(n, np.int64)
    for e in range(n):
        j = idx[mine[e] // capacity, mine[e] % capacity] - lo
        slots[fill[j]] = mine[e]
        fill[j] += 1
    return start, slots


@_kernel
def _backward_kernel(idx, f, on, g_dec, centred, w_dec, g_f, g_w_dec, g_w_enc_t, g_b_enc, lo, hi):
    capacity = idx.shape[1]
    d_out = w_dec.shape[1]
    d_in = centred.shape[1]
    start, slots = _slots_by_latent(idx, w_dec.shape[0], lo, hi)
    acc_dec = np.zeros(d_out, np.float32)
    acc_enc = np.zeros(d_in, np.float32)
    for j in range(lo, hi):
        acc_dec[:] = 0.0
        acc_enc[:] = 0.0
        bias = np.float32(0.0)
        for e in range(start[j - lo], start[j - lo + 1]):
            b = slots[e] // capacity
            c = slots[e] % capacity
            s = np.float32(0.0)
            for k in range(d_out):
                s += g_dec[b, k] * w_dec[j, k]
            g_f[b, c] = s
            if on[b, c]:
                a = f[b, c]
                for k in range(d_out):
                    acc_dec[k] += a * g_dec[b, k]
                for k in range(d_in):
                    acc_enc[k] += s * centred[b, k]
                bias += s
        g_w_dec[j, :] = acc_dec
        g_w_enc_t[j, :] = acc_enc
        g_b_enc[j] = bias


_POOLS: dict = {}  # process id -> its pool: a forked child's copy of the parent's has no threads


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    pid = os.getpid()
    if pid not in _POOLS:
        _POOLS[pid] = concurrent.futures.ThreadPoolExecutor(
            _n_threads(), thread_name_prefix="sparse_cpu"
        )
    return _POOLS[pid]


def _n_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _parts(n: int) -> int:
    return min(_n_threads(), max(n, 1))


def _run(kernel, n: int, args_of_part) -> None:
    """kernel(*args_of_part(p, lo, hi)) over ``_parts(n)`` contiguous ranges of 0..n-1, at once."""
    parts = _parts(n)
    bounds = [(p * n // parts, (p + 1) * n // parts) for p in range(parts)]
    pool = _pool()
    futures = [pool.submit(kernel, *args_of_part(p, *b)) for p, b in enumerate(bounds)]
    for future in futures:
        future.result()


def _host_listing(support_words, on_words, capacity, width):
    support_words, on_words = np.asarray(support_words), np.asarray(on_words)
    n_rows = support_words.shape[0]
    idx = np.empty((n_rows, capacity), np.int32)
    counts = np.empty(n_rows, np.int32)
    l0 = np.empty(n_rows, np.float32)
    fired = np.zeros((_parts(n_rows), width), np.float32)  # one row per thread, summed below
    args = (support_words, on_words, capacity, width, idx, counts, l0)
    _run(_listing_kernel, n_rows, lambda p, lo, hi: (*args, fired[p], lo, hi))
    return idx, counts, l0, fired.sum(axis=0, dtype=np.float32)


def _host_decode(f, idx, table):
    f, idx, table = (np.asarray(a) for a in (f, idx, table))
    out = np.zeros((f.shape[0], table.shape[1]), table.dtype)
    _run(_decode_kernel, f.shape[0], lambda p, lo, hi: (f, idx, table, out, lo, hi))
    return out


def _host_backward(idx, f, on, g_dec, centred, w_dec):
    idx, f, on, g_dec, centred, w_dec = (
        np.asarray(a) for a in (idx, f, on, g_dec, centred, w_dec)
    )
    width = w_dec.shape[0]
    g_f = np.zeros(idx.shape, f.dtype)
    g_w_dec = np.empty(w_dec.shape, w_dec.dtype)
    g_w_enc_t = np.empty((width, centred.shape[1]), centred.dtype)
    g_b_enc = np.empty(width, f.dtype)
    args = (idx, f, on, g_dec, centred, w_dec, g_f, g_w_dec, g_w_enc_t, g_b_enc)
    _run(_backward_kernel, width, lambda p, lo, hi: (*args, lo, hi))
    return g_f, g_w_dec, g_w_enc_t, g_b_enc


def _callback(host_fn, result_shapes, *args):
    return jax.pure_callback(host_fn, result_shapes, *args, vmap_method="sequential")


def listing(support_words: jax.Array, on_words: jax.Array, *, capacity: int, width: int):
    """Each token's support listed in ``capacity`` slots, from its bits.

    Args:
      support_words: (B, ⌈M/32⌉) uint32, bit j % 32 of word j // 32 set where latent j is in
        the token's support (π > θ or π in θ's STE window); :func:`sparse_support.pack_bits`.
      on_words: the same for π > θ (a subset of the support).
      capacity: slots per token (static).
      width: M, the number of latents (static).

    Returns:
      ``(idx, counts, l0, fired)``: idx (B, C) int32, the support's latents ascending and M in
      the empty slots (every slot of a token whose support exceeds C: *crowded*); counts (B,)
      int32 support sizes; l0 (B,) and fired (M,) float32 counts of π > θ per token and per
      latent.
    """
    n_rows = support_words.shape[0]
    shapes = (
        jax.ShapeDtypeStruct((n_rows, capacity), jnp.int32),
        jax.ShapeDtypeStruct((n_rows,), jnp.int32),
        jax.ShapeDtypeStruct((n_rows,), jnp.float32),
        jax.ShapeDtypeStruct((width,), jnp.float32),
    )
    host = functools.partial(_host_listing, capacity=capacity, width=width)
    return _callback(host, shapes, support_words, on_words)


def decode(f: jax.Array, idx: jax.Array, table: jax.Array) -> jax.Array:
    """(B, d) Σ_c f[b, c] · table[idx[b, c]]: f (B, C), idx (B, C) from :func:`listing`."""
    shape = jax.ShapeDtypeStruct((f.shape[0], table.shape[1]), table.dtype)
    return _callback(_host_decode, shape, f, idx, table)


def backward_products(idx, f, on, g_dec, centred, w_dec):
    """The sparse path's backward products over the slots ``idx`` (B, C) of :func:`listing`.

    Args:
      idx: (B, C) int32 slots (M where empty).
      f: (B, C) latent values at the slots (0 where off).
      on: (B, C) bool, the slot's latent fired (π > θ).
      g_dec: (B, d_out) the decoded output's cotangent g_x̂.
      centred: (B, d_in) the encoder's input x − b_dec.
      w_dec: (M, d_out) decoder.

    Returns:
      ``(g_f, g_w_dec, g_w_enc, g_b_enc)``: g_f (B, C) = g_x̂[b] · W_dec[idx] (0 in empty slots);
      g_W_dec (M, d_out) = Σ_slots f g_x̂; g_W_enc (d_in, M) = Σ_slots g_z (x − b_dec) and
      g_b_enc (M,) = Σ_slots g_z, with g_z = g_f where ``on``, else 0.
    """
    width = w_dec.shape[0]
    shapes = (
        jax.ShapeDtypeStruct(idx.shape, f.dtype),
        jax.ShapeDtypeStruct(w_dec.shape, w_dec.dtype),
        jax.ShapeDtypeStruct((width, centred.shape[1]), centred.dtype),
        jax.ShapeDtypeStruct((width,), f.dtype),
    )
    g_f, g_w_dec, g_w_enc_t, g_b_enc = _callback(
        _host_backward, shapes, idx, f, on, g_dec, centred, w_dec
    )
    return g_f, g_w_dec, g_w_enc_t.T, g_b_enc
