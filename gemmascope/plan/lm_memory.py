"""The language model's memory per device when capturing, streaming or evaluating (plan mode).

Synopsis:
    from gemmascope.plan import accelerators, lm_memory
    lms = lm_memory.plan_lm(config, model_cfg, accelerators.get("tpu_v3"), n_chips=8)
    lms[0].stage       # "capture"; lms[1] is "eval"
    lms[0].params_bytes_per_device, lms[0].activation_bytes_per_device, lms[0].fits
    lm_memory.activation_bytes(model_cfg, stage="eval", sequences=2, seq_len=1024,
                               model_parallel=4, ...)

Capture and streaming (`cache.model_parallel`) and evaluation (`eval.model_parallel`) run the LM
on one process's local devices, its params sharded over the model axis. Per device this counts
the exact parameter bytes (`model.params.bytes_per_device`: a dimension the model axis does not
divide stays whole) plus an activation estimate (`activation_bytes`), and lists the
model_parallel values whose total fits one device (docs/scaling.md). One process is assumed to
hold min(one host, `plan.n_chips`) chips (`accelerators.Accelerator.devices_per_host`).
"""

from __future__ import annotations

import dataclasses
import functools

import ml_collections

from gemmascope.eval import config as eval_config
from gemmascope.model import params as lm_params
from gemmascope.model import sites as model_sites
from gemmascope.plan import accelerators

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def activation_bytes(
    model_cfg,
    *,
    stage: str,
    sequences: int,
    seq_len: int,
    model_parallel: int,
    compute_bytes: int,
    site_dims: list[int],
    site_bytes: int,
    splice_batch: int = 1,
) -> float:
    """Estimated activation bytes on one device of the LM's (data, model) mesh.

    Counts, for the `sequences` rows of a batch this device holds: one layer's working set (the
    residual stream and ~3 temporaries of it, the gate/up/product MLP arrays and the fp32
    attention scores and probabilities, the last two split over the model axis), plus the
    captured sites held to the end (`site_dims` x `site_bytes`), plus for evaluation the fp32
    log-probabilities over the vocabulary: the clean pass's and, per spliced SAE of a vmapped
    chunk, its logits, log-probs and the reference's (1 + 3 x `splice_batch` arrays). XLA may
    fuse or rematerialise some of these; treat the figure as an order of magnitude.
    """
    if stage not in ("capture", "eval"):
        raise ValueError(f"stage must be 'capture' or 'eval', got {stage!r}")
    tokens = sequences * seq_len
    heads = -(-model_cfg.num_attention_heads // model_parallel)
    mlp = -(-model_cfg.intermediate_size // model_parallel)
    layer = tokens * (4 * model_cfg.hidden_size + 3 * mlp) * compute_bytes
    layer += sequences * heads * seq_len * seq_len * 4 * 2
    captured = tokens * sum(site_dims) * site_bytes
    logits = 0.0
    if stage == "eval":
        vocab = -(-model_cfg.vocab_size // model_parallel)
        logits = tokens * vocab * 4 * (1 + 3 * splice_batch)
    return float(layer + captured + logits)


@dataclasses.dataclass
class LmPlan:
    """Memory of the language model on one device, when capturing or evaluating.

    Attributes:
        stage: "capture" (the cache and the streaming source) or "eval".
        field: The config field setting `model_parallel`.
        model_parallel: Devices on the model axis.
        local_devices: Devices of one process (one host, or `n_chips` if fewer).
        params_bytes_per_device: Exact parameter bytes per device.
        activation_bytes_per_device: The `activation_bytes` estimate.
        device_memory_bytes: Memory of one device of the accelerator.
        replicated: Sharded logical axes the model axis does not divide ("kv_heads (8)").
        fitting: model_parallel values (divisors of `local_devices`) whose total fits.
    """

    stage: str
    field: str
    model_parallel: int
    local_devices: int
    params_bytes_per_device: float
    activation_bytes_per_device: float
    device_memory_bytes: float
    replicated: list[str]
    fitting: list[int]

    @property
    def bytes_per_device(self) -> float:
        """Parameters + activations per device."""
        return self.params_bytes_per_device + self.activation_bytes_per_device

    @property
    def valid(self) -> bool:
        """Whether `model_parallel` divides the local device count."""
        return self.local_devices % self.model_parallel == 0

    @property
    def fits(self) -> bool:
        """Valid and within one device's memory."""
        return self.valid and self.bytes_per_device <= self.device_memory_bytes


def _lm_bytes(
    model_cfg,
    model_parallel: int,
    *,
    local_devices: int,
    batch_size: int,
    dtype: str,
    **activation_args,
) -> tuple[float, float]:
    """(params, activations) bytes per device; the batch splits over local / model devices."""
    data_shards = max(local_devices // model_parallel, 1)
    activations = activation_bytes(
        model_cfg,
        sequences=-(-batch_size // data_shards),
        model_parallel=model_parallel,
        compute_bytes=BYTES[dtype],
        **activation_args,
    )
    return lm_params.bytes_per_device(model_cfg, model_parallel, dtype), activations


def plan_lm(
    config: ml_collections.ConfigDict,
    model_cfg,
    accelerator: accelerators.Accelerator,
    n_chips: int,
) -> list[LmPlan]:
    """LmPlans of capture (`cache.model_parallel`) and eval (`eval.model_parallel`)."""
    dtype = config.model.get("dtype", "float32") or "float32"
    local_devices = min(accelerator.devices_per_host, n_chips * accelerator.devices_per_chip)
    divisors = [m for m in range(1, local_devices + 1) if local_devices % m == 0]
    sites = model_sites.resolve(model_cfg, list(config.sites))
    common = dict(
        local_devices=local_devices,
        dtype=dtype,
        seq_len=int(config.data.seq_len),
        site_dims=[model_sites.dim(model_cfg, site) for site in sites],
    )
    stages = {  # stage: (config section, its arguments to _lm_bytes)
        "capture": ("cache", dict(site_bytes=BYTES[config.cache.dtype], splice_batch=1)),
        # Plans are for accelerators: eval's accelerator default of splice_batch.
        "eval": (
            "eval",
            dict(
                site_bytes=BYTES[dtype],
                splice_batch=eval_config.splice_batch(config.eval, backend="tpu"),
            ),
        ),
    }
    plans = []
    for stage, (section, args) in stages.items():
        field = f"{section}.model_parallel"
        model_parallel = lm_params.check_model_parallel(config[section].model_parallel, field)
        cost = functools.partial(
            _lm_bytes,
            model_cfg,
            stage=stage,
            batch_size=int(config[section].batch_size),
            **common,
            **args,
        )
        params_bytes, activations = cost(model_parallel)
        replicated = lm_params.replicated_params(model_cfg, model_parallel)
        plans.append(
            LmPlan(
                stage=stage,
                field=field,
                model_parallel=model_parallel,
                local_devices=local_devices,
                params_bytes_per_device=params_bytes,
                activation_bytes_per_device=activations,
                device_memory_bytes=accelerator.device_memory_bytes,
                replicated=sorted({f"{axis} ({size})" for _, axis, size in replicated}),
                fitting=[m for m in divisors if sum(cost(m)) <= accelerator.device_memory_bytes],
            )
        )
    return plans
