"""The study config: the schema every `experiments/<study>.py` fills in, and its helpers.

Synopsis:
    from gemmascope import study
    arg = study.parse_arg("runlocal,layer=3", runlocal=False, layer=12)  # typed by the defaults
    study.config_arguments("experiments/gemma2_2b.py")  # {"model_dir": "gemma-2-2b", ...}
    config = study.base_config()          # every section with each package's defaults
    module, config = study.load_config_file("experiments/tiny_demo.py:runlocal")
    model_cfg = study.model_config(config.model)   # GemmaConfig without loading weights
    with study.importable_folder("experiments/gemma2_2b.py"): ...   # its siblings import

A study config (an `ml_collections.ConfigDict`) has these sections (docs/configuration.md):

    name      a short name for the study
    model     which Gemma 2: `path` ("embedded" or an HF folder), `preset` (for planning without
              weights), `dtype`
    data      the corpus (gemmascope.data.default_config())
    sites     site globs to cache (docs/concepts.md: `resid_post/*`, `*/12`, `*/*`)
    cache     the activation cache (gemmascope.activations.default_config())
    source    "cache" or "stream": where training reads activations
    train     defaults shared by every job (gemmascope.train.default_config())
    jobs      the expansion into jobs: `groups` (sites x widths, each with a token budget) and
              `archs` (each architecture with its sweep values and SAE overrides); see
              gemmascope/study/jobs.py
    eval      the evaluation (gemmascope.eval.default_config())
    inspect   the per-latent statistics and site (gemmascope.inspect.default_config())
    mesh      the (data, model) device mesh and when to shard latents
    plan      the accelerator that `--mode=plan` estimates for
    distributed  whether to call jax.distributed.initialize

The experiment files only fill values in; the expansion into jobs is gemmascope/study/jobs.py. An
experiment file may import the modules beside it (`import common`: experiments/common.py holds
the Gemma Scope recipe data) from any current directory: `load_config_file` and the command line
(gemmascope/study/main.py) run it inside `importable_folder`.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import sys
import types

import ml_collections

# Config sections that do not change what a study computes: a workdir may be reused with
# different values here (see gemmascope.study.stages.check_workdir_config).
NON_STUDY_SECTIONS = ("plan", "eval", "inspect", "distributed")
# Fields that change how the work is spread over devices, not what is cached or trained.
NON_STUDY_FIELDS = ("cache.model_parallel",)


# While config_arguments runs a config file: the specs its get_config passes to parse_arg.
_recorded_specs: list[dict] | None = None


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
    if _recorded_specs is not None:
        _recorded_specs.append(dict(spec))
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
    from gemmascope import inspect as inspection
    from gemmascope.study import jobs as jobs_module

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
    # Site globs to cache and train on (kind/layer; kinds resid_post, mlp_out, attn_z, mlp_in).
    # Default: Gemma Scope's three SAE sites on every layer; "*/*" would add mlp_in.
    config.sites = ("attn_z/*", "mlp_out/*", "resid_post/*")
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
    # Each group: sites (globs, a subset of config.sites), widths (ints), total_tokens (float),
    # and optionally sweep_values (arch -> values: that architecture's sweep for this group's
    # jobs, e.g. Gemma Scope 2's two L0s at every layer and three at four depths).
    config.jobs.groups = ml_collections.ConfigDict()
    # Named architectures (keys of gemmascope.sae.ARCHITECTURES). Each: sweep_values (the values
    # of the architecture's SWEEP_FIELD stacked in one job) and sae (overrides of its config).
    config.jobs.archs = ml_collections.ConfigDict()
    # Fine-tuning from a finished study (Gemma Scope 2's IT SAEs from its PT SAEs; docs
    # training.md#init-from): "" = every job starts from a fresh init. Else that study's workdir
    # (a local path or a URL): every job starts from the final params of the job of the same name
    # there (`<init_from>/runs/<job>`: same site, width, architecture and sweep), with a fresh
    # optimizer and step counter, no sparsity warmup, and trains for init_token_fraction of its
    # group's total_tokens on this study's data (e.g. chat-wrapped: data.chat_wrap).
    config.jobs.init_from = ""
    # With init_from: the fraction of each group's total_tokens a fine-tuning job trains on, in
    # (0, 1] (Gemma Scope 2 did not publish its fraction; the Gemma 3 IT variants use 0.1).
    config.jobs.init_token_fraction = 1.0

    # Held-out evaluation of every SAE into the metric table.
    config.eval = evaluation.default_config()
    # Per-latent statistics and the static site of workdir/inspect/ (docs/inspect.md).
    config.inspect = inspection.default_config()

    config.mesh = ml_collections.ConfigDict()
    # Devices on the data axis (-1 = all devices not on the model axis).
    config.mesh.data = -1
    # Devices on the model (latent) axis for SAEs narrower than shard_latents_from (1 = none).
    config.mesh.model = 1
    # Widths >= this shard the latent axis over all devices (Gemma Scope: everything wider than
    # 16k, docs/recipe.md#sharding); 0 = never.
    config.mesh.shard_latents_from = 0

    config.plan = ml_collections.ConfigDict()
    # Accelerator for wall-time estimates: tpu_v3, tpu_v4, tpu_v5p, a100, h100.
    config.plan.accelerator = "tpu_v3"
    # Chips per training job.
    config.plan.n_chips = 8
    # Assumed model FLOP utilisation (Gemma Scope: 50.8% on TPU v3, docs/recipe.md#throughput).
    config.plan.mfu = 0.508

    config.distributed = ml_collections.ConfigDict()
    # Call jax.distributed.initialize() (no arguments: Cloud TPU and Slurm fill them in).
    config.distributed.initialize = False
    return config


def load_config_file(spec: str) -> tuple[types.ModuleType, ml_collections.ConfigDict]:
    """Loads `path.py[:arg]` the way `--config` does and returns (module, get_config(arg)).

    The file runs inside `importable_folder`, so it may import the modules beside it.

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
    with importable_folder(path):
        loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"Config file {path!r} has no get_config(arg) function.")
        config = module.get_config(arg) if arg else module.get_config()
    return module, config


def config_arguments(path: str) -> dict:
    """The config arguments of an experiment file with their defaults ({} if it takes none).

    Runs the file's `get_config()` with no argument and records what it passes to `parse_arg`
    (the names and defaults of the text after the colon in `--config=path.py:arg`).

    Raises:
        FileNotFoundError: The config file does not exist.
    """
    global _recorded_specs
    _recorded_specs = []
    try:
        load_config_file(path.partition(":")[0])
        return dict(_recorded_specs[0]) if _recorded_specs else {}
    finally:
        _recorded_specs = None


@contextlib.contextmanager
def importable_folder(path: str):
    """Makes the modules beside the config file `path` importable while the block runs.

    An experiment file imports its siblings as top-level modules (`import common` for
    experiments/common.py) whatever the current directory is: the file's folder goes first on
    `sys.path` for the block and is removed after it. Sibling modules imported in the block are
    then dropped from `sys.modules` (the config module keeps its reference), so two config
    folders with a `common.py` each do not see each other's. Import siblings at the top of the
    file, not inside functions that run later.

    Args:
        path: The config file (a `:arg` suffix is not part of it).
    """
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    before = set(sys.modules)
    try:
        yield
    finally:
        sys.path.remove(folder)
        for name in set(sys.modules) - before:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if os.path.dirname(os.path.abspath(module_file)) == folder:
                del sys.modules[name]


def model_config(model_section: ml_collections.ConfigDict):
    """Returns the GemmaConfig (Gemma 2 or 3) of a study's model without loading any weights.

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
