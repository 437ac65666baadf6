"""The device mesh and the logical-axis vocabulary that every part of gemmascope shards by.

Two mesh axes: ``data`` (the token rows of a batch) and ``model`` (what one model splits: the
LM's heads, KV heads, MLP units and vocabulary; an SAE's latents). Arrays name their dimensions
with *logical* axes, and one table of rules, ``RULES``, maps logical axes to mesh axes for the SAE
trainer, the language model (capture, streaming, evaluation) and the cost model alike:

=============  =========  =============================================================
logical axis   mesh axis  what it is
=============  =========  =============================================================
``batch``      data       token rows: of an SAE batch (B, d_in), of the LM's token batches
``seq``        (none)     positions within a sequence
``sweep``      (none)     the leading axis over a job's sweep members: every device trains
                          every member
``d_sae``      model      an SAE's latents (W_enc columns, W_dec rows, b_enc, thresholds)
``d_in``       (none)     the activation dimension an SAE reads
``vocab``      model      the LM's vocabulary (embedding rows, logits)
``heads``      model      query heads
``kv_heads``   model      key/value heads
``mlp``        model      MLP hidden units
``embed``      (none)     the LM's residual stream
``head_dim``   (none)     one head's dimension
=============  =========  =============================================================

Rules follow flax's ``logical_axis_rules`` convention (``flax.linen.logical_to_mesh_axes``): an
ordered sequence of ``(logical axis, mesh axis or None)`` pairs, applied in order; a rule assigns
its mesh axis to the array dimension of that logical name if the dimension is still unassigned
and no other dimension of the array uses that mesh axis, so a later rule for the same logical axis
is a fallback. One addition: given the array's shape, a rule whose mesh axis does not divide the
dimension is skipped (e.g. two KV heads on a model axis of 4 stay replicated: exact, only their
memory is not divided). Mesh axes are single names or None (no tuples).

Meshes are built with ``jax.make_mesh`` (a topology-aware device order on TPU and GPU) with
``Auto`` axes, i.e. shardings are propagated by the compiler, not part of the array types.

Synopsis:
    sizes = axis_sizes([("data", -1), ("model", 2)], n_devices=8)   # {"data": 4, "model": 2}
    mesh = make_mesh([("data", -1), ("model", 2)])                    # every device
    mesh = make_mesh([("data", -1), ("model", 4)], jax.local_devices(), field="cache.mesh")
    spec = logical_to_spec(("sweep", "d_sae"), dict(mesh.shape), shape=(6, 4096))
    sharding = named_sharding(mesh, ("batch", "d_in"), shape=(4096, 2304))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "model")

# The one table of logical-axis -> mesh-axis rules (module docstring).
RULES: tuple[tuple[str, str | None], ...] = (
    # Token batches and SAE training.
    ("batch", "data"),
    ("seq", None),
    ("sweep", None),
    ("d_sae", "model"),
    ("d_in", None),
    # The language model (Megatron-style: heads, MLP units and vocabulary split over "model").
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("head_dim", None),
)

Rules = Sequence[Sequence]
MeshSpec = Sequence[Sequence] | Mapping[str, int]


def _pairs(spec: MeshSpec) -> list[tuple[str, int]]:
    items = spec.items() if isinstance(spec, Mapping) else spec
    return [(str(name), size) for name, size in items]


def axis_sizes(spec: MeshSpec, n_devices: int, field: str = "mesh") -> dict[str, int]:
    """Resolves a (data, model) mesh spec against a device count, without devices.

    Args:
        spec: (axis name, size) pairs or a mapping, naming exactly the axes ``data`` and
            ``model``; one size may be -1 (all the remaining devices).
        n_devices: the devices the mesh lays out.
        field: the config field to name in errors.

    Returns:
        {axis name: size} in the order of ``spec``.

    Raises:
        ValueError: other axis names, a size that is not a positive integer or -1, two -1s,
            or sizes that do not multiply to ``n_devices``.
    """
    pairs = _pairs(spec)
    names = [name for name, _ in pairs]
    if sorted(names) != sorted(AXES):
        raise ValueError(f"{field} must name the axes 'data' and 'model', got {names}")
    for name, size in pairs:
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(
                f"{field}: the size of {name!r} must be an int >= 1 or -1, got {size!r}"
            )
    sizes = [size for _, size in pairs]
    if sizes.count(-1) > 1:
        raise ValueError(f"{field} may have at most one size -1, got {pairs}")
    known = math.prod(size for size in sizes if size != -1)
    if n_devices % known:
        raise ValueError(f"{field} {pairs} does not divide the {n_devices} available devices")
    resolved = {name: n_devices // known if size == -1 else size for name, size in pairs}
    if math.prod(resolved.values()) != n_devices:
        raise ValueError(
            f"{field} {pairs} has {math.prod(resolved.values())} devices but {n_devices} are "
            "available; use -1 for one axis to take the rest"
        )
    return resolved


def make_mesh(
    spec: MeshSpec, devices: Sequence[jax.Device] | None = None, field: str = "mesh"
) -> Mesh:
    """The (data, model) mesh of ``spec`` over ``devices`` (default: every device of every process).

    Built by ``jax.make_mesh`` with ``Auto`` axes (the compiler propagates shardings).

    Raises:
        ValueError: as ``axis_sizes``, naming ``field``.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = axis_sizes(spec, len(devices), field)
    return jax.make_mesh(
        tuple(sizes.values()),
        tuple(sizes),
        axis_types=(AxisType.Auto,) * len(sizes),
        devices=devices,
    )


def logical_to_spec(
    logical_axes: Sequence[str | None],
    mesh_shape: Mapping[str, int],
    rules: Rules = RULES,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Maps an array's logical axes to a PartitionSpec by ``rules`` (module docstring).

    Args:
        logical_axes: one logical name (or None) per dimension.
        mesh_shape: {mesh axis: size} of the mesh the array lives on.
        rules: ordered (logical axis, mesh axis or None) pairs.
        shape: the array's shape; when given, a rule whose mesh axis does not divide its
            dimension is skipped (the dimension stays replicated unless a later rule fits).

    Raises:
        ValueError: a logical name appears twice, or a rule used by this array names a mesh
            axis the mesh does not have.
    """
    logical_axes = tuple(logical_axes)
    named = [axis for axis in logical_axes if axis is not None]
    if len(set(named)) != len(named):
        raise ValueError(f"logical axes {logical_axes} name one axis twice")
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"shape {tuple(shape)} has not one dimension per axis of {logical_axes}")
    unassigned = object()
    result: list = [unassigned if axis is not None else None for axis in logical_axes]
    for logical, mesh_axis in rules:
        if logical not in named:
            continue
        if mesh_axis is not None and mesh_axis not in mesh_shape:
            raise ValueError(
                f"sharding rule ({logical!r}, {mesh_axis!r}) names mesh axis {mesh_axis!r}, which "
                f"the mesh does not have; its axes are {list(mesh_shape)}"
            )
        dim = logical_axes.index(logical)
        if result[dim] is not unassigned or (mesh_axis is not None and mesh_axis in result):
            continue
        if mesh_axis is not None and shape is not None and shape[dim] % mesh_shape[mesh_axis]:
            continue
        result[dim] = mesh_axis
    return PartitionSpec(*(None if entry is unassigned else entry for entry in result))


def named_sharding(
    mesh: Mesh,
    logical_axes: Sequence[str | None],
    rules: Rules = RULES,
    shape: Sequence[int] | None = None,
) -> NamedSharding:
    """The NamedSharding of an array with ``logical_axes`` on ``mesh`` (``logical_to_spec``)."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, dict(mesh.shape), rules, shape))


def batch_for_mesh(batch_size: int, mesh: Mesh) -> int:
    """``batch_size`` rounded up to a multiple of the mesh's ``data`` axis.

    Every batch then splits evenly over it and has one compiled shape.
    """
    data_shards = mesh.shape["data"]
    return -(-batch_size // data_shards) * data_shards
