"""The job config of one stacked sweep, and the one place where token budgets become steps.

A *job* is one (site, width, architecture) trained at S sweep settings at once. Its config is a
plain `ml_collections.ConfigDict`; every field carries a one-line comment.

Synopsis:
    job_cfg = train.default_config(arch="jumprelu")
    job_cfg.sweep_values = [1e-4, 3e-4, 1e-3]
    members = sweep_members(job_cfg)            # [(sweep_value, seed), ...], S entries
    budget = resolve_budget(job_cfg)            # Budget(total_steps=..., log_every=..., ...)
    itstime(step, budget.log_every, budget.total_steps)

Budgets are given in tokens (docs/recipe.md#token-budgets: Gemma Scope counts training in tokens,
4B/8B/16B per SAE) and converted to optimizer steps here only, in one place. Schedules *inside* the
SAE update (lr warmup, sparsity-coefficient warmup) live in the SAE config `sae`; the optional
`*_warmup_tokens` fields below override them in tokens when set.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from gemmascope import mesh as mesh_lib
from gemmascope import sae
from gemmascope.sae import token_blocks


def default_config(arch: str = "jumprelu") -> ml_collections.ConfigDict:
    """Returns the job config for architecture `arch`, Gemma Scope values as defaults.

    Args:
        arch: a key of `sae.ARCHITECTURES`; its `default_config()` fills the `sae` field.

    Raises:
        ValueError: `arch` is not a known architecture.
    """
    arch_module = get_architecture(arch)
    sae_cfg = arch_module.default_config()
    c = ml_collections.ConfigDict()
    # Job name; the run directory is workdir/runs/<name>/.
    c.name = "job"
    # Site the activations come from, e.g. "resid_post/12" (recorded in job.json for the exporter).
    c.site = ""
    # A transcoder's target site, e.g. "mlp_out/12" ("" for an SAE): the job then trains on a
    # paired source (input `site`, target `target_site`; docs/transcoders.md).
    c.target_site = ""
    # Identity of the model the activations come from (preset name or HF path), for job.json.
    c.model = ""
    # "" = start from a fresh init. Else the run folder of a finished job (`<workdir>/runs/<job>`,
    # a local path or a URL): its final params start this job (bit for bit, buffers included),
    # with a fresh optimizer state and step counter (docs/training.md#init-from). Its job.json
    # must match this job's architecture, site, width and sweep (the IT fine-tuning of GS §4.5).
    c.init_from = ""
    # Expected activation width; None takes the source's (a mismatch with the source is an error).
    c.d_in = None
    # SAE architecture: a key of gemmascope.sae.ARCHITECTURES.
    c.arch = arch
    # The architecture's config (sae.ARCHITECTURES[arch].default_config()); holds lr, schedules.
    c.sae = sae_cfg
    # Number of latents (d_sae) of every SAE in the job.
    c.width = 16384
    # Values of the architecture's SWEEP_FIELD (e.g. sparsity_coeff, k), one SAE per value.
    c.sweep_values = [sae_cfg[arch_module.sweep_field(sae_cfg)]]
    # Init seeds; the job trains every (sweep value, seed) pair, S = len(values) * len(seeds).
    c.seeds = [0]
    # Activations per optimizer step (docs/recipe.md#optimiser: 4096).
    c.batch_size = 4096
    # Training budget in tokens (activations); steps = ceil(total_tokens / batch_size).
    c.total_tokens = 4_000_000_000
    # If set, overrides the SAE config's lr warmup, in tokens (None keeps sae's own).
    c.lr_warmup_tokens = None
    # If set, overrides the SAE config's sparsity-coefficient warmup, in tokens (None keeps sae's).
    c.sparsity_warmup_tokens = None
    # Write metrics (jsonl, TensorBoard, progress bar) every this many tokens.
    c.log_every_tokens = 4096 * 1000
    # Every this many tokens (and at the end), each member's FVU, L0 and dead fraction on one fixed
    # held-out batch (batch_size rows the source holds out: training never sees them), logged as
    # heldout/fvu, heldout/l0, heldout/frac_dead. 0 = off (and nothing is held out).
    c.heldout_every_tokens = 4096 * 5000
    # Save an orbax checkpoint every this many tokens (also saved at the end and on SIGTERM).
    c.ckpt_every_tokens = 4096 * 25_000
    # A latent is dead if it has not fired in the last this many tokens (OAI/DL use 10M): for the
    # frac_dead metric and, when sae.dead_tokens is None (default), for AuxK (link_sae_config).
    c.dead_window_tokens = 10_000_000
    # Checkpoints kept on disk (the newest ones).
    c.keep_checkpoints = 2
    # Write periodic checkpoints in a background thread (final and SIGTERM saves always wait).
    c.async_checkpointing = True
    # Write TensorBoard event files (importing tensorboardX costs a few seconds once per process).
    c.tensorboard = True
    # Show a tqdm progress bar on process 0.
    c.progress_bar = True
    # Members updated together in one vmapped pass: 0 = all, 1 = one after another in the same
    # compiled step, None = by backend (1 on CPU, whose batched matmuls are slow; 0 elsewhere).
    c.members_per_pass = ml_collections.config_dict.placeholder(int)
    # Tokens per block of the step's loss and gradient (docs/sae.md#token-blocks): 0 = the whole
    # batch at once, n = blocks of n tokens (n divides batch_size; the same step to fp32
    # rounding), None = by backend (256 on CPU with members in sequence, an unsplit batch and
    # batch x width >= 2^20, where blocks that stay in cache make the step 1.1-2.4x faster; 0
    # elsewhere).
    c.block_tokens = ml_collections.config_dict.placeholder(int)
    # Device mesh as (axis name, size) pairs; one size may be -1 (all remaining devices).
    c.mesh = [("data", -1), ("model", 1)]
    # Logical axis -> mesh axis (None = replicated) for params, state and batches: ordered
    # (logical, mesh axis) pairs, flax's convention; the default is gemmascope.mesh.RULES, the one
    # table the LM and the plan use too (docs/internals.md, "mesh").
    c.logical_axis_rules = [list(rule) for rule in mesh_lib.RULES]
    return c


def get_architecture(name: str) -> sae.Architecture:
    """Returns `sae.ARCHITECTURES[name]`, or raises a ValueError listing the valid names."""
    if name not in sae.ARCHITECTURES:
        raise ValueError(
            f"unknown SAE architecture {name!r}; valid architectures: {sorted(sae.ARCHITECTURES)}"
        )
    return sae.ARCHITECTURES[name]


def sweep_members(job_cfg: ml_collections.ConfigDict) -> list[tuple[float | int, int]]:
    """Returns the (sweep_value, seed) of every sweep member, in stacking order (values major)."""
    values, seeds = list(job_cfg.sweep_values), list(job_cfg.seeds)
    if not values:
        raise ValueError("job_cfg.sweep_values is empty; give at least one value")
    if not seeds:
        raise ValueError("job_cfg.seeds is empty; give at least one seed, e.g. [0]")
    return [(value, int(seed)) for value in values for seed in seeds]


@dataclasses.dataclass(frozen=True)
class Budget:
    """Step counts derived from the token budgets of a job config.

    Attributes:
        total_steps: optimizer steps of the whole job.
        log_every: steps between metric writes.
        ckpt_every: steps between periodic checkpoints.
        dead_window: steps without firing after which a latent counts as dead.
        heldout_every: steps between held-out evaluations (each also a logged step); 0 = none.
    """

    total_steps: int
    log_every: int
    ckpt_every: int
    dead_window: int
    heldout_every: int = 0

    def due(self, step: int) -> Due:
        """What is due after `step` completed steps (each also at the last step)."""
        heldout = bool(self.heldout_every) and itstime(step, self.heldout_every, self.total_steps)
        return Due(
            log=heldout or itstime(step, self.log_every, self.total_steps),
            ckpt=itstime(step, self.ckpt_every, self.total_steps),
            heldout=heldout,
        )


@dataclasses.dataclass(frozen=True)
class Due:
    """The periodic actions due after one step (`Budget.due`)."""

    log: bool
    ckpt: bool
    heldout: bool


def tokens_to_steps(tokens: int, batch_size: int, field: str) -> int:
    """Converts a token count to steps, rounding up (at least one step).

    Raises:
        ValueError: `tokens` is not a positive number.
    """
    if tokens is None or tokens <= 0:
        raise ValueError(f"job_cfg.{field} must be a positive number of tokens, got {tokens!r}")
    return max(1, math.ceil(tokens / batch_size))


def resolve_budget(job_cfg: ml_collections.ConfigDict) -> Budget:
    """Converts every token budget of `job_cfg` to steps (the only place that does)."""
    batch = job_cfg.batch_size
    if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"job_cfg.batch_size must be a positive int, got {batch!r}")
    heldout = job_cfg.heldout_every_tokens
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float)) or heldout < 0:
        raise ValueError(
            f"job_cfg.heldout_every_tokens must be a number of tokens >= 0 (0 = off), got "
            f"{heldout!r}"
        )
    return Budget(
        total_steps=tokens_to_steps(job_cfg.total_tokens, batch, "total_tokens"),
        log_every=tokens_to_steps(job_cfg.log_every_tokens, batch, "log_every_tokens"),
        ckpt_every=tokens_to_steps(job_cfg.ckpt_every_tokens, batch, "ckpt_every_tokens"),
        dead_window=tokens_to_steps(job_cfg.dead_window_tokens, batch, "dead_window_tokens"),
        heldout_every=tokens_to_steps(heldout, batch, "heldout_every_tokens") if heldout else 0,
    )


def link_sae_config(job_cfg: ml_collections.ConfigDict, sae_cfg: ml_collections.ConfigDict) -> None:
    """Ties the SAE config's step and token windows to the job's, in place.

    - AuxK (TopK family): a latent is dead for AuxK after ``sae.dead_tokens`` tokens and for the
      ``frac_dead`` metric after ``job_cfg.dead_window_tokens``. ``sae.dead_tokens`` None (the
      default) takes the job's window; a different explicit value is an error, so the two
      definitions of a dead latent cannot silently disagree.
    - BatchTopK / Matryoshka: the inference threshold is estimated from step
      ``sae.threshold_start_step`` on; a job that stops before it would export a threshold of 0,
      a plain ReLU (``export.export_run`` refuses it), so it is refused before training.

    Raises:
        ValueError: the windows disagree, or the job is shorter than ``threshold_start_step``.
    """
    name = job_cfg.get("name")
    window = job_cfg.dead_window_tokens
    if "dead_tokens" in sae_cfg:
        if sae_cfg.dead_tokens is None:
            sae_cfg.dead_tokens = int(window)
        elif sae_cfg.dead_tokens != window:
            raise ValueError(
                f"job {name!r}: sae.dead_tokens ({sae_cfg.dead_tokens}) and dead_window_tokens "
                f"({window}) are two definitions of a dead latent (AuxK's and frac_dead's); leave "
                "sae.dead_tokens None to use dead_window_tokens for both, or make them equal"
            )
    if "threshold_start_step" in sae_cfg:
        steps = tokens_to_steps(job_cfg.total_tokens, job_cfg.batch_size, "total_tokens")
        if steps <= sae_cfg.threshold_start_step:
            raise ValueError(
                f"job {name!r} trains {steps} steps, but its inference threshold is estimated "
                f"from sae.threshold_start_step = {sae_cfg.threshold_start_step} on: it would "
                "export a threshold of 0 (a plain ReLU). Set sae.threshold_start_step below "
                f"{steps} (e.g. {steps // 10}) or train longer"
            )


def members_per_pass(job_cfg: ml_collections.ConfigDict, backend: str) -> int:
    """Resolves job_cfg.members_per_pass (None -> 1 on CPU, 0 = all at once elsewhere)."""
    value = job_cfg.get("members_per_pass")
    if value is None:
        return 1 if backend == "cpu" else 0
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"job_cfg.members_per_pass must be None or an int >= 0, got {value!r}")
    return value


def block_tokens(job_cfg: ml_collections.ConfigDict, backend: str, data_shards: int) -> int:
    """Resolves job_cfg.block_tokens (None -> `sae.token_blocks.block_tokens_for`'s choice).

    Blocks are chosen only where members run one at a time (`members_per_pass` 1): an AuxK
    SAE's step picks blocks or the whole batch per step by `lax.cond`, which `vmap` would turn
    into computing both. Nor with JumpReLU's sparse path (`sae.sparse_capacity` > 0): it lists
    the whole batch's support at once, and in blocks each block would write whole (M, d)
    gradients (measured 1.2x slower at d 512 / width 16k).
    """
    requested = job_cfg.get("block_tokens")
    sparse_path = job_cfg.get("sae", {}).get("sparse_capacity", 0) > 0
    if requested is None and (members_per_pass(job_cfg, backend) != 1 or sparse_path):
        return 0
    try:
        return token_blocks.block_tokens_for(
            int(job_cfg.batch_size), int(job_cfg.width), requested, backend, data_shards
        )
    except ValueError as error:
        raise ValueError(f"job_cfg.block_tokens: {error}") from None


def itstime(step: int, every: int, total: int) -> bool:
    """True when a periodic action is due after `step` completed steps (and at the last step)."""
    return step % every == 0 or step == total
