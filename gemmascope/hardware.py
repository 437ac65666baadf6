"""Peak figures of the accelerators that `--mode=plan` can estimate wall time for.

Synopsis:
    from gemmascope import hardware
    chip = hardware.get("tpu_v3")       # hardware.Accelerator
    chip.peak_flops, chip.memory_bytes  # 123e12 FLOP/s (bf16 matmul peak), 32 GiB

Every figure is the vendor's published per-chip peak for dense bf16 matrix products (no structured
sparsity) and the per-chip high-bandwidth memory; the source of each is in `source` and in
docs/scaling.md. Estimated wall time = FLOPs / (chips x peak x MFU), with MFU (model FLOP
utilisation) a config field: Gemma Scope reports 50.8% for a 131k-wide SAE on 8 TPU v3 chips
(SPEC §7).
"""

from __future__ import annotations

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One accelerator chip.

    Attributes:
        name: Short name used in configs (`config.plan.accelerator`).
        description: Human-readable name.
        peak_flops: Peak dense bf16 matmul FLOP/s per chip (no sparsity).
        memory_bytes: High-bandwidth memory per chip, in bytes.
        source: Where the figures come from.
    """

    name: str
    description: str
    peak_flops: float
    memory_bytes: float
    source: str


ACCELERATORS = {
    chip.name: chip
    for chip in (
        Accelerator(
            "tpu_v3",
            "Cloud TPU v3 chip (2 TensorCores)",
            123e12,
            32 * GiB,
            "https://cloud.google.com/tpu/docs/v3 (123 TFLOPs bf16, 32 GiB HBM2 per chip)",
        ),
        Accelerator(
            "tpu_v4",
            "Cloud TPU v4 chip",
            275e12,
            32 * GiB,
            "https://cloud.google.com/tpu/docs/v4 (275 TFLOPs bf16, 32 GiB HBM2 per chip)",
        ),
        Accelerator(
            "tpu_v5p",
            "Cloud TPU v5p chip",
            459e12,
            95e9,
            "https://cloud.google.com/tpu/docs/v5p (459 TFLOPs bf16, 95 GB HBM2e per chip)",
        ),
        Accelerator(
            "a100",
            "NVIDIA A100 SXM4 80GB",
            312e12,
            80e9,
            "NVIDIA A100 datasheet (312 TFLOPS BF16 Tensor Core dense; 624 with sparsity)",
        ),
        Accelerator(
            "h100",
            "NVIDIA H100 SXM5 80GB",
            989.4e12,
            80e9,
            "NVIDIA H100 datasheet (1,979 TFLOPS BF16 with sparsity; half that dense)",
        ),
    )
}


def get(name: str) -> Accelerator:
    """Returns the accelerator called `name`.

    Raises:
        ValueError: `name` is not one of ACCELERATORS.
    """
    if name not in ACCELERATORS:
        raise ValueError(
            f"Unknown accelerator {name!r}; valid accelerators: {', '.join(sorted(ACCELERATORS))}."
        )
    return ACCELERATORS[name]
