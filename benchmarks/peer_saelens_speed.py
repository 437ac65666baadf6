"""The peer's side of benchmarks/vs_saelens.py: SAELens's JumpReLU trainer, timed on our arrays.

Runs inside SAELens's own virtualenv (benchmarks/saelens_env.py), importing only numpy, torch and
sae_lens:

    .venv-saelens/bin/python benchmarks/peer_saelens_speed.py SPEC.json OUT.json

SPEC.json names the train array (.npy float32 (n, d_in), already normalised), the width, the
batch size, the JumpReLU knobs, the thread count and `steps`: a list of step counts. For each
count a fresh `JumpReLUTrainingSAE` is trained through SAELens's own `SAETrainer.fit()` (its step,
Adam, schedules, grad clipping and dead-latent bookkeeping) on batches drawn from the array, and
the wall time of `fit()` is recorded. The orchestrator takes differences between counts, so
construction and start-up costs cancel and what remains is the trainer's time per step.
"""

import json
import sys
import time

import numpy as np
import torch
from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer


def _batches(train: np.ndarray, batch_size: int, seed: int):
    """Endless batches of random rows (the same kind of gather our ArraySource does)."""
    rng = np.random.default_rng(seed)
    while True:
        rows = np.sort(rng.choice(len(train), batch_size, replace=False))
        yield torch.from_numpy(np.ascontiguousarray(train[rows]))


def _fit_seconds(spec: dict, train: np.ndarray, steps: int) -> float:
    """Wall seconds of SAETrainer.fit() for `steps` steps of a fresh JumpReLU SAE."""
    batch = spec["batch_size"]
    sae = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=train.shape[1],
            d_sae=spec["width"],
            dtype="float32",
            device="cpu",
            normalize_activations="none",
            jumprelu_init_threshold=spec["threshold_init"],
            jumprelu_bandwidth=spec["bandwidth"],
            l0_coefficient=spec["sparsity_coeff"],
            l0_warm_up_steps=0,
        )
    )
    trainer_cfg = SAETrainerConfig(
        total_training_samples=batch * steps,
        train_batch_size_samples=batch,
        lr=spec["lr"],
        lr_end=spec["lr"],
        lr_warm_up_steps=0,
        device="cpu",
        dead_feature_window=1000,
    )
    trainer = SAETrainer(trainer_cfg, sae, _batches(train, batch, spec["seed"]))
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main(spec_path: str, out_path: str) -> None:
    """Times fit() once per step count in the spec; writes {"seconds": [...]} as JSON."""
    with open(spec_path) as f:
        spec = json.load(f)
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["threads"])
    train = np.load(spec["train"], mmap_mode="r")
    seconds = [_fit_seconds(spec, train, steps) for steps in spec["steps"]]
    with open(out_path, "w") as f:
        json.dump({"steps": spec["steps"], "seconds": seconds, "threads": spec["threads"]}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
