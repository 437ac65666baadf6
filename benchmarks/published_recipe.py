"""The published Gemma Scope JumpReLU recipe, trained for as many steps as it asks for.

`benchmarks/recovery.py --recipe gemma_scope` trains through the public trainer, whose per-step
host work costs more than a whole step of a d = 48 SAE; Gemma Scope's budget is ~10^6 steps
(4B tokens at 4,096 per step). This script runs the same `sae.make_train_step` inside one jitted
`lax.scan` per chunk of steps over an in-memory array of one recovery problem
(`benchmarks/recovery.py`'s PROBLEMS), and prints a JSON line per chunk: MMCS of each member's
decoder, the chunk's mean L0 and FVU, and the mean threshold θ. That trajectory is what shows
whether, and when, the recipe leaves its dense start (docs/sae.md#published-recipe-short).

Members (one per λ) run one after another in each step (`lax.map`, the fast way on a CPU). Rows
are read in a fixed stride over an array of 2^20 tokens (a new offset per step); the problem's
law is stationary, so reuse across the ~10^3 epochs of a long run only repeats tokens.

Usage:
    PYTHONPATH=. python benchmarks/published_recipe.py --steps 1000000 --batch 1024 --lams 0.1
    PYTHONPATH=. python benchmarks/published_recipe.py --steps 100000 --set bandwidth=0.007
    PYTHONPATH=. python benchmarks/published_recipe.py --d_in 256 --steps 300000 --lams 0.1
    PYTHONPATH=. python benchmarks/published_recipe.py --cache WORKDIR:resid_post/9 --width 2048
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from recovery import D_IN, PROBLEMS

import gemmascope.mesh
from gemmascope import activations, sae
from gemmascope.sae import optim, recipes, synthetic, token_blocks
from gemmascope.sae import train_step as train_step_lib

_N_ROWS = 1 << 20
# Rows advance by this many batches per step (a prime: every offset of the array is visited).
_STRIDE = 7919


def config(overrides):
    """JumpReLU with the gemma_scope recipe, then the --set overrides (FIELD, VALUE) pairs."""
    cfg = sae.ARCHITECTURES["jumprelu"].default_config()
    cfg.update(recipes.get("gemma_scope", "jumprelu"))
    for field, value in overrides:
        if field not in cfg:
            raise SystemExit(f"--set {field}: not a JumpReLU config field")
        cfg[field] = type(cfg[field])(value)
    return cfg


def _cached_rows(workdir: str, site: str) -> np.ndarray:
    """Every row of a study's cache of ``site``, as the trainer reads them (x / C, fp32)."""
    source = activations.open_source(workdir, site, seed=0)
    mesh = gemmascope.mesh.make_mesh([("data", 1), ("model", 1)], jax.devices()[:1])
    sharding = gemmascope.mesh.named_sharding(mesh, ("batch", "d_in"))
    batch = 1024
    batches = source.iter_batches(batch, sharding)
    rows = np.concatenate([np.asarray(next(batches)) for _ in range(source.n_tokens // batch)])
    batches.close()
    return rows


def main():
    """Parses the flags, trains, and prints one JSON line per chunk."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="2x_l4", choices=sorted(PROBLEMS))
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=20_000, help="steps per jitted scan")
    parser.add_argument("--lams", default="0.03,0.1", help="λ of each member")
    parser.add_argument("--width_factor", type=int, default=2, help="width / n_features")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument(
        "--d_in", type=int, default=D_IN, help="input width (features scale with it)"
    )
    parser.add_argument(
        "--cache",
        default=None,
        metavar="WORKDIR:SITE",
        help="train on a study's cached activations of SITE instead of a synthetic problem",
    )
    parser.add_argument("--width", type=int, default=2048, help="--cache: the SAE's width")
    parser.add_argument(
        "--heldout",
        type=int,
        default=4096,
        help="--cache: rows kept out of training (the cache's last), where each chunk's L0 and "
        "FVU are also measured",
    )
    args = parser.parse_args()
    if args.cache:
        problem, data = None, _cached_rows(*args.cache.rsplit(":", 1))
        d_in, width = data.shape[1], args.width
    else:
        fields = dict(PROBLEMS[args.problem])
        fields["n_features"] = fields["n_features"] * args.d_in // D_IN
        problem = synthetic.Problem(d=args.d_in, **fields)
        data, _ = synthetic.sample(problem, _N_ROWS, seed=1)
        d_in, width = args.d_in, args.width_factor * problem.n_features
    heldout = None
    if args.cache:
        data, heldout = data[: -args.heldout], jnp.asarray(data[-args.heldout :])
    data = jnp.asarray(data)
    n_rows = data.shape[0]
    cfg = config([tuple(item.split("=", 1)) for item in args.set])
    arch = sae.ARCHITECTURES["jumprelu"]
    # The trainer's choice of token blocks on this platform (the same step to fp32 rounding).
    blocks = token_blocks.block_tokens_for(args.batch, width, None, jax.default_backend())
    step = train_step_lib.make_train_step("jumprelu", cfg, block_tokens=blocks)
    tx = optim.optimizer(cfg)
    lams = jnp.asarray([float(v) for v in args.lams.split(",")], jnp.float32)

    def init(key):
        params = arch.init(key, d_in, width, cfg)
        return params, tx.init(params)

    state = jax.vmap(init)(jax.random.split(jax.random.key(0), len(lams)))

    def one_step(state, t):
        start = (t * args.batch * _STRIDE) % (n_rows - args.batch)
        x = jax.lax.dynamic_slice_in_dim(data, start, args.batch)

        def member(item):
            params, opt, lam = item
            return step(params, opt, x, t, lam)

        params, opt, metrics = jax.lax.map(member, (*state, lams))
        return (params, opt), (metrics["l0"], metrics["fvu"])

    @jax.jit
    def chunk(state, first_step):
        steps = first_step + jnp.arange(args.chunk)
        state, (l0, fvu) = jax.lax.scan(one_step, state, steps)
        return state, l0.mean(0), fvu.mean(0)

    @jax.jit
    def heldout_metrics(params):
        def member(item):
            member_params, lam = item
            coeffs = arch.coeffs(cfg, args.steps, lam)
            _, metrics = arch.loss(member_params, heldout, coeffs, cfg)
            return metrics["l0"], metrics["fvu"]

        return jax.lax.map(member, (params, lams))

    start_time, done = time.time(), 0
    while done < args.steps:
        state, l0, fvu = chunk(state, done)
        done += args.chunk
        params = state[0]
        theta = np.asarray(jax.vmap(arch.threshold, in_axes=(0, None))(params, cfg))
        w_dec = np.asarray(params["W_dec"])
        mmcs = [round(synthetic.mean_max_cosine(problem, w), 3) for w in w_dec] if problem else None
        row = dict(
            step=done,
            seconds=round(time.time() - start_time, 1),
            lam=[round(float(v), 6) for v in lams],
            mmcs=mmcs,
            l0=[round(float(v), 1) for v in l0],
            fvu=[round(float(v), 4) for v in fvu],
            mean_theta=[float(f"{v:.3g}") for v in theta.mean(axis=1)],
        )
        if heldout is not None:
            with jax.default_matmul_precision("highest"):
                held_l0, held_fvu = heldout_metrics(params)
            row["heldout_l0"] = [round(float(v), 1) for v in held_l0]
            row["heldout_fvu"] = [round(float(v), 4) for v in held_fvu]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
