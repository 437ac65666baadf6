"""Feature recovery on synthetic dictionaries we did not pick, side by side with SAELens.

For every problem of a grid (overcompleteness 2x/4x/8x, true L0 2 to 16, uniform or Zipf feature
frequencies, correlated feature pairs; `gemmascope.sae.synthetic`), the same train array feeds

- ours: the public `train.train_sweep` over an `ArraySource`, one stacked job per architecture
  (its sweep values are the job's members), with a named recipe from `gemmascope.sae.recipes`;
- the peer: SAELens's own `SAETrainer` in its own virtualenv (`benchmarks/peer_saelens.py`,
  `benchmarks/saelens_env.py`), one run per value, with the same knobs wherever both have them:
  lr and its warmup length, sparsity-coefficient warmup, JumpReLU bandwidth and initial
  threshold, Adam betas, batch size, steps, width, dead-latent window. Each side keeps its own
  initialisation (SAELens: decoder rows at norm 0.1, free decoder; ours: the recipe's).

Every SAE is scored the same way on held-out tokens of the problem: MMCS (mean over true
features of the best decoder-row cosine), the fraction of true features matched at cosine
>= 0.9, L0 and its error against the true L0, and the fraction of dead latents.

Usage (the full grid takes about an hour on 2 idle cores, most of it SAELens; --peer_workers
runs peer trainings in parallel with ours):

    PYTHONPATH=. python benchmarks/recovery.py                      # everything, table to stdout
    PYTHONPATH=. python benchmarks/recovery.py --problems 4x_l4 --archs jumprelu --no_peer
    PYTHONPATH=. python benchmarks/recovery.py --recipe gemma_scope --steps 30000 --problems 2x_l4

Results also go to --out (JSON) so docs tables can be regenerated without retraining, and
--peer_from reuses the SAELens rows of such a file whose run spec (problem, seed, knobs) is
exactly the one this run would train, so a change on our side reruns only ours:

    PYTHONPATH=. python benchmarks/recovery.py --out=/tmp/a.json
    PYTHONPATH=. python benchmarks/recovery.py --peer_from=/tmp/a.json --set auxk_alpha=0
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from gemmascope import activations, sae, train
from gemmascope.sae import synthetic

D_IN = 48
# Problems: name -> Problem fields (d = 48; width = 2 x n_features for every SAE).
PROBLEMS = {
    "2x_l4": dict(n_features=2 * D_IN, mean_l0=4.0),
    "4x_l4": dict(n_features=4 * D_IN, mean_l0=4.0),
    "8x_l4": dict(n_features=8 * D_IN, mean_l0=4.0),
    "4x_l2": dict(n_features=4 * D_IN, mean_l0=2.0),
    "4x_l16": dict(n_features=4 * D_IN, mean_l0=16.0),
    "4x_l8_zipf": dict(n_features=4 * D_IN, mean_l0=8.0, frequency="zipf"),
    "4x_l4_corr": dict(n_features=4 * D_IN, mean_l0=4.0, correlated_fraction=0.5),
    "8x_l8_zipf_corr": dict(
        n_features=8 * D_IN, mean_l0=8.0, frequency="zipf", correlated_fraction=0.5
    ),
}
# Sweep values per architecture: coefficients, or multiples of the true L0 (k, target L0).
# (Gated and ReLU at λ = 3 end at L0 0 on every problem, SAELens's too: their grid stops at 1.)
COEFFS = {"jumprelu": (0.01, 0.03, 0.1), "gated": (0.1, 0.3, 1.0), "relu": (0.1, 0.3, 1.0)}
L0_MULTIPLES = (0.5, 1.0, 2.0)
ARCHS = ("jumprelu", "jumprelu_target", "jumprelu_quadratic", "matryoshka_jumprelu", "gated",
         "topk", "batchtopk", "matryoshka", "relu")  # fmt: skip
# Gemma Scope 2's JumpReLU forms (docs/sae.md#quadratic-l0): both sweep target L0s with the
# quadratic penalty λ·(2/T)(L0 − T)² at this λ (its release does not say which; on the problems
# of tests/sae at target 3 the L0 ends within 25% of it at λ 0.03 and at 0.1 alike).
QUADRATIC_ARCHS = ("jumprelu_quadratic", "matryoshka_jumprelu")
QUADRATIC_COEFF = 0.1
# The JumpReLU sparsity form of the grid's archs that name one (the recipe sets it: its clip).
SPARSITY_FORM = {"jumprelu_target": "target_l0", **dict.fromkeys(QUADRATIC_ARCHS, "quadratic")}
# The SAELens architecture trained beside each of ours (None: SAELens has no counterpart run).
PEER = {"jumprelu": "jumprelu", "gated": "gated", "relu": "relu", "topk": "topk",
        "batchtopk": "batchtopk", "jumprelu_target": None, "jumprelu_quadratic": None,
        "matryoshka_jumprelu": None, "matryoshka": None}  # fmt: skip
N_TRAIN, N_EVAL = 1 << 18, 1 << 13


def sweep_values(arch: str, true_l0: float) -> list:
    """The values a problem sweeps for one architecture."""
    if arch in COEFFS:
        return list(COEFFS[arch])
    if arch == "jumprelu_target" or arch in QUADRATIC_ARCHS:
        return [float(m * true_l0) for m in L0_MULTIPLES]
    return sorted({max(1, round(m * true_l0)) for m in L0_MULTIPLES})


def sae_config(arch: str, args):
    """(our architecture name, its SAE config) for an arch of the grid under the named recipe."""
    name = "jumprelu" if arch in ("jumprelu_target", "jumprelu_quadratic") else arch
    cfg = sae.ARCHITECTURES[name].default_config()
    form = SPARSITY_FORM.get(arch)
    cfg.update(sae.recipes.get(args.recipe, name, total_steps=args.steps, sparsity_form=form))
    if arch in QUADRATIC_ARCHS:
        cfg.sparsity_coeff = QUADRATIC_COEFF
    for field, value in args.set:
        if field in cfg:
            cfg[field] = type(cfg[field])(value) if not isinstance(cfg[field], bool) else (
                value == "True"
            )
    return name, cfg


def train_ours(arch, x_train, values, width, args, workdir):
    """Trains one stacked job with train.train_sweep; returns the members' training params."""
    name, cfg = sae_config(arch, args)
    job = train.default_config(name)
    job.name = f"{arch}"
    job.sae = cfg
    job.width = width
    job.sweep_values = values
    job.seeds = [args.init_seed]
    if name in ("topk", "batchtopk", "matryoshka"):
        job.sae.k = max(values)
    job.batch_size = args.batch
    job.total_tokens = args.steps * args.batch
    job.log_every_tokens = job.ckpt_every_tokens = job.total_tokens
    job.dead_window_tokens = args.dead_window_steps * args.batch
    job.tensorboard = job.progress_bar = False
    source = activations.ArraySource(x_train, seed=0, norm_scale=1.0)
    result = train.train_sweep(job, source, workdir)
    return name, cfg, [result.member_params(i) for i in range(len(values))]


def latents_of(name, cfg, params, value, x):
    """Latent activations of one trained member on x (the inference form export writes)."""
    if name == "topk":
        return np.asarray(sae.ARCHITECTURES["topk"].encode(params, x, cfg, k=int(value)))
    form = sae.to_jumprelu(params, name, cfg)
    return np.asarray(sae.encode_training_form(form, x))


def peer_spec(arch, value, width, args, paths, recipe_cfg):
    """The JSON spec of one SAELens run with our knobs."""
    return dict(
        train=paths["train"], eval=paths["eval"], arch=arch, value=float(value),
        width=width, batch_size=args.batch, steps=args.steps,
        lr=recipe_cfg.lr, lr_warmup_steps=recipe_cfg.lr_warmup_steps,
        sparsity_warmup_steps=recipe_cfg.sparsity_warmup_steps,
        adam_b1=recipe_cfg.adam_b1, adam_b2=recipe_cfg.adam_b2,
        threshold_init=recipe_cfg.get("threshold_init", 1e-3),
        bandwidth=recipe_cfg.get("bandwidth", 1e-3),
        dead_feature_window=args.dead_window_steps, seed=0,
    )  # fmt: skip


def run_peer(python, spec, workdir, tag):
    """One SAELens training in its virtualenv; returns its output arrays."""
    spec_path = os.path.join(workdir, f"{tag}.json")
    out_path = os.path.join(workdir, f"{tag}.npz")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_saelens.py")
    done = subprocess.run([python, script, spec_path, out_path], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"SAELens run {tag} failed:\n{done.stderr[-3000:]}")
    return dict(np.load(out_path))


def score(problem, w_dec, latents, true_l0):
    """The recovery row of one SAE."""
    row = synthetic.recovery(problem, w_dec, latents)
    row["l0_error"] = abs(row["l0"] - true_l0) / true_l0
    return row


def _spec_key(pname, args, spec):
    """What identifies a peer run across invocations: the problem and its knobs, not file paths."""
    knobs = {k: v for k, v in spec.items() if k not in ("train", "eval")}
    return json.dumps(dict(problem=pname, problem_seed=args.seed, **knobs), sort_keys=True)


def run_problem(pname, args, python, pool, reusable):
    """Trains every architecture (ours and the peer's) on one problem; returns its rows."""
    problem = synthetic.Problem(d=D_IN, seed=args.seed, **PROBLEMS[pname])
    width = args.width_factor * problem.n_features
    x_train, _ = synthetic.sample(problem, N_TRAIN, seed=1)
    x_eval, eval_l0 = synthetic.sample(problem, N_EVAL, seed=2)
    true_l0 = float(np.mean(eval_l0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"train": os.path.join(tmp, "train.npy"), "eval": os.path.join(tmp, "eval.npy")}
        np.save(paths["train"], x_train)
        np.save(paths["eval"], x_eval)
        futures = {}
        for arch in args.archs:
            values = sweep_values(arch, true_l0)
            peer_arch = PEER[arch] if arch in args.peer_archs else None
            if python and peer_arch:
                _, cfg = sae_config(arch, args)
                for value in values:
                    spec = peer_spec(peer_arch, value, width, args, paths, cfg)
                    key = _spec_key(pname, args, spec)
                    if key in reusable:
                        future = concurrent.futures.Future()
                        future.set_result(reusable[key])
                    else:
                        future = pool.submit(_peer_row, python, spec, tmp, f"{arch}_{value}",
                                             problem, true_l0)  # fmt: skip
                    futures[(arch, value)] = (key, future)
        for arch in args.archs:
            values = sweep_values(arch, true_l0)
            start = time.perf_counter()
            name, cfg, members = train_ours(arch, x_train, values, width, args, tmp)
            seconds = time.perf_counter() - start
            for value, params in zip(values, members, strict=True):
                ours = score(problem, params["W_dec"], latents_of(name, cfg, params, value, x_eval),
                             true_l0)  # fmt: skip
                row = dict(problem=pname, arch=arch, value=value, true_l0=true_l0, ours=ours,
                           ours_seconds=seconds)  # fmt: skip
                if (arch, value) in futures:
                    key, future = futures[(arch, value)]
                    row["saelens"], row["saelens_spec"] = future.result(), key
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _peer_row(python, spec, workdir, tag, problem, true_l0):
    """Trains one SAELens SAE and scores it like ours."""
    out = run_peer(python, spec, workdir, tag)
    peer = synthetic.recovery(problem, out["W_dec"], np.zeros((1, 1)))
    peer.update(l0=float(out["l0"]), dead=float(np.mean(out["fired"] == 0)))
    peer["l0_error"] = abs(peer["l0"] - true_l0) / true_l0
    return peer


def _cell(result):
    if result is None:
        return "-"
    return f"{result['mmcs']:.3f} @ {result['l0']:.1f} ({result['dead']:.2f})"


def _line(row):
    return (f"| {row['problem']} | {row['arch']} | {row['value']:g} | {row['true_l0']:.1f} | "
            f"{_cell(row['ours'])} | {_cell(row.get('saelens'))} |")  # fmt: skip


def _print_header():
    print(
        "| problem | arch | value | true L0 | ours: MMCS @ L0 (dead) "
        "| SAELens: MMCS @ L0 (dead) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")


def print_table(paths):
    """Prints the rows of --out files, and how often ours is at or above SAELens's MMCS."""
    rows = {}
    for path in paths:
        with open(path) as f:
            for row in json.load(f)["rows"]:
                rows[(row["problem"], row["arch"], row["value"])] = row
    _print_header()
    for row in rows.values():
        print(_line(row))
    paired = [r for r in rows.values() if "saelens" in r]
    for arch in sorted({r["arch"] for r in paired}):
        mine = [r for r in paired if r["arch"] == arch]
        above = sum(r["ours"]["mmcs"] >= r["saelens"]["mmcs"] - 0.005 for r in mine)
        print(f"{arch}: ours at or above SAELens's MMCS (within 0.005) on {above}/{len(mine)}")


def main():
    """Parses the flags, runs the grid and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--recipe", default="short_run", help="a gemmascope.sae.recipes name")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width_factor", type=int, default=2, help="width / n_features")
    parser.add_argument("--dead_window_steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="the problems' dictionary seed")
    parser.add_argument("--init_seed", type=int, default=0, help="our SAEs' init seed")
    parser.add_argument("--no_peer", action="store_true", help="skip SAELens")
    parser.add_argument("--peer_workers", type=int, default=1)
    parser.add_argument(
        "--peer_archs", default="jumprelu,gated,topk",
        help="the architectures SAELens trains beside ours (also: relu, batchtopk)",
    )  # fmt: skip
    parser.add_argument("--peer_from", default="", help="reuse SAELens rows of this --out JSON")
    parser.add_argument(
        "--print_from", default="",
        help="print the table of these --out JSONs (comma-separated; later rows win) and stop",
    )  # fmt: skip
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override an SAE config field of every architecture that has it (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.print_from:
        print_table(args.print_from.split(","))
        return
    args.set = [tuple(item.split("=", 1)) for item in args.set]
    args.archs = args.archs.split(",")
    args.peer_archs = args.peer_archs.split(",")
    reusable = {}
    if args.peer_from:
        with open(args.peer_from) as f:
            for row in json.load(f)["rows"]:
                if "saelens_spec" in row:
                    reusable[row["saelens_spec"]] = row["saelens"]
    for arch in args.archs:
        if arch not in ARCHS:
            sys.exit(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    if args.no_peer:
        python = None
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import saelens_env

        python = saelens_env.python_path()
    _print_header()
    rows = []
    with concurrent.futures.ThreadPoolExecutor(args.peer_workers) as pool:
        for pname in args.problems.split(","):
            rows += run_problem(pname, args, python, pool, reusable)
            if args.out:  # after every problem, atomically: a stopped run keeps what it finished
                with open(args.out + ".tmp", "w") as f:
                    json.dump(dict(args=vars(args), rows=rows), f, indent=1)
                os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
