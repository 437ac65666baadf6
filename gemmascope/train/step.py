"""The stacked sweep state and its one jitted update: S SAEs, one batch, one compiled program.

The S sweep members are one pytree with a leading sweep axis. `sae.make_train_step` (a pure
single-SAE update) is mapped over that axis (`vmap`, or in sequence; `members_per_pass` below),
so every member reads the same batch once.

State (a plain dict, checkpointed as a whole):
    params       stacked SAE params, (S, ...) per leaf, latent axis sharded on `model`
    opt          stacked optimizer state, sharded like the params it belongs to
    step         () int32, completed steps (the step index the SAE schedules see)
    last_fired   (S, width) int32, value of `step` after the last step on which a latent fired
    sweep_value  (S,) the member's SWEEP_FIELD value (traced, so all jobs of a shape share code)
    bad_step     (S,) int32, first step whose loss was not finite, -1 while all were finite

Synopsis:
    shape = JobShape(arch, sae_cfg, d_in=..., width=..., n_members=..., batch_size=...,
                     dead_window=..., sweep_dtype="float32", mesh=mesh, rules=rules)
    fns = compiled_functions(shape)
    state = fns.init(seeds, sweep_values)                  # created already sharded
    state, metrics = fns.train_step(state, batch)          # state donated

Compiled functions are cached on the `JobShape` (architecture, SAE config, shapes, mesh, rules),
so that dozens of small jobs with identical shapes reuse one compilation.

`members_per_pass` picks how the update runs over the sweep axis: 0 vmaps every member at once
(`jax.lax.map(..., batch_size=0)` is `vmap`), the right choice on GPU/TPU where batched matrix
products are efficient; 1 runs the members one after another inside the same compiled step
(`lax.map`, a scan). XLA:CPU's batched matmuls are 2-4x slower than the same products done one
by one (benchmarks/train_sweep.py), so on CPU 1 is faster while still reading each batch once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from gemmascope import mesh as mesh_lib
from gemmascope import sae
from gemmascope.train import sharding


@dataclasses.dataclass(frozen=True)
class CompiledFunctions:
    """The jitted functions of one job shape.

    Attributes:
        init: (seeds (S,) int32, sweep_values (S,)) -> state, sharded by `state_shardings`.
        train_step: (state, batch (B, d_in), or a transcoder's (input, target) pair) ->
            (state, metrics); state donated. `metrics` maps
            recon_loss, sparsity_loss, loss, l0, fvu, lr, sparsity_coeff, frac_dead to (S,) arrays.
        heldout: (state, batch (B, d_in)) -> {fvu, l0, frac_dead}, each (S,): every member's
            training-form forward pass (`arch.loss`'s metrics, at the state's step, the member's
            sweep value and `sae_cfg.matmul_precision`) on a batch it does not train on;
            frac_dead is the fraction of latents that fire on none of the batch's tokens. The
            state is not changed.
        abstract_state: the state's ShapeDtypeStructs, each carrying its sharding (restore target).
        state_shardings: the NamedSharding of every state leaf.
        batch_sharding: the sharding batches must have (rows on `data`); a transcoder's
            (input, target) pair has it on both arrays.
    """

    init: Callable
    train_step: Callable
    heldout: Callable
    abstract_state: dict
    state_shardings: dict
    batch_sharding: NamedSharding


@dataclasses.dataclass(frozen=True)
class JobShape:
    """Everything that shapes one job's compiled program; hashable, the compilation cache key.

    Attributes:
        arch: the architecture's name (a key of `sae.ARCHITECTURES`).
        sae_cfg: its resolved config, frozen (hashable, and safe from later edits).
        d_in: the activation width.
        width: latents per SAE.
        n_members: S, the sweep members stacked on the leading axis.
        batch_size: activations per step. jit specialises on the batch shape by itself; it is
            part of the shape so that one cache entry is exactly one compiled step, which makes
            reuse countable.
        dead_window: steps without firing after which a latent counts as dead.
        sweep_dtype: "int32" (k sweeps) or "float32", the dtype of the traced sweep values.
        mesh: the (data, model) mesh.
        rules: the logical-axis rules ((logical, mesh axis or None) pairs, `gemmascope.mesh`).
        members_per_pass: 0 vmaps every member at once, k vmaps k at a time, 1 runs them one
            after another (module docstring).
        block_tokens: 0 takes each member's gradient over the whole batch, n over blocks of n
            tokens where the loss allows (`sae.make_train_step`, docs/sae.md#token-blocks).
    """

    arch: str
    sae_cfg: ml_collections.FrozenConfigDict
    d_in: int
    width: int
    n_members: int
    batch_size: int
    dead_window: int
    sweep_dtype: str
    mesh: Mesh
    rules: tuple[tuple[str, str | None], ...] = mesh_lib.RULES
    members_per_pass: int = 0
    block_tokens: int = 0

    def __post_init__(self):
        """Freezes the SAE config and normalises the dtype and rules (equal shapes, equal keys)."""
        if not isinstance(self.sae_cfg, ml_collections.FrozenConfigDict):
            object.__setattr__(self, "sae_cfg", ml_collections.FrozenConfigDict(self.sae_cfg))
        object.__setattr__(self, "sweep_dtype", np.dtype(self.sweep_dtype).name)
        rules = tuple((str(a), None if m is None else str(m)) for a, m in self.rules)
        object.__setattr__(self, "rules", rules)


_CACHE: dict[JobShape, CompiledFunctions] = {}


def compiled_functions(shape: JobShape) -> CompiledFunctions:
    """Returns the (cached) jitted init and step of one job shape; see the module docstring."""
    if shape not in _CACHE:
        _CACHE[shape] = _build(shape)
    return _CACHE[shape]


def _build(shape: JobShape) -> CompiledFunctions:
    """Builds (does not yet compile) the jitted init and step of one job shape."""
    arch_name, sae_cfg = shape.arch, shape.sae_cfg
    d_in, width, n_members = shape.d_in, shape.width, shape.n_members
    dead_window, members_per_pass = shape.dead_window, shape.members_per_pass
    mesh, rules = shape.mesh, shape.rules
    arch = sae.ARCHITECTURES[arch_name]
    single_step = sae.make_train_step(arch_name, sae_cfg, shape.block_tokens)
    optimizer = sae.optimizer(sae_cfg)

    def init(seeds, sweep_values):
        def init_member(seed):
            params = arch.init(jax.random.key(seed), d_in, width, sae_cfg)
            return params, optimizer.init(params)

        params, opt = jax.vmap(init_member)(seeds)
        return {
            "params": params,
            "opt": opt,
            "step": jnp.zeros((), jnp.int32),
            "last_fired": jnp.zeros((n_members, width), jnp.int32),
            "sweep_value": sweep_values,
            "bad_step": jnp.full((n_members,), -1, jnp.int32),
        }

    def train_step(state, batch):
        step = state["step"]

        def member_step(member):
            params, opt, value = member
            return single_step(params, opt, batch, step, value)

        members = (state["params"], state["opt"], state["sweep_value"])
        if members_per_pass == 1:
            # One member after another inside this one program (XLA:CPU: see module docstring).
            params, opt, metrics = jax.lax.map(member_step, members)
        else:  # 0: every member in one vmapped pass; k: vmapped k at a time.
            params, opt, metrics = jax.lax.map(member_step, members, batch_size=members_per_pass)
        fired = metrics.pop("fired")  # (S, width): tokens of this batch each latent fired on
        done = step + 1
        last_fired = jnp.where(fired > 0, done, state["last_fired"])
        metrics = {name: jnp.asarray(value, jnp.float32) for name, value in metrics.items()}
        metrics["frac_dead"] = jnp.mean((done - last_fired) >= dead_window, axis=-1)
        finite = jnp.isfinite(metrics["loss"])
        bad_step = jnp.where((state["bad_step"] < 0) & ~finite, step, state["bad_step"])
        new_state = {
            "params": params,
            "opt": opt,
            "step": done,
            "last_fired": last_fired,
            "sweep_value": state["sweep_value"],
            "bad_step": bad_step,
        }
        return new_state, metrics

    def heldout(state, batch):
        def member_metrics(member):
            params, value = member
            coeffs = arch.coeffs(sae_cfg, state["step"], value)
            with jax.default_matmul_precision(sae_cfg.matmul_precision):  # training's precision
                _, metrics = sae.batch_loss(arch, params, batch, coeffs, sae_cfg)
            never_fired = jnp.mean((metrics["fired"] == 0).astype(jnp.float32))
            return {"fvu": metrics["fvu"], "l0": metrics["l0"], "frac_dead": never_fired}

        members = (state["params"], state["sweep_value"])
        if members_per_pass == 1:
            metrics = jax.lax.map(member_metrics, members)
        else:
            metrics = jax.lax.map(member_metrics, members, batch_size=members_per_pass)
        return {name: jnp.asarray(value, jnp.float32) for name, value in metrics.items()}

    seeds_shape = jax.ShapeDtypeStruct((n_members,), jnp.int32)
    values_shape = jax.ShapeDtypeStruct((n_members,), np.dtype(shape.sweep_dtype))
    shapes = jax.eval_shape(init, seeds_shape, values_shape)

    def named(*logical_axes):
        return mesh_lib.named_sharding(mesh, logical_axes, rules)

    state_shardings = {
        "params": sharding.stacked_shardings(shapes["params"], mesh, rules, width, d_in),
        "opt": sharding.stacked_shardings(shapes["opt"], mesh, rules, width, d_in),
        "step": named(),
        "last_fired": named("sweep", "d_sae"),
        "sweep_value": named("sweep"),
        "bad_step": named("sweep"),
    }
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_shardings
    )
    batch_sharding = named("batch", "d_in")
    replicated = named()
    jitted_init = jax.jit(
        init, in_shardings=(replicated, replicated), out_shardings=state_shardings
    )
    jitted_step = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    jitted_heldout = jax.jit(
        heldout, in_shardings=(state_shardings, batch_sharding), out_shardings=replicated
    )
    return CompiledFunctions(
        init=jitted_init,
        train_step=jitted_step,
        heldout=jitted_heldout,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
    )
