"""The peer's side of the recovery benchmark: train SAELens SAEs on the arrays we train on.

Runs inside SAELens's own virtualenv (made by `benchmarks/saelens_env.py`; SAELens and PyTorch are
never dependencies of gemmascope or its tests), so it imports only numpy, torch and sae_lens:

    .venv-saelens/bin/python benchmarks/peer_saelens.py SPEC.json OUT.npz

SPEC.json names the train and eval arrays (.npy, float32 (n, d), already normalised to
E||x||² = 1 so no activation scaling is applied on either side), the architecture and its knobs.
Training goes through SAELens's own `SAETrainer` (its Adam, its lr and coefficient schedules, its
grad-norm clip of 1.0 and its dead-latent bookkeeping), fed batch after batch from a fixed
permutation of the train array per epoch. OUT.npz gets the learned decoder (for MMCS) and the
eval statistics computed from `sae.encode`/`sae.decode` on the eval array: per-latent firing
counts, mean L0 and FVU.
"""

import json
import sys

import numpy as np
import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer


def _batches(train: np.ndarray, batch_size: int, seed: int):
    """Endless batches: each epoch a fresh permutation of the rows (as our ArraySource does)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    position = 0
    while True:
        if position + batch_size > len(order):
            order = np.concatenate([order[position:], rng.permutation(len(train))])
            position = 0
        rows = np.sort(order[position : position + batch_size])
        position += batch_size
        yield torch.from_numpy(np.ascontiguousarray(train[rows]))


def _make_sae(spec: dict, d_in: int):
    """The SAELens training SAE of spec["arch"] with the spec's knobs."""
    common = dict(
        d_in=d_in,
        d_sae=spec["width"],
        dtype="float32",
        device="cpu",
        normalize_activations="none",
        decoder_init_norm=spec.get("decoder_init_norm", 0.1),
    )
    arch, value = spec["arch"], spec["value"]
    warmup = spec["sparsity_warmup_steps"]
    if arch == "jumprelu":
        cfg = JumpReLUTrainingSAEConfig(
            **common,
            jumprelu_init_threshold=spec["threshold_init"],
            jumprelu_bandwidth=spec["bandwidth"],
            l0_coefficient=value,
            l0_warm_up_steps=warmup,
        )
        return JumpReLUTrainingSAE(cfg)
    if arch == "gated":
        cfg = GatedTrainingSAEConfig(**common, l1_coefficient=value, l1_warm_up_steps=warmup)
        return GatedTrainingSAE(cfg)
    if arch == "relu":
        cfg = StandardTrainingSAEConfig(**common, l1_coefficient=value, l1_warm_up_steps=warmup)
        return StandardTrainingSAE(cfg)
    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=int(value)))
    if arch == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=float(value)))
    raise ValueError(f"unknown arch {arch!r}; valid: jumprelu, gated, relu, topk, batchtopk")


def main(spec_path: str, out_path: str) -> None:
    """Trains one SAE as the spec says and writes its decoder and eval statistics."""
    with open(spec_path) as f:
        spec = json.load(f)
    torch.manual_seed(spec["seed"])
    # One thread: the shapes are small, and the benchmark runs peers side by side with ours.
    torch.set_num_threads(spec.get("threads", 1))
    train = np.load(spec["train"], mmap_mode="r")
    evaluation = np.load(spec["eval"])
    sae = _make_sae(spec, train.shape[1])
    batch, steps = spec["batch_size"], spec["steps"]
    trainer_cfg = SAETrainerConfig(
        total_training_samples=batch * steps,
        train_batch_size_samples=batch,
        lr=spec["lr"],
        lr_end=spec["lr"],
        lr_warm_up_steps=spec["lr_warmup_steps"],
        adam_beta1=spec["adam_b1"],
        adam_beta2=spec["adam_b2"],
        device="cpu",
        dead_feature_window=spec.get("dead_feature_window", 1000),
    )
    trainer = SAETrainer(trainer_cfg, sae, _batches(train, batch, spec["seed"]))
    sae = trainer.fit()
    with torch.no_grad():
        x = torch.from_numpy(evaluation)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        fired = (f != 0).sum(0).numpy().astype(np.int64)
        l0 = float((f != 0).sum(-1).float().mean())
        fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        w_dec = sae.W_dec.detach().numpy().astype(np.float32)
    np.savez(out_path, W_dec=w_dec, fired=fired, l0=np.float64(l0), fvu=np.float64(fvu))


if __name__ == "__main__":
    main(*sys.argv[1:])
