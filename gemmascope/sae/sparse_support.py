"""JumpReLU's encoder + decoder computed from the support at low L0 (issue 14's sparse path).

Of a JumpReLU step's five products, (1) the encoder π = (x − b_dec) W_enc + b_enc is dense, and
the other four are not: (2) the decoder f W_dec and (4) its weight gradient fᵀ g_x̂ read f, zero
off the active set π > θ; (5) the encoder weight gradient (x − b_dec)ᵀ g_π reads g_π = H(π − θ)
g_f, zero off the active set too; and (3) g_f = g_x̂ W_decᵀ is needed only where π > θ and in
the STE window |π − θ| < ε/2 (θ's pseudo-gradient, :mod:`gemmascope.sae.ste`). Call that union
the *support*: every (token, latent) whose value or gradient is not zero.

:func:`encode_decode` computes π densely, then takes each token's support as a padded row list
of ``capacity`` latent indices (:func:`row_support`) and computes (2)-(5) from it: (2) and (3) as
row gathers of W_dec, (4) and (5) as row scatter-adds into (M, d) arrays, the θ, b_enc (and
b_dec) gradients as scatter-adds of (B, capacity) entries. The few tokens whose support exceeds
``capacity`` (the per-token L0 varies: the fullest token of a batch has 2-3x the mean) get no
slots; up to B/16 of them (:func:`crowded_rows_limit`) are gathered and computed with (B/16, M)
dense products. When more tokens than that are crowded the whole batch takes the dense products
(``lax.cond``), so the result is exact either way: dense while the support is large (the start
of training, when about half the latents fire), sparse once it is small. Under ``vmap`` a
per-member predicate turns ``lax.cond`` into a select that runs both branches (exact, slower
than dense): the sparse path pays off when the sweep members run one after another (the
trainer's ``members_per_pass = 1``, its CPU default); docs/sae.md#sparse-path.

Who lists the support and computes (2)-(5) is ``kernels``: "xla" (the gathers and scatter-adds
below, any backend and sharding) or "cpu" (:mod:`sparse_cpu`'s compiled loops, 2-4x faster per
product on XLA:CPU; the config's ``sparse_kernels = "auto"`` picks them on CPU, ``kernels_for``).

The forward and backward are one ``jax.custom_vjp``: autodiff of the dense products is the
oracle the tests hold it to (tests/sae/test_sparse_support.py). The input ``x`` is data: the path
stops its gradient (a training step never asks for it).

Synopsis::

    decoded, fired, l0, pi = encode_decode(x, w_enc, b_enc, b_dec, theta, w_dec,
                                           bandwidth=1e-3, capacity=256, centre=True, with_pi=True)
    # decoded (B, d_out) = f W_dec; fired (M,) and l0 (B,) float counts with the step STE;
    # pi (B, M) only when with_pi (AuxK reads it), else None
    idx = row_support(mask, capacity)   # (B, capacity) int32, M where a row has fewer
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from gemmascope.sae import ste

# Rows per vmapped block of the gathers and scatters (measured on XLA:CPU at B 4096, M 16384,
# d 512: blocks of 16 rows beat whole-batch gathers, which materialise (B, capacity, d), by 4x).
_ROWS_PER_BLOCK = 16
_WORD = 32
# Up to B // this many tokens may exceed the capacity: their rows are computed densely.
_CROWDED_FRACTION = 16


# Which implementation computes the listing and the sparse products: "auto" = kernels_for().
KERNELS = ("auto", "xla", "cpu")


def kernels_for(choice: str) -> str:
    """"xla" or "cpu" for a config's ``sparse_kernels``.

    "auto" is "cpu" on the CPU backend in a single process, else "xla": the CPU kernels run as
    host callbacks, which a sharded program runs once on its first device with the whole arrays
    (exact, tested on a (2, 4) mesh of host devices) and which were not tested across processes.
    """
    if choice not in KERNELS:
        raise ValueError(f"sparse_kernels must be one of {KERNELS}, got {choice!r}")
    if choice == "auto":
        single_cpu = jax.default_backend() == "cpu" and jax.process_count() == 1
        return "cpu" if single_cpu else "xla"
    return choice


def support_mask(pi: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """(B, M) bool: π > θ, or π in θ's STE window (the same expressions as :mod:`ste`)."""
    return (pi > theta) | (ste.rectangle((pi - theta) / bandwidth) > 0)


def pack_bits(mask: jax.Array) -> jax.Array:
    """(B, M) bool -> (B, ⌈M/32⌉) uint32: bit j % 32 of word j // 32 is mask[:, j]."""
    rows, width = mask.shape
    pad = (-width) % _WORD
    if pad:
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
    shifts = jnp.arange(_WORD, dtype=jnp.uint32)
    return jnp.sum(
        mask.reshape(rows, -1, _WORD).astype(jnp.uint32) << shifts, axis=-1, dtype=jnp.uint32
    )  # disjoint bits: the sum is the bitwise or


def row_support(mask: jax.Array, capacity: int) -> jax.Array:
    """The column indices of each row's first ``capacity`` True entries, ascending.

    Packs each row into 32-bit words, counts bits per word (``population_count``), finds the word
    of every slot by a binary search over the running counts and the bit inside it by a binary
    search over popcounts of its low bits: exact, and 10x cheaper on XLA:CPU than a per-row
    ``nonzero`` or ``lax.top_k`` at (4096, 16384).

    Args:
      mask: (B, M) bool.
      capacity: static number of slots per row.

    Returns:
      (B, capacity) int32; slots past a row's count hold M.
    """
    width = mask.shape[1]
    words = pack_bits(mask)
    n_words = words.shape[1]
    per_word = lax.population_count(words).astype(jnp.int32)
    running = jnp.cumsum(per_word, axis=1)  # inclusive
    slots = jnp.arange(capacity, dtype=jnp.int32)
    word = jax.vmap(lambda r: jnp.searchsorted(r, slots, side="right"))(running)
    safe_word = jnp.minimum(word, n_words - 1)
    before = jnp.take_along_axis(running - per_word, safe_word, axis=1)
    rank = slots[None, :] - before  # which set bit of its word each slot is (0-based)
    bits = jnp.take_along_axis(words, safe_word, axis=1)
    position = jnp.zeros_like(rank)
    for step in (16, 8, 4, 2, 1):  # the largest p with popcount(bits below p) <= rank
        candidate = position + step
        below = bits & ((jnp.uint32(1) << candidate.astype(jnp.uint32)) - jnp.uint32(1))
        fits = lax.population_count(below).astype(jnp.int32) <= rank
        position = jnp.where(fits, candidate, position)
    index = safe_word * _WORD + position
    return jnp.where(word < n_words, index, width).astype(jnp.int32)


def _gather_weighted_rows(weights, idx, table):
    """Σ_c weights[b, c] · table[idx[b, c]]: (B, C), (B, C) in-range, (M, d) -> (B, d)."""

    def row(args):
        w, i = args
        return w @ jnp.take(table, i, axis=0)

    return lax.map(row, (weights, idx), batch_size=_ROWS_PER_BLOCK)


def _gather_dots(rows, idx, table):
    """rows[b] · table[idx[b, c]]: (B, d), (B, C) in-range, (M, d) -> (B, C)."""

    def row(args):
        r, i = args
        return jnp.take(table, i, axis=0) @ r

    return lax.map(row, (rows, idx), batch_size=_ROWS_PER_BLOCK)


def _scatter_weighted_rows(weights, idx, rows, n_out: int):
    """out[i] = Σ_{idx[b, c] = i} weights[b, c] · rows[b], (n_out, d); idx == n_out is dropped."""
    n_rows, capacity = weights.shape
    pad = (-n_rows) % _ROWS_PER_BLOCK
    if pad:
        weights = jnp.pad(weights, ((0, pad), (0, 0)))
        idx = jnp.pad(idx, ((0, pad), (0, 0)), constant_values=n_out)
        rows = jnp.pad(rows, ((0, pad), (0, 0)))
    n_blocks = (n_rows + pad) // _ROWS_PER_BLOCK

    def block(j, out):
        def rows_of(a):
            return lax.dynamic_slice_in_dim(a, j * _ROWS_PER_BLOCK, _ROWS_PER_BLOCK)

        updates = rows_of(weights)[..., None] * rows_of(rows)[:, None, :]
        return out.at[rows_of(idx).reshape(-1)].add(
            updates.reshape(-1, rows.shape[-1]), mode="drop"
        )

    zeros = jnp.zeros((n_out, rows.shape[-1]), rows.dtype)
    return lax.fori_loop(0, n_blocks, block, zeros)


def _scatter_entries(values, idx, n_out: int):
    """out[i] = Σ_{idx[b, c] = i} values[b, c], (n_out,); idx == n_out is dropped."""
    return (
        jnp.zeros((n_out,), values.dtype).at[idx.reshape(-1)].add(values.reshape(-1), mode="drop")
    )


def crowded_rows_limit(n_rows: int) -> int:
    """How many tokens fuller than the capacity a batch may have and still take the sparse path."""
    return max(1, n_rows // _CROWDED_FRACTION)


def _crowded(pi, theta, bandwidth, capacity):
    """((B,) tokens whose support exceeds ``capacity``, () whether the batch must run dense)."""
    counts = jnp.sum(support_mask(pi, theta, bandwidth), axis=-1, dtype=jnp.int32)
    crowded = counts > capacity
    too_many = jnp.sum(crowded, dtype=jnp.int32) > crowded_rows_limit(pi.shape[0])
    return crowded, too_many


def overflows(pi: jax.Array, theta: jax.Array, bandwidth: float, capacity: int) -> jax.Array:
    """() bool: the batch takes the dense products (more crowded tokens than the limit)."""
    return _crowded(pi, theta, bandwidth, capacity)[1]


def _forward(x, w_enc, b_enc, b_dec, theta, w_dec, bandwidth, capacity, centre, kernels):
    centred = x - b_dec if centre else x
    pi = centred @ w_enc + b_enc
    n_rows, width = pi.shape
    n_crowded = crowded_rows_limit(n_rows)
    if kernels == "cpu":  # one pass packs the bits, sparse_cpu lists and counts them
        from gemmascope.sae import sparse_cpu  # noqa: PLC0415 (numba: only where it runs)

        on = pi > theta
        idx, counts, l0, fired = sparse_cpu.listing(
            pack_bits(support_mask(pi, theta, bandwidth)),
            pack_bits(on),
            capacity=capacity,
            width=width,
        )
        crowded = counts > capacity

        def listing():
            return idx, jnp.take_along_axis(pi, jnp.minimum(idx, width - 1), axis=1)

    else:
        crowded = _crowded(pi, theta, bandwidth, capacity)[0]
        on_float = (pi > theta).astype(pi.dtype)
        fired, l0 = jnp.sum(on_float, axis=0), jnp.sum(on_float, axis=-1)

        def listing():  # crowded tokens get no slots
            idx = row_support(support_mask(pi, theta, bandwidth) & ~crowded[:, None], capacity)
            z = jnp.take_along_axis(pi, jnp.minimum(idx, width - 1), axis=1)
            return idx, z

    dense = jnp.sum(crowded, dtype=jnp.int32) > n_crowded

    def dense_decode():
        f = jnp.where(pi > theta, pi, jnp.zeros((), pi.dtype))
        no_slots = jnp.full((n_rows, capacity), width, jnp.int32)
        return f @ w_dec, no_slots, jnp.full((n_crowded,), n_rows, jnp.int32)

    def sparse_decode():
        idx, z = listing()
        safe = jnp.minimum(idx, width - 1)
        f = jnp.where((idx < width) & (z > theta[safe]), z, jnp.zeros((), z.dtype))
        if kernels == "cpu":
            decoded = sparse_cpu.decode(f, idx, w_dec)
        else:
            decoded = _gather_weighted_rows(f, safe, w_dec)
        # The crowded tokens' rows, gathered and computed densely.
        rows = jnp.nonzero(crowded, size=n_crowded, fill_value=n_rows)[0].astype(jnp.int32)
        pi_rows = pi[jnp.minimum(rows, n_rows - 1)]
        f_rows = jnp.where(pi_rows > theta, pi_rows, jnp.zeros((), pi.dtype))
        decoded = decoded.at[rows].add(f_rows @ w_dec, mode="drop")
        return decoded, idx, rows

    decoded, idx, rows = lax.cond(dense, dense_decode, sparse_decode)
    residuals = (centred, pi, idx, rows, dense, theta, w_enc, w_dec)
    return (decoded, fired, l0, pi), residuals


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _encode_decode(x, w_enc, b_enc, b_dec, theta, w_dec, *static):
    bandwidth, capacity, centre, with_pi, kernels = static
    outputs, _ = _forward(
        x, w_enc, b_enc, b_dec, theta, w_dec, bandwidth, capacity, centre, kernels
    )
    return outputs if with_pi else outputs[:3]


def _encode_decode_fwd(x, w_enc, b_enc, b_dec, theta, w_dec, *static):
    bandwidth, capacity, centre, with_pi, kernels = static
    outputs, residuals = _forward(
        x, w_enc, b_enc, b_dec, theta, w_dec, bandwidth, capacity, centre, kernels
    )
    return (outputs if with_pi else outputs[:3]), (residuals, jnp.zeros_like(x), b_dec)


def _encode_decode_bwd(bandwidth, capacity, centre, with_pi, kernels, saved, cotangents):
    (centred, pi, idx, rows, dense, theta, w_enc, w_dec), zero_x, b_dec = saved
    g_dec, g_fired, g_l0 = cotangents[:3]
    g_pi = cotangents[3] if with_pi else None
    width = pi.shape[-1]
    inv_eps = 1.0 / bandwidth

    def dense_grads():
        on = pi > theta
        g_f = g_dec @ w_dec.T
        g_z = jnp.where(on, g_f, jnp.zeros((), g_f.dtype))
        if g_pi is not None:
            g_z = g_z + g_pi
        kernel = ste.rectangle((pi - theta) / bandwidth)
        g_theta = jnp.sum(-inv_eps * kernel * (theta * g_f + g_fired + g_l0[:, None]), axis=0)
        g_w_dec = jnp.where(on, pi, jnp.zeros((), pi.dtype)).T @ g_dec
        return centred.T @ g_z, jnp.sum(g_z, axis=0), g_theta, g_w_dec

    def sparse_grads():
        valid = idx < width
        safe = jnp.minimum(idx, width - 1)
        z = jnp.take_along_axis(pi, safe, axis=1)
        th = theta[safe]
        on = valid & (z > th)
        f = jnp.where(on, z, jnp.zeros((), z.dtype))
        if kernels == "cpu":
            from gemmascope.sae import sparse_cpu  # noqa: PLC0415

            g_f, g_w_dec, g_w_enc, g_b_enc = sparse_cpu.backward_products(
                idx, f, on, g_dec, centred, w_dec
            )
        else:
            g_f = _gather_dots(g_dec, safe, w_dec)
            g_z = jnp.where(on, g_f, jnp.zeros((), g_f.dtype))
            g_w_dec = _scatter_weighted_rows(f, idx, g_dec, width)
            g_w_enc = _scatter_weighted_rows(g_z, idx, centred, width).T
            g_b_enc = _scatter_entries(g_z, idx, width)
        kernel = jnp.where(valid, ste.rectangle((z - th) / bandwidth), 0.0)
        g_entries = -inv_eps * kernel * (th * g_f + g_fired[safe] + g_l0[:, None])
        g_theta = _scatter_entries(g_entries, idx, width)
        # The crowded tokens' rows, dense: (R, M) products, R = crowded_rows_limit(B).
        n_rows = pi.shape[0]
        real = (rows < n_rows)[:, None]
        safe_rows = jnp.minimum(rows, n_rows - 1)
        pi_rows = pi[safe_rows]
        g_dec_rows = jnp.where(real, g_dec[safe_rows], 0.0)
        g_f_rows = g_dec_rows @ w_dec.T
        on_rows = pi_rows > theta
        g_z_rows = jnp.where(on_rows & real, g_f_rows, 0.0)
        kernel_rows = jnp.where(real, ste.rectangle((pi_rows - theta) / bandwidth), 0.0)
        g_l0_rows = g_l0[safe_rows][:, None]
        g_theta = g_theta + jnp.sum(
            -inv_eps * kernel_rows * (theta * g_f_rows + g_fired + g_l0_rows), axis=0
        )
        g_w_dec = g_w_dec + jnp.where(on_rows & real, pi_rows, 0.0).T @ g_dec_rows
        g_w_enc = g_w_enc + centred[safe_rows].T @ g_z_rows
        g_b_enc = g_b_enc + jnp.sum(g_z_rows, axis=0)
        if g_pi is not None:  # AuxK's dense π cotangent: its own product, only when it is not 0
            extra_w, extra_b = lax.cond(
                jnp.any(g_pi != 0),
                lambda: (centred.T @ g_pi, jnp.sum(g_pi, axis=0)),
                lambda: (jnp.zeros_like(g_w_enc), jnp.zeros_like(g_b_enc)),
            )
            g_w_enc, g_b_enc = g_w_enc + extra_w, g_b_enc + extra_b
        return g_w_enc, g_b_enc, g_theta, g_w_dec

    g_w_enc, g_b_enc, g_theta, g_w_dec = lax.cond(dense, dense_grads, sparse_grads)
    g_b_dec = -(w_enc @ g_b_enc) if centre else jnp.zeros_like(b_dec)
    return zero_x, g_w_enc, g_b_enc, g_b_dec, g_theta.astype(theta.dtype), g_w_dec


_encode_decode.defvjp(_encode_decode_fwd, _encode_decode_bwd)


def encode_decode(
    x: jax.Array,
    w_enc: jax.Array,
    b_enc: jax.Array,
    b_dec: jax.Array,
    theta: jax.Array,
    w_dec: jax.Array,
    *,
    bandwidth: float,
    capacity: int,
    centre: bool,
    with_pi: bool,
    kernels: str = "xla",
):
    """JumpReLU's encoder and decoder product with products (2)-(5) from the support.

    Values and gradients (w.r.t. every argument but ``x``) equal those of the dense form
    ``π = (x − b_dec·centre) W_enc + b_enc``, ``f, fired = ste.jumprelu_and_fired(π, θ, ε)``,
    ``l0 = Σ_latents ste.step(π, θ, ε)``, ``decoded = f W_dec`` (module docstring).

    Args:
      x: (B, d_in) float32 inputs (data: no gradient flows to them).
      w_enc: (d_in, M) encoder.
      b_enc: (M,) encoder bias.
      b_dec: the pre-encoder bias (d_in,), read only when ``centre``.
      theta: (M,) float32 thresholds.
      w_dec: (M, d_out).
      bandwidth: the STE's ε (static).
      capacity: support slots per token (static); fuller tokens are computed densely, and a
        batch with more than ``crowded_rows_limit(B)`` of them runs dense.
      centre: subtract b_dec before encoding (``cfg.pre_encoder_bias``).
      with_pi: also return π (B, M) with its gradient (AuxK reads it).
      kernels: "xla" (gathers and scatter-adds in XLA: any backend, any sharding) or "cpu" (the
        listing and the four products as :mod:`sparse_cpu`'s compiled loops, on the host;
        ``kernels_for`` picks).

    Returns:
      ``(decoded (B, d_out), fired (M,), l0 (B,), pi or None)``.
    """
    if not 0 < capacity:
        raise ValueError(f"encode_decode: capacity must be a positive int, got {capacity!r}")
    if kernels not in KERNELS[1:]:
        raise ValueError(f"encode_decode: kernels must be one of {KERNELS[1:]}, got {kernels!r}")
    capacity = min(int(capacity), w_enc.shape[-1])
    out = _encode_decode(
        lax.stop_gradient(x),
        w_enc,
        b_enc,
        b_dec,
        theta,
        w_dec,
        bandwidth,
        capacity,
        centre,
        with_pi,
        kernels,
    )
    return (*out, None) if not with_pi else out
