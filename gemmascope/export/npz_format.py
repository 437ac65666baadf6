"""Gemma Scope's released ``params.npz`` format: write, read and check it.

A released Gemma Scope SAE is one uncompressed ``.npz`` with five float32 arrays
(docs/recipe.md#params-npz):

====================  ============  ===================================
key                   shape         meaning (raw, unnormalised units)
====================  ============  ===================================
``W_enc``             (d_in, M)     encoder
``W_dec``             (M, d_in)     decoder, one unit-norm row per latent
``b_enc``             (M,)          encoder bias (b_dec already folded in)
``b_dec``             (d_in,)       decoder bias
``threshold``         (M,)          JumpReLU threshold
====================  ============  ===================================

Inference is ``f = relu(x @ W_enc + b_enc) * (x @ W_enc + b_enc > threshold)`` and
``x_hat = f @ W_dec + b_dec`` (no normalisation, no pre-encoder bias).

A transcoder (docs/transcoders.md; ``d_out`` given) has ``W_dec`` (M, d_out) and ``b_dec``
(d_out,), and a skip-transcoder a sixth array ``W_skip`` (d_in, d_out): ``y_hat = f @ W_dec +
b_dec + x @ W_skip``.

Synopsis::

    save_npz("params.npz", {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec,
                            "threshold": threshold})
    params = load_npz("params.npz", d_in=2304)   # every key and shape checked
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from gemmascope import files
from gemmascope.model import sites as model_sites
from gemmascope.sae import inference

#: The five arrays of a Gemma Scope ``params.npz``, in file order.
NPZ_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
#: The skip-transcoder's sixth array (only with ``d_out``).
SKIP_KEY = "W_skip"

# SAELens tolerates these spellings in third-party files; we map them back
# (docs/recipe.md#params-npz).
_ALIASES = {"w_enc": "W_enc", "w_dec": "W_dec"}


def check_params(
    params: Mapping[str, np.ndarray],
    *,
    d_in: int | None = None,
    width: int | None = None,
    source: str = "params",
    d_out: int | None = None,
) -> tuple[int, int]:
    """Checks that ``params`` has the five Gemma Scope arrays with consistent shapes.

    Args:
      params: mapping with the keys of ``NPZ_KEYS`` (extra keys are an error).
      d_in: expected input width (the site's dimension), or None to accept any.
      width: expected number of latents M, or None to accept any.
      source: what to call ``params`` in error messages (e.g. a file path).
      d_out: a transcoder's target width: ``W_dec`` is (M, d_out), ``b_dec`` (d_out,) and
        ``W_skip`` (d_in, d_out) may be present; None for an SAE (``W_dec`` (M, d_in)).

    Returns:
      ``(d_in, width)`` read from the shapes.

    Raises:
      ValueError: a key is missing or unexpected, a shape is wrong, or a value is not finite.
    """
    missing = [k for k in NPZ_KEYS if k not in params]
    if missing:
        raise ValueError(
            f"{source}: missing key(s) {missing}; a Gemma Scope params.npz holds exactly "
            f"{list(NPZ_KEYS)} (got {sorted(params)})"
        )
    valid = (*NPZ_KEYS, SKIP_KEY) if d_out is not None else NPZ_KEYS
    extra = sorted(set(params) - set(valid))
    if extra:
        raise ValueError(f"{source}: unexpected key(s) {extra}; valid keys are {list(valid)}")
    w_enc = np.shape(params["W_enc"])
    if len(w_enc) != 2:
        raise ValueError(f"{source}: W_enc must be 2-D (d_in, M), got shape {w_enc}")
    got_d, got_m = w_enc
    out = got_d if d_out is None else int(d_out)
    expected = {
        "W_enc": (got_d, got_m),
        "W_dec": (got_m, out),
        "b_enc": (got_m,),
        "b_dec": (out,),
        "threshold": (got_m,),
    }
    if SKIP_KEY in params:
        expected[SKIP_KEY] = (got_d, out)
    for key, shape in expected.items():
        if tuple(np.shape(params[key])) != shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(np.shape(params[key]))}, expected {shape} "
                f"(from W_enc {w_enc}: d_in={got_d}, M={got_m})"
            )
    if d_in is not None and got_d != d_in:
        raise ValueError(f"{source}: d_in is {got_d} (W_enc {w_enc}) but the site needs {d_in}")
    if width is not None and got_m != width:
        raise ValueError(f"{source}: width is {got_m} (W_enc {w_enc}) but {width} was expected")
    for key in expected:
        if not np.all(np.isfinite(params[key])):
            raise ValueError(f"{source}: {key} contains NaN or inf values")
    return int(got_d), int(got_m)


def save_npz(
    path: str | os.PathLike, jumprelu_params: Mapping[str, np.ndarray], d_out: int | None = None
) -> None:
    """Writes a Gemma Scope ``params.npz`` (float32, uncompressed) atomically.

    The file is written atomically (``files.write_bytes``: a temporary sibling moved into place,
    or one object upload on gs://), so a crash never leaves a truncated ``params.npz``.

    Args:
      path: destination file, a local path or a gs:// URL.
      jumprelu_params: the five arrays of ``NPZ_KEYS`` in raw (folded) units; any array type
        convertible by ``np.asarray`` (jax arrays included); a skip-transcoder's ``W_skip``.
      d_out: a transcoder's target width (``check_params``), None for an SAE.

    Raises:
      TypeError: ``jumprelu_params`` is a ``sae.TrainingForm`` (training units: fold it first).
      ValueError: a key is missing or extra, or a shape is inconsistent.
    """
    if isinstance(jumprelu_params, (inference.TrainingForm, inference.TranscoderForm)):
        raise TypeError(
            f"save_npz({os.fspath(path)!r}): a params.npz holds released (raw-unit, b_dec "
            "folded) params, got a TrainingForm; write export.fold(form, norm_scale) instead"
        )
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in jumprelu_params.items()}
    check_params(arrays, source=os.fspath(path), d_out=d_out)
    keys = [*NPZ_KEYS, SKIP_KEY] if SKIP_KEY in arrays else NPZ_KEYS
    files.save_npz(os.fspath(path), {k: arrays[k] for k in keys})


def load_npz(
    path: str | os.PathLike,
    *,
    d_in: int | None = None,
    width: int | None = None,
    model_cfg=None,
    site: str | None = None,
    d_out: int | None = None,
) -> dict[str, np.ndarray]:
    """Reads a Gemma Scope ``params.npz`` (ours or a released one) and checks it.

    Args:
      path: the ``.npz`` file.
      d_in: expected input width; alternatively give ``model_cfg`` and ``site`` and it is
        computed with ``gemmascope.model.sites.dim``.
      width: expected number of latents, or None.
      model_cfg: a ``model.GemmaConfig`` (Gemma 2 or 3) to check against (with ``site``).
      site: a site name such as ``"resid_post/12"`` (with ``model_cfg``).
      d_out: a transcoder's target width (``check_params``), None for an SAE.

    Returns:
      dict of the five float32 arrays of ``NPZ_KEYS``. ``w_enc``/``w_dec`` spellings are
      renamed; a ``scaling_factor`` of all ones (SAELens) is dropped.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not an npz, a pickled object inside, a missing key or a wrong shape.
    """
    source = os.fspath(path)
    if not files.exists(source):
        raise FileNotFoundError(f"{source}: no such params.npz")
    if model_cfg is not None or site is not None:
        if model_cfg is None or site is None:
            raise ValueError("load_npz: give both model_cfg and site, or neither")
        site_dim = int(model_sites.dim(model_cfg, site))
        if d_in is not None and d_in != site_dim:
            raise ValueError(f"load_npz: d_in={d_in} contradicts site {site} of width {site_dim}")
        d_in = site_dim
    try:
        npz = np.load(io.BytesIO(files.read_bytes(source)), allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{source}: not a readable .npz file ({err})") from err
    params = {}
    with npz:
        for raw_key in npz.files:
            key = _ALIASES.get(raw_key, raw_key)
            try:
                value = npz[raw_key]
            except ValueError as err:  # numpy refuses object arrays when allow_pickle=False
                raise ValueError(
                    f"{source}: array {raw_key!r} is a pickled object, which is refused for "
                    f"safety; params.npz must hold plain float arrays ({err})"
                ) from err
            if value.dtype.kind not in "fiu":
                raise ValueError(
                    f"{source}: array {raw_key!r} has dtype {value.dtype}; expected float32"
                )
            params[key] = value.astype(np.float32)
    scaling = params.pop("scaling_factor", None)
    if scaling is not None and not np.allclose(scaling, 1.0):
        raise ValueError(
            f"{source}: scaling_factor is not all ones; fold it into the weights before loading"
        )
    check_params(params, d_in=d_in, width=width, source=source, d_out=d_out)
    return params
