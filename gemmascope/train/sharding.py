"""The logical axes of a stacked sweep's state and batches, and their shardings.

The mesh and the logical-axis -> mesh-axis mapping are `gemmascope.mesh`'s (the one vocabulary of
the SAE trainer, the LM and the plan); the rules are the job config's `logical_axis_rules`
(default `gemmascope.mesh.RULES`). This module names the logical axes of every array of a sweep
(docs/recipe.md#sharding):

- batches (B, d_in) are ("batch", "d_in"): rows split over `data`;
- SAE parameters carry a leading "sweep" axis; their latent axis is "d_sae", split over `model`
  (W_enc columns, W_dec rows, b_enc, thresholds and any per-latent buffer), so each device holds
  only its slice of every wide SAE; b_dec and other d_in-sized arrays are replicated.

Synopsis:
    mesh = gemmascope.mesh.make_mesh([("data", -1), ("model", 1)])
    shardings = stacked_shardings(abstract_params, mesh, rules, width=4096, d_in=2304)
    check_divisible(mesh, width=4096, batch_size=4096)     # ValueError naming the field
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from gemmascope import mesh as mesh_lib

# Logical axes of the parameters Gemma Scope's architectures use, without the leading sweep axis.
# Parameters not listed here get theirs from their shape (see `param_logical_axes`).
KNOWN_PARAM_AXES = {
    "W_enc": ("d_in", "d_sae"),
    "W_dec": ("d_sae", "d_in"),
    "W_gate": ("d_in", "d_sae"),
    "b_enc": ("d_sae",),
    "b_gate": ("d_sae",),
    "b_mag": ("d_sae",),
    "r_mag": ("d_sae",),
    "threshold": ("d_sae",),
    "log_threshold": ("d_sae",),
    "b_dec": ("d_in",),
}


def param_logical_axes(name: str | None, shape: tuple[int, ...], width: int, d_in: int) -> tuple:
    """Logical axes of one stacked parameter (or optimizer slot) of shape (S, ...).

    Known names (KNOWN_PARAM_AXES) are used when the shape agrees; otherwise the first axis of size
    `width` is "d_sae" and every other axis is replicated. Layout only: a wrong guess costs memory
    or communication, never correctness.
    """
    if len(shape) == 0:
        return ()
    inner = shape[1:]
    known = KNOWN_PARAM_AXES.get(name or "")
    if known is not None and len(known) == len(inner):
        sizes = {"d_in": d_in, "d_sae": width}
        if all(sizes[axis] == size for axis, size in zip(known, inner, strict=True)):
            return ("sweep", *known)
    axes: list[str | None] = [None] * len(inner)
    if width in inner:  # a logical axis names one dimension of an array
        axes[inner.index(width)] = "d_sae"
    return ("sweep", *axes)


def _leaf_name(path) -> str | None:
    """The last dict key on a pytree path: the parameter name an optimizer slot belongs to."""
    for entry in reversed(path):
        if isinstance(entry, jax.tree_util.DictKey):
            return str(entry.key)
    return None


def stacked_shardings(abstract_tree, mesh: Mesh, rules, width: int, d_in: int):
    """NamedShardings for a pytree of stacked (leading sweep axis) params or optimizer state."""

    def one(path, leaf):
        axes = param_logical_axes(_leaf_name(path), tuple(leaf.shape), width, d_in)
        return mesh_lib.named_sharding(mesh, axes, rules, leaf.shape)

    return jax.tree_util.tree_map_with_path(one, abstract_tree)


def check_divisible(mesh: Mesh, width: int, batch_size: int) -> None:
    """Raises a ValueError when the latent axis or the batch does not split over the mesh."""
    model, data = mesh.shape["model"], mesh.shape["data"]
    if width % model:
        raise ValueError(
            f"job_cfg.width={width} is not divisible by the mesh's model axis ({model} devices); "
            f"use a width that is a multiple of {model} or a smaller model axis"
        )
    if batch_size % data:
        raise ValueError(
            f"job_cfg.batch_size={batch_size} is not divisible by the mesh's data axis "
            f"({data} devices); use a multiple of {data}"
        )
