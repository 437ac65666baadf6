"""What a study will cost, before anything runs: FLOPs, wall time, memory and storage.

Synopsis:
    from gemmascope import plan
    study_plan = plan.make_plan(config, model_cfg)   # plan.StudyPlan (jobs, cache, .lm)
    plan.sae_step_seconds(d_in=3584, width=2**17, batch_size=4096, n_saes=1,
                          accelerator="tpu_v3", n_chips=8, mfu=0.508)   # ~0.046 s

For each job (one site x width x architecture, S stacked SAEs): training FLOPs, the step time and
wall time on `config.plan.accelerator` x `config.plan.n_chips` at `config.plan.mfu`, and parameter,
optimizer and activation memory per device for the job's mesh. For each site: the activation cache
bytes. The estimates follow docs/recipe.md#throughput:

- training FLOPs = 6 x (SAE matrix parameters) x tokens per SAE (forward 2, backward 4 FLOPs per
  parameter per token; the standard estimate docs/recipe.md#throughput uses for the 45 ms / 50.8%
  MFU example), x 1.5 for Gated SAEs (their decoder runs twice, docs/recipe.md#gated); the
  matrices are W_enc (d_in x width) and W_dec (width x d_out), d_out = d_in for an SAE and the
  target's width for a transcoder, plus W_skip (d_in x d_out) for a skip-transcoder;
- step time = FLOPs per step / (chips x peak x MFU);
- cache bytes = cached tokens x d_in x bytes per element (fp32 = 4: 8B tokens of one 9B site is
  ~104 TiB, the "about 100 TiB" of docs/recipe.md#storage);
- caching = one LM forward pass (2 x LM parameters FLOPs per token) over the largest site's
  tokens, which captures every site at once;
- memory per device = S x params x 4 bytes x 3 (params + Adam's two moments), divided by the
  model axis for latent-sharded SAEs, plus the step's (batch, latent) activations, about 4 fp32
  arrays of (batch / data shards) x (width / model shards) x S.

Memory is always per JAX *device*, the unit a mesh axis counts and an array is placed on: a chip
for GPUs and megacore TPUs (v4, v5p), a TensorCore with half the chip's memory on TPU v3
(`Accelerator.device_memory_bytes`). A job's mesh spans `n_chips x devices_per_chip` devices, as
`mesh.data = -1` does on the real machine (resolved by `gemmascope.mesh.axis_sizes`, as the
trainer's mesh is).

For the language model (capture, streaming and evaluation): its memory per device with
`cache.model_parallel` / `eval.model_parallel`, flagged against one device's memory
(`gemmascope.plan.lm_memory`). The text `--mode=plan` prints is
`gemmascope.plan.report`.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from gemmascope import mesh as mesh_lib
from gemmascope.model import sites as model_sites
from gemmascope.plan import accelerators, lm_memory
from gemmascope.study import jobs

# Gated SAEs run the decoder twice per step (docs/recipe.md#gated: ~1.5x compute).
ARCH_FLOP_FACTOR = {"gated": 1.5}
# fp32 arrays of shape (batch, latents) alive in one step: pre-activations, codes, and their
# cotangents (an estimate; XLA may fuse some away).
BATCH_LATENT_ARRAYS = 4
BYTES = lm_memory.BYTES  # bytes per element of a dtype name


def _matrix_params(d_in: int, width: int, d_out: int | None, skip: bool) -> int:
    """W_enc (d_in x width) + W_dec (width x d_out) [+ W_skip (d_in x d_out)]."""
    out = d_in if d_out is None else int(d_out)
    return d_in * width + width * out + (d_in * out if skip else 0)


def sae_param_count(d_in: int, width: int, d_out: int | None = None, skip: bool = False) -> int:
    """Parameters of one SAE: W_enc, W_dec, b_enc, threshold, b_dec (and a transcoder's W_skip).

    `d_out`: a transcoder's target width (None: an SAE, d_out = d_in); `skip`: a
    skip-transcoder's W_skip (d_in x d_out).
    """
    out = d_in if d_out is None else int(d_out)
    return _matrix_params(d_in, width, d_out, skip) + 2 * width + out


def sae_flops_per_token(
    d_in: int, width: int, arch: str = "jumprelu", d_out: int | None = None, skip: bool = False
) -> float:
    """Training FLOPs per token for one SAE (6 x matrix parameters, x1.5 for Gated)."""
    return 6.0 * _matrix_params(d_in, width, d_out, skip) * ARCH_FLOP_FACTOR.get(arch, 1.0)


def sae_step_flops(
    d_in: int,
    width: int,
    batch_size: int,
    n_saes: int,
    arch: str,
    d_out: int | None = None,
    skip: bool = False,
) -> float:
    """Training FLOPs of one step of `n_saes` stacked SAEs (the plan's, and the trainer's MFU)."""
    return sae_flops_per_token(d_in, width, arch, d_out, skip) * batch_size * n_saes


def sae_step_seconds(
    *,
    d_in: int,
    width: int,
    batch_size: int,
    n_saes: int,
    accelerator: str,
    n_chips: int,
    mfu: float,
    arch: str = "jumprelu",
) -> float:
    """Estimated seconds per training step of `n_saes` stacked SAEs on `n_chips` chips."""
    chip = accelerators.get(accelerator)
    flops = sae_step_flops(d_in, width, batch_size, n_saes, arch)
    return flops / (n_chips * chip.peak_flops * mfu)


def lm_param_count(model_cfg) -> int:
    """Parameters of the LM (tied embeddings counted once; Gemma 3's QK-norm gains included)."""
    return model_cfg.n_params()


def activation_storage_bytes(n_tokens: float, d_in: int, dtype: str = "float32") -> float:
    """Bytes of an activation cache of `n_tokens` rows of `d_in` values."""
    if dtype not in BYTES:
        raise ValueError(f"Unknown storage dtype {dtype!r}; valid: {', '.join(BYTES)}.")
    return float(n_tokens) * d_in * BYTES[dtype]


@dataclasses.dataclass
class JobPlan:
    """The estimate for one job (all its stacked SAEs)."""

    name: str
    site: str
    arch: str
    width: int
    d_in: int
    n_saes: int
    total_tokens: float
    steps: int
    mesh: tuple[int, int]
    flops: float
    step_seconds: float
    wall_seconds: float
    params_bytes_per_device: float
    optimizer_bytes_per_device: float
    activation_bytes_per_device: float
    group: str = ""

    @property
    def memory_bytes_per_device(self) -> float:
        """Parameters + optimizer state + step activations, per device."""
        return (
            self.params_bytes_per_device
            + self.optimizer_bytes_per_device
            + self.activation_bytes_per_device
        )


@dataclasses.dataclass
class StudyPlan:
    """The estimate for a whole study."""

    study: str
    accelerator: accelerators.Accelerator
    n_chips: int
    mfu: float
    storage_dtype: str
    jobs: list[JobPlan]
    cache_tokens: dict[str, float]
    storage_bytes: dict[str, float]
    lm_params: int
    lm: list[lm_memory.LmPlan] = dataclasses.field(default_factory=list)

    @property
    def cache_flops(self) -> float:
        """LM forward FLOPs to cache every site.

        One pass (2 FLOPs per parameter per token) over the largest site's tokens captures all
        sites at once.
        """
        return 2.0 * self.lm_params * max(self.cache_tokens.values(), default=0.0)

    @property
    def cache_seconds(self) -> float:
        """Estimated wall time of caching on `n_chips` chips at `mfu`."""
        return self.cache_flops / (self.n_chips * self.accelerator.peak_flops * self.mfu)

    @property
    def n_devices(self) -> int:
        """JAX devices of one job's mesh: chips x devices per chip."""
        return self.n_chips * self.accelerator.devices_per_chip

    def fits(self, job: JobPlan) -> bool:
        """Whether a job's SAE memory fits one device of the accelerator."""
        return job.memory_bytes_per_device <= self.accelerator.device_memory_bytes

    @property
    def n_saes(self) -> int:
        """Number of SAEs over all jobs."""
        return sum(job.n_saes for job in self.jobs)

    @property
    def total_storage_bytes(self) -> float:
        """Bytes of the activation cache over all sites."""
        return sum(self.storage_bytes.values())

    @property
    def total_flops(self) -> float:
        """Training FLOPs over all jobs."""
        return sum(job.flops for job in self.jobs)

    @property
    def total_wall_seconds(self) -> float:
        """Wall time if the jobs run one after another on `n_chips` chips."""
        return sum(job.wall_seconds for job in self.jobs)


def plan_job(
    job: ml_collections.ConfigDict,
    d_in: int,
    accelerator: accelerators.Accelerator,
    n_chips: int,
    mfu: float,
) -> JobPlan:
    """Estimates one job on `n_chips` chips of `accelerator` (its mesh spans their devices).

    A transcoder job's `sae.d_out` and `sae.skip_connection` (set by `jobs.expand`) size its
    decoder and skip matrix.
    """
    n_saes = len(job.sweep_values) * len(job.get("seeds", [0]))
    n_devices = n_chips * accelerator.devices_per_chip
    sizes = mesh_lib.axis_sizes(job.mesh, n_devices, field=f"the mesh of job {job.name}")
    data_shards, model_shards = sizes["data"], sizes["model"]
    steps = int(-(-float(job.total_tokens) // job.batch_size))
    d_out, skip = job.sae.get("d_out"), bool(job.sae.get("skip_connection"))
    flops_per_step = sae_step_flops(d_in, job.width, job.batch_size, n_saes, job.arch, d_out, skip)
    step_seconds = flops_per_step / (n_chips * accelerator.peak_flops * mfu)
    params_bytes = n_saes * sae_param_count(d_in, job.width, d_out, skip) * 4 / model_shards
    batch_latents = (job.batch_size / data_shards) * (job.width / model_shards) * n_saes
    return JobPlan(
        name=job.name,
        site=job.site,
        arch=job.arch,
        width=job.width,
        d_in=d_in,
        n_saes=n_saes,
        total_tokens=float(job.total_tokens),
        steps=steps,
        mesh=(data_shards, model_shards),
        flops=flops_per_step * steps,
        step_seconds=step_seconds,
        wall_seconds=step_seconds * steps,
        params_bytes_per_device=params_bytes,
        optimizer_bytes_per_device=2 * params_bytes,
        activation_bytes_per_device=BATCH_LATENT_ARRAYS * 4 * batch_latents,
    )


def make_plan(
    config: ml_collections.ConfigDict,
    model_cfg,
    selected: list[ml_collections.ConfigDict] | None = None,
) -> StudyPlan:
    """Plans a study (or the `selected` subset of its jobs).

    Args:
        config: A study config.
        model_cfg: The model's GemmaConfig (gemmascope.study.model_config).
        selected: Jobs to plan (default: every job of the study).

    Returns:
        The StudyPlan. The cache of a site holds as many tokens as its largest job trains on
        (Gemma Scope trains one pass over stored activations), capped by
        `config.data.max_sequences` x `config.data.seq_len` when the corpus is limited.
    """
    accelerator = accelerators.get(config.plan.accelerator)
    n_chips = int(config.plan.n_chips)
    if n_chips <= 0:
        raise ValueError(f"config.plan.n_chips must be positive, got {n_chips}.")
    if selected is None:
        selected = jobs.expand(config, model_cfg)
    groups = jobs.job_groups(config, model_cfg)
    storage_dtype = str(config.cache.get("dtype", "float32"))
    corpus_tokens = _corpus_token_cap(config.data)
    job_plans, cache_tokens, storage = [], {}, {}
    for job in selected:
        d_in = model_sites.dim(model_cfg, job.site)
        job_plans.append(plan_job(job, d_in, accelerator, n_chips, float(config.plan.mfu)))
        job_plans[-1].group = groups.get(job.name, "")
        # A transcoder reads its input site's cache and its target's (mlp_in/L and mlp_out/L).
        for site in filter(None, (job.site, job.get("target_site"))):
            tokens = max(cache_tokens.get(site, 0.0), float(job.total_tokens))
            cache_tokens[site] = min(tokens, corpus_tokens) if corpus_tokens else tokens
            site_dim = model_sites.dim(model_cfg, site)
            storage[site] = activation_storage_bytes(cache_tokens[site], site_dim, storage_dtype)
    return StudyPlan(
        study=config.name,
        accelerator=accelerator,
        n_chips=n_chips,
        mfu=float(config.plan.mfu),
        storage_dtype=storage_dtype,
        jobs=job_plans,
        cache_tokens=cache_tokens,
        storage_bytes=storage,
        lm_params=lm_param_count(model_cfg),
        lm=lm_memory.plan_lm(config, model_cfg, accelerator, n_chips),
    )


def _corpus_token_cap(data_section: ml_collections.ConfigDict) -> float:
    """Upper bound on cacheable tokens when the corpus is limited (0 = unlimited)."""
    max_sequences = data_section.get("max_sequences", None)
    seq_len = data_section.get("seq_len", None)
    if max_sequences and seq_len:
        return float(max_sequences) * float(seq_len)
    return 0.0
