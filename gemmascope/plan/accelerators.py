"""Peak figures of the accelerators that `--mode=plan` can estimate wall time for.

Synopsis:
    from gemmascope import plan
    chip = plan.accelerators.get("tpu_v3")   # plan.Accelerator
    chip.peak_flops, chip.memory_bytes  # 123e12 FLOP/s (bf16 matmul peak), 32 GiB
    chip.device_memory_bytes            # 16 GiB: a v3 chip is two JAX devices (TensorCores)
    chip.devices_per_host               # 8: the local devices one process shards the LM over

Every figure is the vendor's published per-chip peak for dense bf16 matrix products (no structured
sparsity) and the per-chip high-bandwidth memory; the source of each is in `source` and in
docs/scaling.md. Estimated wall time = FLOPs / (chips x peak x MFU), with MFU (model FLOP
utilisation) a config field: Gemma Scope reports 50.8% for a 131k-wide SAE on 8 TPU v3 chips
(docs/recipe.md#throughput).
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
        devices_per_chip: JAX devices per chip (TPU v3: one per TensorCore, each with half the
            chip's HBM; megacore TPUs and GPUs: one).
        chips_per_host: Chips attached to one host, i.e. one JAX process (TPU VMs: 4; a typical
            HGX/DGX GPU server: 8).
        device_kinds: The `jax.Device.device_kind` strings of this chip's devices (a trailing
            "*" matches any suffix), so a run can find its peak (`for_device`).
    """

    name: str
    description: str
    peak_flops: float
    memory_bytes: float
    source: str
    devices_per_chip: int = 1
    chips_per_host: int = 4
    device_kinds: tuple[str, ...] = ()

    @property
    def device_peak_flops(self) -> float:
        """Peak FLOP/s of one JAX device (a TPU v3 TensorCore is half a chip)."""
        return self.peak_flops / self.devices_per_chip

    def matches(self, device_kind: str) -> bool:
        """Whether a device of `device_kind` is one of this chip's devices."""
        return any(
            device_kind.startswith(kind[:-1]) if kind.endswith("*") else device_kind == kind
            for kind in self.device_kinds
        )

    @property
    def device_memory_bytes(self) -> float:
        """HBM of one JAX device, the unit a model-parallel LM shard must fit in."""
        return self.memory_bytes / self.devices_per_chip

    @property
    def devices_per_host(self) -> int:
        """JAX devices local to one process on a full host."""
        return self.devices_per_chip * self.chips_per_host


ACCELERATORS = {
    chip.name: chip
    for chip in (
        Accelerator(
            "tpu_v3",
            "Cloud TPU v3 chip (2 TensorCores)",
            123e12,
            32 * GiB,
            "https://cloud.google.com/tpu/docs/v3 (123 TFLOPs bf16, 32 GiB HBM2 per chip; "
            "2 TensorCores per chip, each a JAX device with 16 GiB; 4 chips per host)",
            devices_per_chip=2,
            chips_per_host=4,
            device_kinds=("TPU v3",),
        ),
        Accelerator(
            "tpu_v4",
            "Cloud TPU v4 chip",
            275e12,
            32 * GiB,
            "https://cloud.google.com/tpu/docs/v4 (275 TFLOPs bf16, 32 GiB HBM2 per chip; "
            "megacore: one JAX device per chip; 4 chips per host)",
            device_kinds=("TPU v4",),
        ),
        Accelerator(
            "tpu_v5p",
            "Cloud TPU v5p chip",
            459e12,
            95e9,
            "https://cloud.google.com/tpu/docs/v5p (459 TFLOPs bf16, 95 GB HBM2e per chip; "
            "megacore: one JAX device per chip; 4 chips per host)",
            device_kinds=("TPU v5", "TPU v5p"),
        ),
        Accelerator(
            "a100",
            "NVIDIA A100 SXM4 80GB",
            312e12,
            80e9,
            "NVIDIA A100 datasheet (312 TFLOPS BF16 Tensor Core dense; 624 with sparsity); "
            "8 GPUs per HGX A100 host",
            chips_per_host=8,
            device_kinds=("NVIDIA A100*",),
        ),
        Accelerator(
            "h100",
            "NVIDIA H100 SXM5 80GB",
            989.4e12,
            80e9,
            "NVIDIA H100 datasheet (1,979 TFLOPS BF16 with sparsity; half that dense); "
            "8 GPUs per HGX H100 host",
            chips_per_host=8,
            device_kinds=("NVIDIA H100*",),
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


def for_device(device) -> Accelerator | None:
    """The accelerator whose devices `device` (a `jax.Device`) is one of; None if unknown (CPU)."""
    for chip in ACCELERATORS.values():
        if chip.matches(device.device_kind):
            return chip
    return None
