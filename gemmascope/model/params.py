"""Gemma parameters: the pytree layout, its mapping to HF tensors, init and sharding.

Synopsis:
    params = init_params(cfg, key, dtype=jnp.float32)            # random, HF's init scheme
    params = init_params(cfg, key, mesh=mesh)                     # materialised already sharded
    shardings = param_shardings(cfg, mesh, rules=DEFAULT_RULES)   # pytree of NamedSharding
    for spec in param_specs(cfg): spec.path, spec.hf_name, spec.shape, spec.axes

The params are a plain pytree of arrays (axis letters as in ``transformer.py``)::

    {"embed": (V, D), "final_norm": (D,),
     "layers": [{"input_norm": (D,), "q": (D, N, H), "k": (D, K, H), "v": (D, K, H),
                 "o": (N, H, D), "post_attn_norm": (D,), "pre_ffw_norm": (D,),
                 "gate": (D, M), "up": (D, M), "down": (M, D), "post_ffw_norm": (D,),
                 "q_norm": (H,), "k_norm": (H,)}, ...]}        # q_norm, k_norm: QK-norm only

Norm weights are stored as HF stores them: the *offset* w of the gain (1 + w). Every parameter has
one ``ParamSpec`` saying where it lives in the pytree and in an HF checkpoint, how to convert
between the two layouts, and its logical axes; loading, saving, init and sharding all read the same
table, so they cannot disagree.

Sharding: logical axes map to mesh axes through ``rules`` by ``gemmascope.mesh.logical_to_spec``,
the one mapping of every array in gemmascope (ordered ``(logical, mesh_axis)`` pairs, the flax
``logical_axis_rules`` convention; the default ``gemmascope.mesh.RULES``). For the LM it is
Megatron-style: heads, KV heads, the MLP hidden axis and the vocabulary split over ``model``;
everything else replicated. A dimension that the mesh axis does not divide is replicated rather
than padded (e.g. two KV heads on 4 devices): the forward pass stays exact, only that parameter's
memory is not divided.
``replicated_params(cfg, model_parallel)`` lists such fallbacks and ``bytes_per_device`` counts
them, without devices (for plan mode).

The LM's (data, model) mesh over this process's devices, used by activation capture, streaming
and evaluation, is ``lm_mesh(model_parallel)``:

    mesh = lm_mesh(4)                                     # 8 local devices -> (2, 4)
    cfg, params = model.load_hf(path, mesh=mesh)          # each device holds its shards only
    params = place_params(cfg, params, mesh)              # or: reshard params from anywhere
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gemmascope import mesh as mesh_lib
from gemmascope.model.config import GemmaConfig

Params = dict[str, Any]
Rules = mesh_lib.Rules

# The logical-axis rules of every array, the LM's among them (gemmascope.mesh.RULES).
DEFAULT_RULES = mesh_lib.RULES

_NORMS = ("input_norm", "post_attn_norm", "pre_ffw_norm", "post_ffw_norm")
_HF_NORM_NAMES = {
    "input_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Where one parameter lives, in our pytree and in an HF checkpoint.

    Attributes:
        path: Keys into the params pytree, e.g. ``("layers", 3, "q")``.
        hf_name: The tensor name in HF safetensors, e.g. ``model.layers.3.self_attn.q_proj.weight``.
        shape: Our shape.
        hf_shape: The checkpoint's shape (torch ``nn.Linear`` stores (out, in)).
        axes: Logical axis names of our shape, for sharding.
        from_hf: Converts a checkpoint array (numpy) to our layout.
        to_hf: Converts our array (numpy) to the checkpoint layout.
        is_norm: True for RMSNorm gain offsets (initialised to zero).
    """

    path: tuple[str | int, ...]
    hf_name: str
    shape: tuple[int, ...]
    hf_shape: tuple[int, ...]
    axes: tuple[str, ...]
    from_hf: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    is_norm: bool = False


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)


def _in_proj_specs(
    cfg: GemmaConfig, layer: int, key: str, hf: str, heads: int, head_axis: str
) -> ParamSpec:
    """q/k/v: HF (heads*H, D) with head-major rows <-> ours (D, heads, H)."""
    d, h = cfg.hidden_size, cfg.head_dim
    return ParamSpec(
        path=("layers", layer, key),
        hf_name=f"model.layers.{layer}.self_attn.{hf}.weight",
        shape=(d, heads, h),
        hf_shape=(heads * h, d),
        axes=("embed", head_axis, "head_dim"),
        from_hf=lambda x: np.ascontiguousarray(x.reshape(heads, h, d).transpose(2, 0, 1)),
        to_hf=lambda x: np.ascontiguousarray(x.transpose(1, 2, 0).reshape(heads * h, d)),
    )


def _layer_specs(cfg: GemmaConfig, layer: int) -> Iterator[ParamSpec]:
    d, m, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    n, k = cfg.num_attention_heads, cfg.num_key_value_heads
    prefix = f"model.layers.{layer}"
    yield _in_proj_specs(cfg, layer, "q", "q_proj", n, "heads")
    yield _in_proj_specs(cfg, layer, "k", "k_proj", k, "kv_heads")
    yield _in_proj_specs(cfg, layer, "v", "v_proj", k, "kv_heads")
    yield ParamSpec(
        path=("layers", layer, "o"),
        hf_name=f"{prefix}.self_attn.o_proj.weight",
        shape=(n, h, d),
        hf_shape=(d, n * h),
        axes=("heads", "head_dim", "embed"),
        from_hf=lambda x: np.ascontiguousarray(x.T.reshape(n, h, d)),
        to_hf=lambda x: np.ascontiguousarray(x.reshape(n * h, d).T),
    )
    for key, axes in (("gate", ("embed", "mlp")), ("up", ("embed", "mlp"))):
        yield ParamSpec(
            path=("layers", layer, key),
            hf_name=f"{prefix}.mlp.{key}_proj.weight",
            shape=(d, m),
            hf_shape=(m, d),
            axes=axes,
            from_hf=_transpose,
            to_hf=_transpose,
        )
    yield ParamSpec(
        path=("layers", layer, "down"),
        hf_name=f"{prefix}.mlp.down_proj.weight",
        shape=(m, d),
        hf_shape=(d, m),
        axes=("mlp", "embed"),
        from_hf=_transpose,
        to_hf=_transpose,
    )
    for key in _NORMS:
        yield ParamSpec(
            path=("layers", layer, key),
            hf_name=f"{prefix}.{_HF_NORM_NAMES[key]}.weight",
            shape=(d,),
            hf_shape=(d,),
            axes=("embed",),
            from_hf=_identity,
            to_hf=_identity,
            is_norm=True,
        )
    if cfg.qk_norm:  # Gemma 3: one (1 + w) gain over head_dim, shared by every q (k) head.
        for key in ("q_norm", "k_norm"):
            yield ParamSpec(
                path=("layers", layer, key),
                hf_name=f"{prefix}.self_attn.{key}.weight",
                shape=(h,),
                hf_shape=(h,),
                axes=("head_dim",),
                from_hf=_identity,
                to_hf=_identity,
                is_norm=True,
            )


def param_specs(cfg: GemmaConfig) -> list[ParamSpec]:
    """Every parameter of the model, in checkpoint-friendly order (embedding first)."""
    d = cfg.hidden_size
    specs = [
        ParamSpec(
            path=("embed",),
            hf_name="model.embed_tokens.weight",
            shape=(cfg.vocab_size, d),
            hf_shape=(cfg.vocab_size, d),
            axes=("vocab", "embed"),
            from_hf=_identity,
            to_hf=_identity,
        )
    ]
    for layer in range(cfg.num_hidden_layers):
        specs.extend(_layer_specs(cfg, layer))
    specs.append(
        ParamSpec(
            path=("final_norm",),
            hf_name="model.norm.weight",
            shape=(d,),
            hf_shape=(d,),
            axes=("embed",),
            from_hf=_identity,
            to_hf=_identity,
            is_norm=True,
        )
    )
    return specs


def build_tree(cfg: GemmaConfig, leaf: Callable[[ParamSpec], Any]) -> Params:
    """Builds the params pytree structure with ``leaf(spec)`` at every parameter."""
    tree: Params = {"layers": [{} for _ in range(cfg.num_hidden_layers)]}
    for spec in param_specs(cfg):
        if spec.path[0] == "layers":
            _, layer, key = spec.path
            tree["layers"][layer][key] = leaf(spec)
        else:
            tree[spec.path[0]] = leaf(spec)
    return tree


def get_leaf(params: Params, path: tuple[str | int, ...]) -> Any:
    """The array at ``path`` in a params pytree."""
    node = params
    for key in path:
        node = node[key]
    return node


# ---------------------------------------------------------------------------- sharding


def partition_spec(
    shape: Sequence[int], axes: Sequence[str], mesh: Mesh, rules: Rules | None = None
) -> PartitionSpec:
    """The PartitionSpec for an array with logical ``axes``, replicating undivisible dims.

    The mapping is ``gemmascope.mesh.logical_to_spec`` (the one for every array of gemmascope).

    Raises:
        ValueError: If a rule names a mesh axis the mesh does not have.
    """
    return mesh_lib.logical_to_spec(axes, dict(mesh.shape), _rules(rules), shape)


def _rules(rules: Rules | None) -> Rules:
    return DEFAULT_RULES if rules is None else rules


def param_shardings(cfg: GemmaConfig, mesh: Mesh, rules: Rules | None = None) -> Params:
    """A pytree of ``NamedSharding`` matching the params, from logical-axis ``rules``."""
    return build_tree(
        cfg,
        lambda spec: NamedSharding(mesh, partition_spec(spec.shape, spec.axes, mesh, rules)),
    )


def check_model_parallel(model_parallel: Any, field: str = "model_parallel") -> int:
    """``model_parallel`` as an int, or ValueError naming ``field`` when it is not >= 1."""
    if isinstance(model_parallel, bool) or not isinstance(model_parallel, (int, np.integer)):
        raise ValueError(f"{field} must be a positive integer, got {model_parallel!r}")
    if model_parallel < 1:
        raise ValueError(f"{field} must be a positive integer, got {model_parallel!r}")
    return int(model_parallel)


def lm_mesh(
    model_parallel: int = 1,
    devices: Sequence[jax.Device] | None = None,
    field: str = "model_parallel",
) -> Mesh:
    """The (data, model) mesh over this process's devices for running the LM.

    The params shard over ``model`` (``param_shardings``), token rows over ``data``. Each
    process builds its own mesh from its local devices, so several processes run independent
    model copies on their own sequences. Built by ``gemmascope.mesh.make_mesh``.

    Args:
        model_parallel: Devices on the ``model`` axis; ``data`` gets the rest.
        devices: Default ``jax.local_devices()``.
        field: The config field to name in errors, e.g. ``"cache.model_parallel"``.

    Raises:
        ValueError: ``model_parallel`` is not a positive integer or does not divide the number
            of devices (the message lists the valid values).
    """
    model_parallel = check_model_parallel(model_parallel, field)
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) % model_parallel:
        valid = [m for m in range(1, len(devices) + 1) if len(devices) % m == 0]
        raise ValueError(
            f"{field}={model_parallel} does not divide the {len(devices)} local devices of "
            f"this process; valid values: {valid}"
        )
    return mesh_lib.make_mesh([("data", -1), ("model", model_parallel)], devices, field)


def replicated_params(
    cfg: GemmaConfig, model_parallel: int, rules: Rules | None = None
) -> list[tuple[str, str, int]]:
    """Parameters whose sharded dimension ``model_parallel`` does not divide (so replicated).

    Returns:
        One ``(param path, logical axis, size)`` per such parameter, e.g.
        ``("layers.0.k", "kv_heads", 2)`` for two KV heads on a model axis of 4.
    """
    model_parallel = check_model_parallel(model_parallel)
    mesh_shape = {"data": 1, "model": model_parallel}
    found = []
    for spec in param_specs(cfg):
        placed = mesh_lib.logical_to_spec(spec.axes, mesh_shape, _rules(rules), spec.shape)
        if "model" in placed:
            continue  # split over the model axis
        intended = mesh_lib.logical_to_spec(spec.axes, mesh_shape, _rules(rules))
        for size, axis, mesh_axis in zip(spec.shape, spec.axes, intended, strict=True):
            if mesh_axis == "model":  # meant to be split, but not divisible
                found.append((".".join(str(k) for k in spec.path), axis, size))
                break
    return found


def bytes_per_device(
    cfg: GemmaConfig, model_parallel: int, dtype: Any, rules: Rules | None = None
) -> int:
    """Parameter bytes each device holds on a model axis of ``model_parallel`` (no devices needed).

    Counts exactly what ``param_shardings`` does: a dimension split over ``model`` divides that
    parameter's bytes by ``model_parallel``; replicated parameters count whole.
    """
    model_parallel = check_model_parallel(model_parallel)
    mesh_shape = {"data": 1, "model": model_parallel}
    itemsize = jnp.dtype(dtype).itemsize
    total = 0
    for spec in param_specs(cfg):
        n = int(np.prod(spec.shape)) * itemsize
        placed = mesh_lib.logical_to_spec(spec.axes, mesh_shape, _rules(rules), spec.shape)
        total += n // model_parallel if "model" in placed else n
    return total


def place_params(cfg: GemmaConfig, params: Params, mesh: Mesh, rules: Rules | None = None):
    """``params`` laid out on ``mesh`` by ``param_shardings`` (no copy where they already are).

    Logs which parameters stay replicated because the model axis does not divide them.
    """
    model_parallel = mesh.shape.get("model", 1)
    replicated = replicated_params(cfg, model_parallel, rules)
    if replicated:
        kinds = sorted({f"{axis} ({size})" for _, axis, size in replicated})
        logging.info(
            "model_parallel=%d does not divide %s: %d parameters stay replicated on the model "
            "axis (exact, but their memory is not divided)",
            model_parallel,
            ", ".join(kinds),
            len(replicated),
        )
    return jax.device_put(params, param_shardings(cfg, mesh, rules))


# ---------------------------------------------------------------------------- init


def _random_tree(cfg: GemmaConfig, key: jax.Array, dtype: Any, std: float) -> Params:
    """N(0, std^2) matrices and zero norm offsets, as a params pytree.

    One ``random.normal`` call per distinct shape (stacked over the layers), not per leaf:
    compiling threefry once per leaf dominated the cost (about 0.4 s each on CPU).
    """
    by_shape: dict[tuple[int, ...], list[ParamSpec]] = {}
    for spec in param_specs(cfg):
        if not spec.is_norm:
            by_shape.setdefault(spec.shape, []).append(spec)
    leaves: dict[tuple[str | int, ...], jax.Array] = {}
    for shape_key, (shape, specs) in zip(
        jax.random.split(key, len(by_shape)), by_shape.items(), strict=True
    ):
        stacked = std * jax.random.normal(shape_key, (len(specs), *shape), jnp.float32)
        for i, spec in enumerate(specs):
            leaves[spec.path] = stacked[i].astype(dtype)

    def leaf(spec: ParamSpec) -> jax.Array:
        # The stored norm weight is the offset w of the gain (1 + w): zero means unit gain.
        return jnp.zeros(spec.shape, dtype) if spec.is_norm else leaves[spec.path]

    return build_tree(cfg, leaf)


def init_params(
    cfg: GemmaConfig,
    key: jax.Array,
    dtype: Any = jnp.float32,
    *,
    std: float = 0.02,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> Params:
    """Random parameters with HF's scheme: N(0, std^2) matrices, zero norm offsets.

    Args:
        cfg: The model config.
        key: PRNG key.
        dtype: Parameter dtype (jnp.float32 or jnp.bfloat16).
        std: Standard deviation of the matrices (HF's ``initializer_range``).
        mesh: If given, the params are created directly sharded (``param_shardings``).
        rules: Logical-axis rules for ``mesh``.

    Returns:
        The params pytree.
    """
    dtype = jnp.dtype(dtype)
    if mesh is None:
        return _random_tree_jit(cfg, key, dtype, float(std))
    init = functools.partial(_random_tree, cfg, dtype=dtype, std=float(std))
    return jax.jit(init, out_shardings=param_shardings(cfg, mesh, rules))(key)


# Module level so repeated inits of one config compile once per process.
_random_tree_jit = jax.jit(_random_tree, static_argnums=(0, 2, 3))
