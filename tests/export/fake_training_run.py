"""A finished training run shaped like the trainer's output, for export and eval tests.

``fake_run`` writes ``workdir/runs/<job>/job.json`` and ``final_params.npz`` exactly as
``gemmascope.train`` does (docs/internals.md), with params from the architecture's own ``init``
and randomised biases/thresholds, so export and evaluation can be tested without training.
"""

import json
import os

import jax
import numpy as np

from gemmascope import sae


def fake_run(
    workdir,
    arch_name,
    sweep_values,
    *,
    d_in,
    width,
    site,
    norm_scale,
    seeds=(0,),
    seed=0,
    overrides=None,
):
    """Writes runs/<job>/job.json + final_params.npz as the trainer does.

    ``overrides`` updates the architecture's default config; with ``unit_norm_decoder`` False
    the decoder rows get random norms in [0.05, 3], as a free decoder ends training.

    Returns:
      (job name, architecture config, sweep field, list of per-member params dicts).
    """
    arch = sae.ARCHITECTURES[arch_name]
    cfg = arch.default_config()
    cfg.update(overrides or {})
    field = arch.sweep_field(cfg) if hasattr(arch, "sweep_field") else arch.SWEEP_FIELD
    members = [{"sweep_value": v, "seed": s} for v in sweep_values for s in seeds]
    rng = np.random.default_rng(seed)
    per_member = []
    for i, _ in enumerate(members):
        p = {k: np.array(v) for k, v in arch.init(jax.random.key(i), d_in, width, cfg).items()}
        # Non-trivial biases and thresholds so that folding C and b_dec really matters.
        for key, value in p.items():
            if key.startswith("b_") or key == "r_mag":
                p[key] = rng.normal(size=value.shape).astype(np.float32) * 0.1
        if "log_threshold" in p:
            p["log_threshold"] = np.log(rng.uniform(0.05, 0.2, size=width)).astype(np.float32)
        if "threshold" in p:
            p["threshold"] = rng.uniform(0.05, 0.2, size=width).astype(np.float32)
        if "running_threshold" in p:
            p["running_threshold"] = np.float32(0.1)
        if not cfg.unit_norm_decoder:
            p["W_dec"] = p["W_dec"] * rng.uniform(0.05, 3.0, size=(width, 1)).astype(np.float32)
        per_member.append(p)
    stacked = {k: np.stack([p[k] for p in per_member]) for k in per_member[0]}
    kind, layer = site.split("/")
    name = f"{kind}-L{layer}-w{width}-{arch_name}"
    run_dir = os.path.join(workdir, "runs", name)
    os.makedirs(run_dir)
    np.savez(os.path.join(run_dir, "final_params.npz"), **stacked)
    job = {
        "name": name,
        "site": site,
        "target_site": "",  # the trainer's job.json has it ("" for an SAE)
        "model": "tiny",
        "arch": arch_name,
        "width": width,
        "sae": cfg.to_dict(),
        "sweep_values": list(sweep_values),
        "seeds": list(seeds),
        "norm_scale": norm_scale,
        "d_in": d_in,
        "tokens_trained": 4096,
        "sweep_field": field,
        "members": members,
    }
    with open(os.path.join(run_dir, "job.json"), "w") as f:
        json.dump(job, f)
    return name, cfg, field, per_member


def fake_transcoder_run(workdir, arch_name, skip, *, d_in, d_out, width, c_in, c_out, site=1):
    """runs/<job>/job.json + final_params.npz as train_sweep writes them for a transcoder.

    Of ``mlp_in/<site> -> mlp_out/<site>``, one member, trained on x / c_in -> y / c_out.

    Returns:
      (job name, the member's training-form params).
    """
    cfg = sae.ARCHITECTURES[arch_name].default_config()
    cfg.update(d_out=d_out, skip_connection=skip, pre_encoder_bias=False, threshold_param="raw")
    rng = np.random.default_rng(0)
    init = sae.get(arch_name).init(jax.random.key(0), d_in, width, cfg)
    params = {k: np.array(v) for k, v in init.items()}
    for key in ("b_enc", "b_dec"):
        params[key] = rng.normal(size=params[key].shape).astype(np.float32) * 0.1
    if skip:
        params["W_skip"] = rng.normal(size=(d_in, d_out)).astype(np.float32)
    if "threshold" in params:
        params["threshold"] = rng.uniform(0.05, 0.2, width).astype(np.float32)
    name = f"transcoder-{arch_name}-{skip}"
    run_dir = os.path.join(workdir, "runs", name)
    os.makedirs(run_dir)
    np.savez(os.path.join(run_dir, "final_params.npz"), **{k: v[None] for k, v in params.items()})
    value = 1e-3
    job = {
        "name": name, "site": f"mlp_in/{site}", "target_site": f"mlp_out/{site}", "model": "tiny",
        "arch": arch_name, "width": width, "sae": cfg.to_dict(), "norm_scale": c_in,
        "target_norm_scale": c_out, "d_in": d_in, "d_out": d_out, "tokens_trained": 100,
        "steps": 10, "sweep_field": sae.get(arch_name).sweep_field(cfg),
        "members": [{"sweep_value": value, "seed": 0}],
    }  # fmt: skip
    with open(os.path.join(run_dir, "job.json"), "w") as f:
        json.dump(job, f)
    return name, params
