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
    fns = compiled_functions(arch, sae_cfg, d_in=..., width=..., n_members=..., batch_size=...,
                             dead_window=..., mesh=mesh, rules=rules)
    state = fns.init(seeds, sweep_values)                  # created already sharded
    state, metrics = fns.train_step(state, batch)          # state donated

Compiled functions are cached on everything that shapes the program (architecture, SAE config,
shapes, mesh, rules) so that dozens of small jobs with identical shapes reuse one compilation.

`members_per_pass` picks how the update runs over the sweep axis: 0 vmaps every member at once
(`jax.lax.map(..., batch_size=0)` is `vmap`), the right choice on GPU/TPU where batched matrix
products are efficient; 1 runs the members one after another inside the same compiled step
(`lax.map`, a scan). XLA:CPU's batched matmuls are 2-4x slower than the same products done one
by one (benchmarks/train_sweep.py), so on CPU 1 is faster while still reading each batch once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gemmascope import sae
from gemmascope.train import sharding


@dataclasses.dataclass(frozen=True)
class CompiledFunctions:
    """The jitted functions of one job shape.

    Attributes:
        init: (seeds (S,) int32, sweep_values (S,)) -> state, sharded by `state_shardings`.
        train_step: (state, batch (B, d_in)) -> (state, metrics); state donated. `metrics` maps
            recon_loss, sparsity_loss, loss, l0, fvu, lr, sparsity_coeff, frac_dead to (S,) arrays.
        abstract_state: the state's ShapeDtypeStructs, each carrying its sharding (restore target).
        state_shardings: the NamedSharding of every state leaf.
        batch_sharding: the sharding batches must have (rows on `data`).
    """

    init: Callable
    train_step: Callable
    abstract_state: dict
    state_shardings: dict
    batch_sharding: NamedSharding


_CACHE: dict[tuple, CompiledFunctions] = {}


def _config_key(cfg: ml_collections.ConfigDict) -> str:
    """A canonical string of a ConfigDict, used as (part of) the compilation cache key."""
    return json.dumps(cfg.to_dict(), sort_keys=True, default=repr)


def compiled_functions(
    arch_name: str,
    sae_cfg: ml_collections.ConfigDict,
    *,
    d_in: int,
    width: int,
    n_members: int,
    batch_size: int,
    dead_window: int,
    sweep_dtype: np.dtype,
    mesh: Mesh,
    rules: tuple,
    members_per_pass: int = 0,
) -> CompiledFunctions:
    """Returns the (cached) jitted init and step for one job shape; see the module docstring."""
    # batch_size is not needed to build (jit specialises on the batch shape by itself); it is in
    # the key so that one cache entry is exactly one compiled step, which makes reuse countable.
    key = (
        arch_name,
        _config_key(sae_cfg),
        d_in,
        width,
        n_members,
        batch_size,
        dead_window,
        np.dtype(sweep_dtype).name,
        mesh,
        rules,
        members_per_pass,
    )
    if key not in _CACHE:
        _CACHE[key] = _build(
            arch_name,
            ml_collections.ConfigDict(sae_cfg),
            d_in,
            width,
            n_members,
            dead_window,
            np.dtype(sweep_dtype),
            mesh,
            rules,
            members_per_pass,
        )
    return _CACHE[key]


def _build(
    arch_name,
    sae_cfg,
    d_in,
    width,
    n_members,
    dead_window,
    sweep_dtype,
    mesh,
    rules,
    members_per_pass,
):
    """Builds (does not yet compile) the jitted init and step of one job shape."""
    arch = sae.ARCHITECTURES[arch_name]
    single_step = sae.make_train_step(arch_name, sae_cfg)
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

    seeds_shape = jax.ShapeDtypeStruct((n_members,), jnp.int32)
    values_shape = jax.ShapeDtypeStruct((n_members,), sweep_dtype)
    shapes = jax.eval_shape(init, seeds_shape, values_shape)

    def named(*logical_axes):
        return NamedSharding(mesh, sharding.logical_to_spec(logical_axes, rules))

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
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted_init = jax.jit(
        init, in_shardings=(replicated, replicated), out_shardings=state_shardings
    )
    jitted_step = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    return CompiledFunctions(
        init=jitted_init,
        train_step=jitted_step,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
    )
