"""The shared dictionary: init, affine encoder/decoder maps and the unit-norm decoder constraint.

Layout (npz layout throughout): ``W_enc`` (d_in, M), ``W_dec`` (M, d_in), so latent i's decoder
vector is the row ``W_dec[i]``. A transcoder (``cfg.d_out`` set; docs/transcoders.md) has
``W_dec`` (M, d_out), ``b_dec`` (d_out,) and, as a skip-transcoder, ``W_skip`` (d_in, d_out).
Sources: docs/recipe.md#jumprelu-model (maps), #init, #decoder-constraint.

Synopsis::

    w_enc, w_dec = init_dictionary(key, d_in, width, cfg)  # unit rows, W_enc = s·W_decᵀ
    params = init_maps(key, d_in, width, cfg)          # W_enc, b_enc, W_dec, b_dec (+ W_skip)
    pi = pre_activations(params, x, cfg)                # (x − b_dec) @ W_enc + b_enc
    x_hat = decode(params, f)                           # f @ W_dec + b_dec
    y_hat = decode(params, f, x)                        # a skip-transcoder's + x @ W_skip
    params = constrain(params, cfg)                     # unit rows when cfg.unit_norm_decoder
    g = project_out_parallel(g_dec, w_dec)              # g_i <- g_i - (g_i . d^_i) d^_i
    w_dec = unit_rows(w_dec)                            # d_i <- d_i / ||d_i||
"""

import jax
import jax.numpy as jnp
import ml_collections

# Guards the division by a row norm; a decoder row never has a norm this small in practice.
_TINY_NORM = 1e-12


def row_norms(w_dec: jax.Array) -> jax.Array:
    """Euclidean norm of each decoder row, (M, d) -> (M,)."""
    return jnp.sqrt(jnp.sum(jnp.square(w_dec), axis=-1))


def unit_rows(w_dec: jax.Array) -> jax.Array:
    """Rescales every decoder row to unit norm."""
    return w_dec / jnp.maximum(row_norms(w_dec), _TINY_NORM)[..., None]


def project_out_parallel(grad_dec: jax.Array, w_dec: jax.Array) -> jax.Array:
    """Removes from each row's gradient its component along that decoder row.

    docs/recipe.md#decoder-constraint.
    """
    direction = unit_rows(w_dec)
    parallel = jnp.sum(grad_dec * direction, axis=-1, keepdims=True)
    return grad_dec - parallel * direction


def init_dictionary(
    key: jax.Array,
    d_in: int,
    width: int,
    cfg: ml_collections.ConfigDict | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The encoder and decoder matrices at init (docs/sae.md#initialisation).

    W_dec is He-uniform with each row rescaled to norm ``cfg.decoder_init_norm``; W_enc is
    ``cfg.encoder_init_scale`` times the unit-row W_dec transposed. Both 1 (the default, and
    the only values without a config) is the Gemma Scope init: unit rows, W_enc = W_decᵀ.

    Args:
      key: PRNG key.
      d_in: input dimension d.
      width: number of latents M.
      cfg: the architecture config (fields ``encoder_init_scale``, ``decoder_init_norm``), or
        None for the Gemma Scope init.

    Returns:
      (W_enc (d_in, width), W_dec (width, d_in)), float32.
    """
    unit = unit_rows(jax.nn.initializers.he_uniform()(key, (width, d_in), jnp.float32))
    if cfg is None:
        return unit.T, unit
    return cfg.encoder_init_scale * unit.T, cfg.decoder_init_norm * unit


def init_maps(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """The encoder and decoder params at init: ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``.

    An SAE gets :func:`init_dictionary`'s tied init. A transcoder (``cfg.d_out`` set) maps one
    site to another, so a tied init has no meaning: W_enc and W_dec are drawn independently
    (He-uniform, rows rescaled as for an SAE), and a skip-transcoder's ``W_skip`` starts at 0
    (as SAELens's skip transcoder), so training starts from the plain transcoder.
    """
    d_out = cfg.get("d_out")
    if d_out is None:
        w_enc, w_dec = init_dictionary(key, d_in, width, cfg)
        d_out = d_in
    else:
        enc_key, dec_key = jax.random.split(key)
        w_enc = init_dictionary(enc_key, d_in, width, cfg)[0]
        w_dec = init_dictionary(dec_key, d_out, width, cfg)[1]
    params = {
        "W_enc": w_enc,
        "b_enc": jnp.zeros((width,), jnp.float32),
        "W_dec": w_dec,
        "b_dec": jnp.zeros((d_out,), jnp.float32),
    }
    if cfg.get("skip_connection"):
        params["W_skip"] = jnp.zeros((d_in, d_out), jnp.float32)
    return params


@jax.custom_vjp
def centred_affine(x: jax.Array, w: jax.Array, b: jax.Array, b_dec: jax.Array) -> jax.Array:
    """``(x − b_dec) @ w + b`` whose backward pass skips a matmul.

    Autodiff would get b_dec's gradient from the full (B, d) input cotangent dπ @ wᵀ, a sixth
    (B, M) x (M, d) product per training step; here it is −(Σ_batch dπ) @ wᵀ, a (d,) x (d, M)
    product. The x cotangent is still exact (dead code under jit when nobody asks for it).
    """
    return (x - b_dec) @ w + b


def _centred_affine_fwd(x, w, b, b_dec):
    centred = x - b_dec
    return centred @ w + b, (centred, w)


def _centred_affine_bwd(residuals, g):
    centred, w = residuals
    flat_g = g.reshape(-1, g.shape[-1])
    grad_w = centred.reshape(-1, centred.shape[-1]).T @ flat_g
    summed = jnp.sum(flat_g, axis=0)
    return g @ w.T, grad_w, summed, -(summed @ w.T)


centred_affine.defvjp(_centred_affine_fwd, _centred_affine_bwd)


def pre_activations(
    params: dict, x: jax.Array, cfg: ml_collections.ConfigDict, w_enc_key: str = "W_enc"
) -> jax.Array:
    """Encoder pre-activations ``(x − b_dec) @ W_enc + b_enc`` in float32.

    Without the b_dec shift when ``cfg.pre_encoder_bias`` is False.
    """
    x = x.astype(jnp.float32)
    if not cfg.pre_encoder_bias:
        return x @ params[w_enc_key] + params["b_enc"]
    return centred_affine(x, params[w_enc_key], params["b_enc"], params["b_dec"])


def decode(params: dict, f: jax.Array, x: jax.Array | None = None) -> jax.Array:
    """Reconstruction ``f @ W_dec + b_dec``, plus ``x @ W_skip`` for a skip-transcoder.

    Raises:
      ValueError: the params have ``W_skip`` but no input ``x`` was given.
    """
    return add_output_biases(params, f @ params["W_dec"], x)


def add_output_biases(params: dict, decoded: jax.Array, x: jax.Array | None = None) -> jax.Array:
    """``decoded + b_dec``, plus ``x @ W_skip`` for a skip-transcoder: :func:`decode` given f W_dec.

    Raises:
      ValueError: the params have ``W_skip`` but no input ``x`` was given.
    """
    out = decoded + params["b_dec"]
    if "W_skip" not in params:
        return out
    if x is None:
        raise ValueError("decode: a skip-transcoder's output needs its input x (for x @ W_skip)")
    return out + x.astype(jnp.float32) @ params["W_skip"]


def constrain(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Renormalises every decoder row to unit norm when ``cfg.unit_norm_decoder``.

    docs/recipe.md#decoder-constraint.
    """
    if not cfg.unit_norm_decoder:
        return params
    return {**params, "W_dec": unit_rows(params["W_dec"])}
