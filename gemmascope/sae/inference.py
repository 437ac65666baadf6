"""The JumpReLU training form that export and tests use (docs/recipe.md#params-npz).

Every architecture with a per-latent threshold rule converts to a :class:`TrainingForm`
``{W_enc (d, M), W_dec (M, d), b_enc (M,), b_dec (d,), threshold (M,)}`` (float32) that encodes

    π = (x − b_dec) W_enc + b_enc,   f = relu(π)·1[π > threshold],   x̂ = f W_dec + b_dec

in *training units* (inputs already divided by the normalisation scalar C) and *with* the
pre-encoder bias. Export folds C and b_dec into b_enc (docs/recipe.md#folding) to get the released
format, whose encoder has no b_dec shift (``gemmascope.eval.metrics.encode_released``).

The two forms hold the same five arrays, so they are told apart by type: a ``TrainingForm`` is a
Mapping and a registered pytree (it goes through jit and vmap), and the released form is the plain
dict ``export.load_npz`` returns. :func:`encode_training_form` and :func:`decode_training_form`
refuse anything else, ``eval.metrics.encode_released`` and ``export.save_npz`` refuse a
``TrainingForm``, and ``export.fold`` takes only a ``TrainingForm``: a released params.npz fed to
the training-form encoder (or the reverse) is a TypeError, not silently wrong latents.

Every matmul here requests ``Precision.HIGHEST``: evaluation and export are full fp32 on every
backend, whatever the ambient ``jax.default_matmul_precision``.

Synopsis::

    jr = jumprelu_form(params, w_enc, b_enc, theta, cfg)   # folds an absent pre-encoder bias
    f = encode_training_form(jr, x)
    x_hat = decode_training_form(jr, f)
    tf = jumprelu_form(...)        # a TranscoderForm when cfg.d_out is set (docs/transcoders.md)
    y_hat = decode_transcoder_form(tf, encode_transcoder_form(tf, x), x)
"""

import dataclasses
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections

_HIGHEST = jax.lax.Precision.HIGHEST
_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class TrainingForm(Mapping):
    """An SAE's JumpReLU form in training units, with the pre-encoder bias (module docstring).

    Read it like the dict it replaces (``jr["W_enc"]``, ``jr.items()``) or by attribute.
    """

    W_enc: jax.Array
    W_dec: jax.Array
    b_enc: jax.Array
    b_dec: jax.Array
    threshold: jax.Array

    def __getitem__(self, key: str) -> jax.Array:
        """The array named ``key`` (one of W_enc, W_dec, b_enc, b_dec, threshold)."""
        if key not in _KEYS:
            raise KeyError(f"TrainingForm has no {key!r}; its arrays are {list(_KEYS)}")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        """The five keys in params.npz order."""
        return iter(_KEYS)

    def __len__(self) -> int:
        """Five arrays."""
        return len(_KEYS)


_TRANSCODER_KEYS = (*_KEYS, "W_skip")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class TranscoderForm(Mapping):
    """A transcoder's JumpReLU form in training units (docs/transcoders.md).

    ``π = x W_enc + b_enc`` (no pre-encoder bias: b_dec is the target's bias),
    ``f = relu(π)·1[π > threshold]``, ``ŷ = f W_dec + b_dec (+ x W_skip)``, with x = x_raw / C_in
    and ŷ = y_raw / C_out. ``W_skip`` is None for a transcoder without a skip connection; its
    keys are the five of ``TrainingForm`` plus ``W_skip`` when present.
    """

    W_enc: jax.Array
    W_dec: jax.Array
    b_enc: jax.Array
    b_dec: jax.Array
    threshold: jax.Array
    W_skip: jax.Array | None = None

    def __getitem__(self, key: str) -> jax.Array:
        """The array named ``key`` (W_enc, W_dec, b_enc, b_dec, threshold, W_skip if present)."""
        if key not in tuple(self):
            raise KeyError(f"TranscoderForm has no {key!r}; its arrays are {list(self)}")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        """The keys, W_skip last when present."""
        return iter(_TRANSCODER_KEYS if self.W_skip is not None else _KEYS)

    def __len__(self) -> int:
        """Five or six arrays."""
        return len(tuple(iter(self)))


def encode_transcoder_form(tf: TranscoderForm, x: jax.Array) -> jax.Array:
    """Latents of a transcoder form: relu(π)·1[π > threshold], π = x W_enc + b_enc."""
    if not isinstance(tf, TranscoderForm):
        raise TypeError(f"encode_transcoder_form takes a TranscoderForm, got {type(tf).__name__}")
    pi = jnp.matmul(x.astype(jnp.float32), tf.W_enc, precision=_HIGHEST) + tf.b_enc
    return jax.nn.relu(pi) * (pi > tf.threshold).astype(pi.dtype)


def decode_transcoder_form(tf: TranscoderForm, f: jax.Array, x: jax.Array) -> jax.Array:
    """A transcoder form's output f W_dec + b_dec (+ x W_skip), in training units."""
    if not isinstance(tf, TranscoderForm):
        raise TypeError(f"decode_transcoder_form takes a TranscoderForm, got {type(tf).__name__}")
    out = jnp.matmul(f, tf.W_dec, precision=_HIGHEST) + tf.b_dec
    if tf.W_skip is not None:
        out = out + jnp.matmul(x.astype(jnp.float32), tf.W_skip, precision=_HIGHEST)
    return out


def check_training_form(jr, caller: str) -> None:
    """Raises TypeError unless ``jr`` is a :class:`TrainingForm`, naming what was given."""
    if not isinstance(jr, TrainingForm):
        raise TypeError(
            f"{caller} takes the TrainingForm that sae.to_jumprelu returns (training units, "
            f"b_dec subtracted before encoding), got a {type(jr).__name__}. A released "
            "params.npz (raw units, b_dec folded into b_enc) is read with "
            "gemmascope.eval.metrics.encode_released / decode_released instead."
        )


def jumprelu_form(
    params: dict,
    w_enc: jax.Array,
    b_enc: jax.Array,
    theta: jax.Array,
    cfg: ml_collections.ConfigDict,
    fold_decoder_norms: bool = True,
) -> TrainingForm:
    """Assembles the training form from an architecture's effective encoder.

    Args:
      params: training-form params (supplies W_dec and b_dec).
      w_enc: effective encoder matrix (d, M).
      b_enc: effective encoder bias (M,).
      theta: per-latent threshold (M,), >= 0.
      cfg: the architecture config; when ``cfg.pre_encoder_bias`` is False the encoder saw x
        itself, so b_dec @ W_enc is added to b_enc to express it with a pre-encoder bias; when
        ``cfg.unit_norm_decoder`` is False the decoder rows' norms are folded into the encoder
        and the threshold (the form's rows are unit-norm either way).
      fold_decoder_norms: False keeps a free decoder's rows as trained: TopK's per-token
        selection of the k largest π_i is not invariant under π_i -> π_i·n_i, so its norms
        cannot move into the encoder (the rows are then not unit-norm).

    Returns:
      The float32 :class:`TrainingForm` described in the module docstring; for a transcoder
      (``cfg.d_out`` set) a :class:`TranscoderForm` (no pre-encoder bias, ``W_skip`` kept).
    """
    w_enc = jnp.asarray(w_enc, jnp.float32)
    w_dec = jnp.asarray(params["W_dec"], jnp.float32)
    b_enc = jnp.asarray(b_enc, jnp.float32)
    transcoder = cfg.get("d_out") is not None
    if not cfg.pre_encoder_bias and not transcoder:
        b_enc = b_enc + jnp.matmul(params["b_dec"], w_enc, precision=_HIGHEST)
    theta = jnp.broadcast_to(jnp.asarray(theta, jnp.float32), b_enc.shape)
    if not cfg.unit_norm_decoder and fold_decoder_norms:
        # A free decoder's row norms n_i move into the encoder: π_i·n_i > θ_i·n_i fires exactly
        # when π_i > θ_i, and (f_i·n_i)(d_i / n_i) = f_i d_i, so latents and reconstructions
        # are unchanged and the rows come out unit-norm, as the released format expects.
        norms = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(w_dec), axis=-1)), 1e-12)
        w_enc, b_enc, theta = w_enc * norms, b_enc * norms, theta * norms
        w_dec = w_dec / norms[:, None]
    if transcoder:
        skip = params.get("W_skip")
        return TranscoderForm(
            W_enc=w_enc,
            W_dec=w_dec,
            b_enc=b_enc,
            b_dec=jnp.asarray(params["b_dec"], jnp.float32),
            threshold=theta,
            W_skip=None if skip is None else jnp.asarray(skip, jnp.float32),
        )
    return TrainingForm(
        W_enc=w_enc,
        W_dec=w_dec,
        b_enc=b_enc,
        b_dec=jnp.asarray(params["b_dec"], jnp.float32),
        threshold=theta,
    )


def encode_training_form(jr: TrainingForm, x: jax.Array) -> jax.Array:
    """Latents of the training form, relu(π)·1[π > threshold] with π = (x − b_dec) W_enc + b_enc.

    Raises:
      TypeError: ``jr`` is not a TrainingForm (e.g. a released params.npz).
    """
    check_training_form(jr, "encode_training_form")
    pi = jnp.matmul(x.astype(jnp.float32) - jr.b_dec, jr.W_enc, precision=_HIGHEST) + jr.b_enc
    return jax.nn.relu(pi) * (pi > jr.threshold).astype(pi.dtype)


def decode_training_form(jr: TrainingForm, f: jax.Array) -> jax.Array:
    """Reconstruction of the training form, f W_dec + b_dec, in training units.

    Raises:
      TypeError: ``jr`` is not a TrainingForm (e.g. a released params.npz).
    """
    check_training_form(jr, "decode_training_form")
    return jnp.matmul(f, jr.W_dec, precision=_HIGHEST) + jr.b_dec
