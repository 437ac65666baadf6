r"""Checks that SAELens loads our exported SAEs and computes exactly what we compute.

    python tools/saelens_roundtrip.py                       # creates .venv-saelens if missing
    python tools/saelens_roundtrip.py --venv=/path/to/.venv-saelens --keep=/tmp/roundtrip

1. With gemmascope (this interpreter): writes trainer-shaped runs of JumpReLU, Gated, BatchTopK
   and TopK SAEs (random parameters with non-trivial biases, thresholds and normalisation scale
   C), exports them with ``export.export_run`` (which writes ``params.npz`` and ``saelens/``), one
   at ``attn_z`` to exercise SAELens's hook_z reshaping, and encodes and decodes random raw
   activations with our released-form rules (``eval.metrics``): the expected outputs.
2. With SAELens (in its own virtualenv, never a dependency of gemmascope or its tests): loads each
   ``saelens/`` folder with ``SAE.load_from_disk`` and encodes and decodes the same activations.
3. Compares: the same latents fire, and activations and reconstructions agree to fp32 precision.

The virtualenv is created when missing with the commands docs/saelens.md gives::

    python3 -m venv .venv-saelens
    .venv-saelens/bin/pip install "sae-lens==6.54.12" "torch==2.13.0"

Exit status 0 when every SAE matches, 1 otherwise; the report is printed as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gemmascope import export, sae  # noqa: E402
from gemmascope.eval import metrics  # noqa: E402

SAELENS_REQUIREMENTS = ("sae-lens==6.54.12", "torch==2.13.0")
# (architecture, sweep values, site, d_in): attn_z of 4 heads x 8 dims tests hook_z reshaping.
CASES = (
    ("jumprelu", [1e-3, 3e-3], "resid_post/2", 32),
    ("gated", [0.1], "mlp_out/1", 32),
    ("batchtopk", [8], "resid_post/0", 32),
    ("topk", [4, 12], "attn_z/3", 32),
)
ATTN_HEADS = 4
WIDTH = 96
N_TOKENS = 256
# fp32: SAELens (torch) and we (XLA, HIGHEST) round the same products differently in the last bits.
RTOL, ATOL_PER_SCALE = 1e-5, 1e-5

# Run inside the SAELens virtualenv: loads every SAE, encodes and decodes the cases' inputs.
SAELENS_PROGRAM = r"""
import json, sys
import numpy as np, torch
import sae_lens
from sae_lens import SAE
out = {"sae_lens_version": sae_lens.__version__, "saes": []}
for folder in json.loads(sys.argv[1]):
    case = np.load(folder + "/roundtrip_case.npz")
    sae = SAE.load_from_disk(folder + "/saelens")
    x = torch.from_numpy(case["x"])
    if sae.cfg.reshape_activations == "hook_z":
        x = x.reshape(x.shape[0], int(case["heads"]), -1)  # TransformerLens's (.., heads, d_head)
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f).reshape(f.shape[0], -1)
    np.savez(folder + "/roundtrip_saelens.npz", f=f.numpy(), x_hat=x_hat.numpy())
    out["saes"].append({"folder": folder, "class": type(sae).__name__,
                        "architecture": sae.cfg.architecture(),
                        "hook_name": sae.cfg.metadata.hook_name})
print(json.dumps(out))
"""


def _trainer_run(workdir: str, arch_name: str, values, site: str, d_in: int, seed: int) -> str:
    """Writes runs/<job>/job.json + final_params.npz as the trainer does; returns the job name."""
    arch = sae.ARCHITECTURES[arch_name]
    cfg = arch.default_config()
    rng = np.random.default_rng(seed)
    members = []
    for index, _ in enumerate(values):
        params = {
            k: np.array(v)
            for k, v in arch.init(jax.random.key(seed + index), d_in, WIDTH, cfg).items()
        }
        for key, value in params.items():  # non-trivial biases: folding b_dec must matter
            if key.startswith("b_") or key == "r_mag":
                params[key] = rng.normal(size=value.shape).astype(np.float32) * 0.2
        if "threshold" in params:
            params["threshold"] = rng.uniform(0.05, 0.3, size=WIDTH).astype(np.float32)
        if "log_threshold" in params:
            params["log_threshold"] = np.log(rng.uniform(0.05, 0.3, size=WIDTH)).astype(np.float32)
        if "running_threshold" in params:
            params["running_threshold"] = np.float32(0.2)
        members.append(params)
    name = f"{site.replace('/', '-')}-{arch_name}"
    run_dir = os.path.join(workdir, "runs", name)
    os.makedirs(run_dir)
    np.savez(
        os.path.join(run_dir, "final_params.npz"),
        **{k: np.stack([m[k] for m in members]) for k in members[0]},
    )
    job = {
        "name": name,
        "site": site,
        "model": "google/gemma-2-2b",
        "arch": arch_name,
        "width": WIDTH,
        "sae": cfg.to_dict(),
        "norm_scale": 2.5,
        "d_in": d_in,
        "tokens_trained": 4096,
        "sweep_field": arch.sweep_field(cfg),
        "members": [{"sweep_value": v, "seed": 0} for v in values],
    }
    with open(os.path.join(run_dir, "job.json"), "w") as f:
        json.dump(job, f)
    return name


def write_cases(workdir: str) -> list[str]:
    """Exports every case and writes its inputs and our outputs; returns the SAE folders."""
    folders = []
    for seed, (arch_name, values, site, d_in) in enumerate(CASES):
        job = _trainer_run(workdir, arch_name, values, site, d_in, seed)
        folders += export.export_run(workdir, job)
    rng = np.random.default_rng(0)
    for folder in folders:
        config = export.layout.read_config(folder)
        params = export.load_npz(os.path.join(folder, "params.npz"))
        x = (rng.normal(size=(N_TOKENS, config["d_in"])) * 3.0).astype(np.float32)
        encoder = config["encoder"]
        if encoder["type"] == "topk":
            f = metrics.topk_encode_released(params, x, encoder["k"], encoder["k"])
        else:
            f = metrics.encode_released(params, x)
        x_hat = metrics.decode_released(params, f)
        np.savez(
            os.path.join(folder, "roundtrip_case.npz"),
            x=x,
            f=np.asarray(f),
            x_hat=np.asarray(x_hat),
            heads=ATTN_HEADS,
        )
    return folders


def ensure_venv(venv: str) -> str:
    """The virtualenv's python, creating the virtualenv with SAELens when it is missing."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        print(f"creating {venv} with {' '.join(SAELENS_REQUIREMENTS)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", *SAELENS_REQUIREMENTS], check=True)
    return python


def compare(folder: str) -> dict:
    """Our outputs against SAELens's for one SAE folder."""
    ours = np.load(os.path.join(folder, "roundtrip_case.npz"))
    theirs = np.load(os.path.join(folder, "roundtrip_saelens.npz"))
    scale = float(np.abs(ours["f"]).max())
    f_close = np.allclose(theirs["f"], ours["f"], rtol=RTOL, atol=ATOL_PER_SCALE * scale)
    x_scale = float(np.abs(ours["x_hat"]).max())
    x_close = np.allclose(theirs["x_hat"], ours["x_hat"], rtol=RTOL, atol=ATOL_PER_SCALE * x_scale)
    same_firing = bool(np.array_equal(theirs["f"] != 0, ours["f"] != 0))
    return {
        "same_firing": same_firing,
        "mean_l0": float((ours["f"] != 0).sum(-1).mean()),
        "max_abs_diff_f": float(np.abs(theirs["f"] - ours["f"]).max()),
        "max_abs_diff_x_hat": float(np.abs(theirs["x_hat"] - ours["x_hat"]).max()),
        "ok": bool(same_firing and f_close and x_close),
    }


def main() -> int:
    """Runs the round trip; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=os.path.join(REPO, ".venv-saelens"))
    parser.add_argument("--keep", default=None, help="write the SAEs here and keep them")
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    workdir = args.keep or tempfile.mkdtemp(prefix="saelens_roundtrip_")
    folders = write_cases(workdir)
    result = subprocess.run(
        [python, "-c", SAELENS_PROGRAM, json.dumps(folders)],
        check=True,
        capture_output=True,
        text=True,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    status = 0
    for info in loaded["saes"]:
        row = {
            "sae": os.path.relpath(info["folder"], os.path.join(workdir, "saes")),
            "sae_lens": loaded["sae_lens_version"],
            "class": info["class"],
            "hook_name": info["hook_name"],
            **compare(info["folder"]),
        }
        status |= 0 if row["ok"] else 1
        print(json.dumps(row), flush=True)
    print("all SAEs match" if status == 0 else "MISMATCH", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
