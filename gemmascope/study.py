"""The study config: the schema every `experiments/<study>.py` fills in, and its helpers.

Synopsis:
    from gemmascope import study
    arg = study.parse_arg("runlocal,layer=3", runlocal=False, layer=12)  # typed by the defaults
    config = study.base_config()          # every section with each package's defaults
    module, config = study.load_config_file("experiments/tiny_demo.py:runlocal")
    model_cfg = study.model_config(config.model)   # Gemma2Config without loading weights

A study config (an `ml_collections.ConfigDict`) has these sections (docs/configuration.md):

    name      a short name for the study
    model     which Gemma 2: `path` ("embedded" or an HF folder), `preset` (for planning without
              weights), `dtype`
    data      the corpus (gemmascope.data.default_config())
    sites     site globs to cache (DESIGN.md: `resid_post/*`, `*/12`, `*/*`)
    cache     the activation cache (gemmascope.activations.default_config())
    source    "cache" or "stream": where training reads activations
    train     defaults shared by every job (gemmascope.train.default_config())
    jobs      the expansion into jobs: `groups` (sites x widths, each with a token budget) and
              `archs` (each architecture with its sweep values and SAE overrides); see jobs.py
    eval      the evaluation (gemmascope.eval.default_config())
    mesh      the (data, model) device mesh and when to shard latents
    plan      the accelerator that `--mode=plan` estimates for
    distributed  whether to call jax.distributed.initialize

The experiment files only fill values in; no sweep logic lives here (STYLE.md practice 4).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import types

import ml_collections

# Config sections that do not change what a study computes: a workdir may be reused with
# different values here (see stages.check_workdir_config).
NON_STUDY_SECTIONS = ("plan", "eval", "distributed")
# Fields that change how the work is spread over devices, not what is cached or trained.
NON_STUDY_FIELDS = ("cache.model_parallel",)


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """Parses a config argument such as "runlocal,layer=3" into a typed ConfigDict.

    Each value takes the type of its default in `spec`; a bare name sets a boolean to True
    (big_vision's `parse_arg`).

    Args:
        arg: The text after the colon in `--config=file.py:arg`, or None.
        **spec: Every accepted name with its default value.

    Returns:
        A ConfigDict with every name of `spec`.

    Raises:
        ValueError: An unknown name, or a value that does not parse as its default's type.
    """
    parsed = ml_collections.ConfigDict(spec)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, has_value, value = item.partition("=")
        if name not in spec:
            raise ValueError(
                f"Unknown config argument {name!r} in {arg!r}; valid arguments: "
                f"{', '.join(sorted(spec))}."
            )
        default = spec[name]
        if not has_value:
            if not isinstance(default, bool):
                raise ValueError(f"Config argument {name!r} needs a value ({name}=...).")
            parsed[name] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"Config argument {name}={value!r}: expected true or false.")
            parsed[name] = value.lower() in ("true", "1")
        else:
            try:
                parsed[name] = type(default)(value)
            except ValueError as error:
                raise ValueError(
                    f"Config argument {name}={value!r} is not a {type(default).__name__}."
                ) from error
    return parsed


def base_config() -> ml_collections.ConfigDict:
    """Returns a study config with every section at its package's defaults.

    An experiment file starts from this and sets what its study needs: model, sites, jobs.
    """
    from gemmascope import activations, data, train
    from gemmascope import eval as evaluation
    from gemmascope import jobs as jobs_module

    config = ml_collections.ConfigDict()
    # A short name for the study (recorded in config.json).
    config.name = "study"

    config.model = ml_collections.ConfigDict()
    # "embedded" (the shipped tiny Gemma 2) or a Hugging Face Gemma 2 folder.
    config.model.path = "embedded"
    # A gemmascope.model.presets name ("gemma2_9b"): the shapes plan mode uses when the weights
    # are not on this machine; "" = read config.json from `path`.
    config.model.preset = ""
    # Compute dtype of the language model: "float32" or "bfloat16".
    config.model.dtype = "float32"

    # The text corpus, tokenisation and held-out split.
    config.data = data.default_config()
    # Site globs to cache and train on (kind/layer; kinds resid_post, mlp_out, attn_z).
    config.sites = ("*/*",)
    # The activation cache: storage dtype, shard sizes, special-token dropping, normalisation.
    config.cache = activations.default_config()
    # Where training reads activations: "cache" (written by --mode=cache) or "stream" (computed
    # on the fly by the model through a shuffle buffer; nothing stored, docs/scaling.md).
    config.source = "cache"
    # Defaults shared by every training job (batch size, logging and checkpoint intervals...).
    # `name`, `site`, `arch`, `sae`, `width`, `sweep_values` and `total_tokens` are set per job.
    config.train = train.default_config()
    for field in jobs_module.PER_JOB_FIELDS:  # set per job by jobs.expand
        del config.train[field]

    config.jobs = ml_collections.ConfigDict()
    # Named groups of (site globs, widths, token budget). Every group x arch is a set of jobs.
    # Each group: sites (globs, a subset of config.sites), widths (ints), total_tokens (float).
    config.jobs.groups = ml_collections.ConfigDict()
    # Named architectures (keys of gemmascope.sae.ARCHITECTURES). Each: sweep_values (the values
    # of the architecture's SWEEP_FIELD stacked in one job) and sae (overrides of its config).
    config.jobs.archs = ml_collections.ConfigDict()

    # Held-out evaluation of every SAE into the metric table.
    config.eval = evaluation.default_config()

    config.mesh = ml_collections.ConfigDict()
    # Devices on the data axis (-1 = all devices not on the model axis).
    config.mesh.data = -1
    # Devices on the model (latent) axis for SAEs narrower than shard_latents_from (1 = none).
    config.mesh.model = 1
    # Widths >= this shard the latent axis over all devices (Gemma Scope: everything wider than
    # 16k, SPEC §7); 0 = never.
    config.mesh.shard_latents_from = 0

    config.plan = ml_collections.ConfigDict()
    # Accelerator for wall-time estimates: tpu_v3, tpu_v4, tpu_v5p, a100, h100.
    config.plan.accelerator = "tpu_v3"
    # Chips per training job.
    config.plan.n_chips = 8
    # Assumed model FLOP utilisation (Gemma Scope: 50.8% on TPU v3, SPEC §7).
    config.plan.mfu = 0.508

    config.distributed = ml_collections.ConfigDict()
    # Call jax.distributed.initialize() (no arguments: Cloud TPU and Slurm fill them in).
    config.distributed.initialize = False
    return config


def load_config_file(spec: str) -> tuple[types.ModuleType, ml_collections.ConfigDict]:
    """Loads `path.py[:arg]` the way `--config` does and returns (module, get_config(arg)).

    Raises:
        FileNotFoundError: The config file does not exist.
        ValueError: The file has no get_config function.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    name = "gemmascope_config_" + os.path.splitext(os.path.basename(path))[0]
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = types.ModuleType(name)
    module.__file__ = path
    loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"Config file {path!r} has no get_config(arg) function.")
    config = module.get_config(arg) if arg else module.get_config()
    return module, config


def model_config(model_section: ml_collections.ConfigDict):
    """Returns the Gemma2Config of a study's model without loading any weights.

    Uses `model_section.preset` when set, otherwise the config.json of `model_section.path`
    ("embedded" is the shipped tiny model).

    Raises:
        ValueError: Unknown preset.
        FileNotFoundError: No config.json at the path (the message says what to give).
    """
    from gemmascope import model
    from gemmascope.model import checkpoint

    if model_section.preset:
        return model.presets.get(model_section.preset)
    return checkpoint.read_config(checkpoint.resolve_path(model_section.path))


def to_json_dict(config: ml_collections.ConfigDict) -> dict:
    """Returns `config` as plain JSON types (tuples become lists), for config.json."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


# Sweep values per architecture for the Gemma Scope studies. JumpReLU: λ of SPEC §4.2 on inputs
# normalised to E||x||² = 1; GS names 6e-4 (L0 ≈ 50, 9B L20 residual) and 1e-3 (9B 131k) and its
# released L0 ladders roughly double per step (SPEC §9), so six values spaced by about 2x around
# them. The per-SAE λ values were not published (SPEC §10.6): these are our choice. TopK-style
# baselines sweep k over the same L0 ladder.
GEMMA_SCOPE_SWEEPS = {
    "jumprelu": (1.5e-4, 3e-4, 6e-4, 1.2e-3, 2.4e-3, 4.8e-3),
    "gated": (3e-3, 6e-3, 1.2e-2, 2.4e-2, 4.8e-2, 9.6e-2),
    "relu": (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2),
    "topk": (16, 32, 64, 128, 256, 512),
    "batchtopk": (16, 32, 64, 128, 256, 512),
    "matryoshka": (16, 32, 64, 128, 256, 512),
}


def gemma_scope_archs(names: str) -> ml_collections.ConfigDict:
    """Returns `config.jobs.archs` for "+"-separated architecture names ("jumprelu+gated").

    JumpReLU follows the Gemma Scope recipe exactly (SPEC §4: log θ from 1e-3, ε = 1e-3, λ·L0
    with a 10k-step warmup, lr 7e-5 with a 1k-step cosine warmup, Adam(0, 0.999)); the other
    architectures use their package defaults.

    Raises:
        ValueError: An architecture without Gemma Scope sweep values.
    """
    archs = ml_collections.ConfigDict()
    for name in names.split("+"):
        if name not in GEMMA_SCOPE_SWEEPS:
            raise ValueError(
                f"Unknown architecture {name!r}; valid: {', '.join(GEMMA_SCOPE_SWEEPS)} "
                "(join several with '+')."
            )
        archs[name] = ml_collections.ConfigDict()
        # Values of the architecture's sweep field, stacked in one job.
        archs[name].sweep_values = GEMMA_SCOPE_SWEEPS[name]
        # Overrides of the architecture's SAE config.
        archs[name].sae = ml_collections.ConfigDict()
    if "jumprelu" in archs:
        archs.jumprelu.sae = ml_collections.ConfigDict(
            dict(
                sparsity_form="coeff",
                threshold_param="log",
                threshold_init=1e-3,
                bandwidth=1e-3,
                lr=7e-5,
                lr_warmup_steps=1_000,
                lr_warmup_start=0.1,
                sparsity_warmup_steps=10_000,
                adam_b1=0.0,
                adam_b2=0.999,
                adam_eps=1e-8,
            )
        )
    return archs


def gemma_scope_group(sites, widths) -> ml_collections.ConfigDict:
    """A jobs group with Gemma Scope's token budget for its widths (SPEC §2.2 width rule).

    Raises:
        ValueError: The widths have different budgets (put them in separate groups).
    """
    from gemmascope import jobs as jobs_module

    budgets = {jobs_module.gemma_scope_token_budget(w) for w in widths}
    if len(budgets) != 1:
        raise ValueError(f"Widths {widths} have different Gemma Scope budgets {budgets}.")
    return ml_collections.ConfigDict(
        dict(sites=tuple(sites), widths=tuple(widths), total_tokens=budgets.pop())
    )


def shrink_for_local(config: ml_collections.ConfigDict) -> None:
    """The `runlocal` switch of the Gemma studies: the shipped tiny model and a few steps.

    Keeps the study's architectures and sweep values; replaces the model by the embedded one,
    the jobs by one residual and one MLP site at two small widths, and every budget by a few
    thousand tokens, so CI and laptops run the same file end to end.
    """
    config.name = config.name + "_runlocal"
    config.model.path = "embedded"
    config.model.preset = ""
    config.model.dtype = "float32"
    config.data = _data_defaults()
    config.data.corpus = "embedded"
    config.sites = ("resid_post/0", "mlp_out/1")
    config.jobs.groups = ml_collections.ConfigDict()
    config.jobs.groups.local = ml_collections.ConfigDict(
        dict(sites=("resid_post/0", "mlp_out/1"), widths=(64, 128), total_tokens=4096.0)
    )
    for arch in config.jobs.archs.values():
        arch.sweep_values = tuple(arch.sweep_values[:3])
        if "lr_warmup_steps" in arch.sae:
            arch.sae.lr_warmup_steps = 2
            arch.sae.sparsity_warmup_steps = 4
    config.train.batch_size = 256
    config.train.log_every_tokens = 1024
    config.train.ckpt_every_tokens = 2048
    config.mesh.shard_latents_from = 0
    config.cache.model_parallel = 1  # the tiny model fits any one device
    config.cache.batch_size = 8
    config.eval.model_parallel = 1
    config.plan.accelerator = "tpu_v3"
    config.plan.n_chips = 1


def _data_defaults() -> ml_collections.ConfigDict:
    from gemmascope import data

    return data.default_config()
