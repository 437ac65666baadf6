"""The (data, model) device mesh and the shardings of a stacked sweep's state and batches.

Sharding is declared once, as logical axis rules in the job config; this module names the logical
axes of every array and maps them through the rules (docs/recipe.md#sharding):

- batches (B, d_in) are ("batch", "d_in"): rows split over `data`;
- SAE parameters carry a leading "sweep" axis; their latent axis is "d_sae", split over `model`
  (W_enc columns, W_dec rows, b_enc, thresholds and any per-latent buffer), so each device holds
  only its slice of every wide SAE; b_dec and other d_in-sized arrays are replicated.

Synopsis:
    mesh = make_mesh([("data", -1), ("model", 1)])
    spec = logical_to_spec(("sweep", "d_sae"), rules)          # PartitionSpec(None, "model")
    shardings = stacked_shardings(abstract_params, mesh, rules, width=4096, d_in=2304)
    check_divisible(mesh, width=4096, batch_size=4096)     # ValueError naming the field
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def make_mesh(mesh_spec: Sequence[Sequence], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a Mesh from (axis name, size) pairs; one size may be -1 (all remaining devices).

    Args:
        mesh_spec: e.g. [("data", -1), ("model", 1)]; must name the axes `data` and `model`.
        devices: the devices to lay out (default: every device of every process).

    Raises:
        ValueError: the sizes do not multiply to the device count, or the axes are not
            `data` and `model`.
    """
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(str(name) for name, _ in mesh_spec)
    sizes = [int(size) for _, size in mesh_spec]
    if sorted(names) != ["data", "model"]:
        raise ValueError(f"job_cfg.mesh must name the axes 'data' and 'model', got {names}")
    if sizes.count(-1) > 1:
        raise ValueError(f"job_cfg.mesh may have at most one size -1, got {list(mesh_spec)}")
    known = math.prod(s for s in sizes if s != -1)
    if known <= 0 or len(devices) % known:
        raise ValueError(
            f"job_cfg.mesh {list(mesh_spec)} does not divide the {len(devices)} available devices"
        )
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"job_cfg.mesh {list(mesh_spec)} has {math.prod(sizes)} devices but "
            f"{len(devices)} are available; use -1 for one axis to take the rest"
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), names)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Sequence[Sequence]) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec through `rules` (first matching rule wins).

    A logical axis without a rule, or whose rule maps to None, is replicated. A mesh axis is used
    at most once per array (a later logical axis that maps to a used mesh axis is replicated).
    """
    table: dict[str, str | None] = {}
    for logical, mesh_axis in rules:
        table.setdefault(logical, mesh_axis)
    used, spec = set(), []
    for axis in logical_axes:
        mesh_axis = table.get(axis) if axis is not None else None
        if mesh_axis is not None and mesh_axis in used:
            mesh_axis = None
        if mesh_axis is not None:
            used.add(mesh_axis)
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


def param_logical_axes(name: str | None, shape: tuple[int, ...], width: int, d_in: int) -> tuple:
    """Logical axes of one stacked parameter (or optimizer slot) of shape (S, ...).

    Known names (KNOWN_PARAM_AXES) are used when the shape agrees; otherwise every axis of size
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
    return ("sweep", *("d_sae" if size == width else None for size in inner))


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
        return NamedSharding(mesh, logical_to_spec(axes, rules))

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
