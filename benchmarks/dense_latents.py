"""Dense latents with and without JumpReLU's frequency penalty (docs/sae.md#frequency-penalty).

Two measurements:

- synthetic: short-run JumpReLU SAEs (width 128) on the 2x problem of tests/sae (d 32, 64 true
  features, true L0 3) at sparsity settings where latents go dense, each trained with and without
  the penalty (its form and ω as given); prints, per setting, the dense fraction (latents firing
  on > 10% of held-out tokens), L0, FVU and MMCS;
- compare: two study workdirs evaluated into metric tables (the same study without and with the
  penalty, e.g. `experiments/tiny_demo.py:freq_penalty=0.05,freq_form=hinge`), JumpReLU rows
  matched by site, width and sweep value: L0, frac_dense and delta LM loss side by side, the
  medians, and each SAE with the penalty against the curve without it at equal L0. A run without
  the penalty at another seed, compared the same way, shows what the counts look like when
  nothing but the seed changed (docs/sae.md#frequency-penalty-measured).

Usage:

    PYTHONPATH=. python benchmarks/dense_latents.py synthetic [--scale 0.05 --form hinge]
    PYTHONPATH=. python benchmarks/dense_latents.py compare WORKDIR_OFF WORKDIR_ON
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope import sae
from gemmascope.eval import equal_l0
from gemmascope.sae import jumprelu, synthetic

STEPS, BATCH, WIDTH = 600, 256, 128
# (sparsity form, sweep value): λ in the coefficient form, the target in the others.
SETTINGS = (("coeff", 0.003), ("coeff", 0.01), ("target_l0", 8.0), ("quadratic", 8.0))


def train_synthetic(form: str, value: float, scale: float, penalty_form: str) -> dict:
    """One short-run SAE on the 2x problem; its held-out dense fraction, L0, FVU and MMCS."""
    problem = synthetic.Problem(d=32, n_features=64, mean_l0=3.0)
    x, _ = synthetic.sample(problem, 1 << 16, seed=1)
    x_eval, _ = synthetic.sample(problem, 4096, seed=2)
    cfg = jumprelu.default_config()
    cfg.update(sae.recipes.get("short_run", "jumprelu", total_steps=STEPS))
    cfg.update(sparsity_form=form, dead_tokens=100 * BATCH, freq_penalty_scale=scale)
    cfg.freq_penalty_form = penalty_form
    params = jumprelu.init(jax.random.key(0), 32, WIDTH, cfg)
    opt = sae.optimizer(cfg).init(params)
    step = jax.jit(sae.make_train_step("jumprelu", cfg))
    batches = jnp.asarray(x).reshape(-1, BATCH, 32)
    for t in range(STEPS):
        params, opt, _ = step(params, opt, batches[t % len(batches)], t, value)
    f = jumprelu.encode(params, jnp.asarray(x_eval), cfg)
    x_hat = np.asarray(jumprelu.decode(params, f, cfg))
    f = np.asarray(f)
    frequency = np.mean(f != 0, axis=0)
    return {
        "dense": float(np.mean(frequency > 0.1)),
        "l0": float(np.mean(np.sum(f != 0, -1))),
        "fvu": float(np.sum((x_eval - x_hat) ** 2) / np.sum((x_eval - x_eval.mean(0)) ** 2)),
        "mmcs": synthetic.mean_max_cosine(problem, np.asarray(params["W_dec"])),
    }


def run_synthetic(scale: float, penalty_form: str) -> None:
    """Prints the synthetic table: every setting without and with the penalty at ω = scale."""
    print(f"| form | value | dense: off / {penalty_form} ω {scale} | L0 | FVU | MMCS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for form, value in SETTINGS:
        off = train_synthetic(form, value, 0.0, penalty_form)
        on = train_synthetic(form, value, scale, penalty_form)
        cells = [f"{off[k]:.3f} / {on[k]:.3f}" for k in ("dense", "l0", "fvu", "mmcs")]
        cells[1] = f"{off['l0']:.1f} / {on['l0']:.1f}"
        print(f"| {form} | {value:g} | " + " | ".join(cells) + " |", flush=True)


def _jumprelu_rows(workdir: str) -> dict:
    import pandas as pd

    table = pd.read_csv(os.path.join(workdir, "eval", "saes.csv"))
    table = table[table["architecture"] == "jumprelu"]
    return {(r.site, int(r.width), float(r.sweep_value)): r for r in table.itertuples()}


def run_compare(off_dir: str, on_dir: str) -> None:
    """Prints the JumpReLU rows of two evaluated workdirs side by side, and their medians."""
    off, on = _jumprelu_rows(off_dir), _jumprelu_rows(on_dir)
    keys = sorted(set(off) & set(on), key=lambda k: (k[0], k[1], -k[2]))
    print("| site | width | target L0 | L0 off / on | frac_dense off / on | delta loss off / on |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in keys:
        a, b = off[key], on[key]
        print(
            f"| {key[0]} | {key[1]} | {key[2]:g} | {a.l0:.1f} / {b.l0:.1f} | "
            f"{a.frac_dense:.3f} / {b.frac_dense:.3f} | {a.delta_loss:.3f} / {b.delta_loss:.3f} |"
        )
    _print_by_kind(off, on, keys)
    for name in ("l0", "frac_dense", "delta_loss"):
        a = np.median([getattr(off[k], name) for k in keys])
        b = np.median([getattr(on[k], name) for k in keys])
        print(f"median {name}: off {a:.4f}, on {b:.4f} ({len(keys)} SAEs)")
    fewer = sum(on[k].frac_dense < off[k].frac_dense for k in keys)
    worse = sum(on[k].delta_loss > off[k].delta_loss for k in keys)
    print(f"frac_dense lower with the penalty: {fewer}/{len(keys)}; delta loss higher: {worse}")
    _print_equal_l0(off, on)


def _print_by_kind(off: dict, on: dict, keys: list) -> None:
    """Means over the layers of each (site kind, width, sweep value)."""
    print(
        "\n| kind | width | target L0 | L0 off / on | frac_dense off / on | delta loss off / on |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    groups: dict = {}
    for key in keys:
        groups.setdefault((key[0].split("/")[0], key[1], key[2]), []).append(key)
    for (kind, width, value), members in sorted(groups.items(), key=lambda g: (g[0][:2], -g[0][2])):
        cells = []
        for name in ("l0", "frac_dense", "delta_loss"):
            a = np.mean([getattr(off[k], name) for k in members])
            b = np.mean([getattr(on[k], name) for k in members])
            cells.append(f"{a:.1f} / {b:.1f}" if name == "l0" else f"{a:.3f} / {b:.3f}")
        print(f"| {kind} | {width} | {value:g} | " + " | ".join(cells) + " |")
    print()


def _print_equal_l0(off: dict, on: dict) -> None:
    """Each SAE with the penalty against the curve without it at the same L0 (eval.equal_l0).

    The curve of a (site, width) without the penalty is its sweep's (L0, metric) points, read
    linearly in log L0; SAEs outside its L0 range are left out (no extrapolation).
    """
    rows = []
    for site, width in sorted({(k[0], k[1]) for k in on}):
        curve = [r for k, r in off.items() if (k[0], k[1]) == (site, width)]
        if len(curve) < 2:
            continue
        l0s = np.array([r.l0 for r in curve])
        for key, row in on.items():
            if (key[0], key[1]) != (site, width):
                continue
            at = {
                m: equal_l0.interpolate_log_l0(l0s, [getattr(r, m) for r in curve], row.l0)
                for m in ("frac_dense", "delta_loss", "fvu")
            }
            if not np.isnan(at["fvu"]):
                rows.append((row, at))
    print(
        f"\nat equal L0 ({len(rows)} SAEs with the penalty inside the L0 range of the curve "
        "without it):"
    )
    kinds = sorted({row.site.split("/")[0] for row, _ in rows})
    for label, chosen in [("all", rows)] + [
        (kind, [(r, a) for r, a in rows if r.site.split("/")[0] == kind]) for kind in kinds
    ]:
        for metric in ("frac_dense", "delta_loss", "fvu"):
            diff = np.array([getattr(row, metric) - at[metric] for row, at in chosen])
            print(
                f"  {label} {metric}: median with - without {np.median(diff):+.4f}; lower with "
                f"the penalty in {int(np.sum(diff < 0))}/{len(diff)}"
            )


def main() -> None:
    """Parses the command line and runs one measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    synth = sub.add_parser("synthetic")
    synth.add_argument("--scale", type=float, default=0.1, help="the penalty's ω")
    synth.add_argument(
        "--form", default="quadratic", choices=jumprelu.FREQ_PENALTY_FORMS, help="its form"
    )
    compare = sub.add_parser("compare")
    compare.add_argument("off")
    compare.add_argument("on")
    args = parser.parse_args()
    if args.what == "synthetic":
        run_synthetic(args.scale, args.form)
    else:
        run_compare(args.off, args.on)


if __name__ == "__main__":
    main()
