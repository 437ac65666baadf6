"""The Gemma Scope recipe as data, shared by the experiment files of the Gemma studies.

Synopsis (in an experiment file beside this one):
    import common
    config.jobs.groups.res_131k = common.gemma_scope_group(["resid_post/20"], [2**17])
    config.jobs.archs = common.gemma_scope_archs("jumprelu+gated")   # the published sweeps
    common.gemma_scope_token_budget(2**20)                          # 16e9 tokens per SAE
    common.shrink_for_local(config)                                 # the `runlocal` switch

Library code holds the machinery (gemmascope.study); the numbers of one recipe live here, next
to the studies that use them (big_vision's configs/common.py). `import common` works from any
current directory: `gemmascope.study.load_config_file` and the command line run an experiment
file with its own folder importable (`gemmascope.study.importable_folder`).
"""

import ml_collections

from gemmascope import data, sae

# Sweep values per architecture for the Gemma Scope studies. JumpReLU: λ of
# docs/recipe.md#jumprelu-loss on inputs normalised to E||x||² = 1; GS names 6e-4 (L0 ≈ 50, 9B L20
# residual) and 1e-3 (9B 131k) and its released L0 ladders roughly double per step
# (docs/recipe.md#targets), so six values spaced by about 2x around them. The per-SAE λ values were
# not published (docs/recipe.md#open-questions): these are our choice. TopK-style baselines sweep k
# over the same L0 ladder.
GEMMA_SCOPE_SWEEPS = {
    "jumprelu": (1.5e-4, 3e-4, 6e-4, 1.2e-3, 2.4e-3, 4.8e-3),
    "gated": (3e-3, 6e-3, 1.2e-2, 2.4e-2, 4.8e-2, 9.6e-2),
    "relu": (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2),
    "topk": (16, 32, 64, 128, 256, 512),
    "batchtopk": (16, 32, 64, 128, 256, 512),
    "matryoshka": (16, 32, 64, 128, 256, 512),
}


def gemma_scope_token_budget(width: int) -> float:
    """Gemma Scope's training tokens per SAE: 4B for 16k-wide, 16B for 1M-wide, else 8B."""
    if width <= 2**14:
        return 4e9
    if width >= 2**20:
        return 16e9
    return 8e9


def gemma_scope_archs(names: str) -> ml_collections.ConfigDict:
    """Returns `config.jobs.archs` for "+"-separated architecture names ("jumprelu+gated").

    JumpReLU follows the Gemma Scope recipe exactly (docs/recipe.md#jumprelu: log θ from 1e-3, ε =
    1e-3, λ·L0 with a 10k-step warmup, lr 7e-5 with a 1k-step cosine warmup, Adam(0, 0.999)); the
    other architectures use their package defaults.

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
        archs.jumprelu.sae = ml_collections.ConfigDict(sae.recipes.gemma_scope("jumprelu"))
    return archs


def gemma_scope_group(sites, widths) -> ml_collections.ConfigDict:
    """A jobs group with Gemma Scope's token budget for its widths (docs/recipe.md#token-budgets).

    Raises:
        ValueError: The widths have different budgets (put them in separate groups).
    """
    budgets = {gemma_scope_token_budget(w) for w in widths}
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
    config.data = data.default_config()
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
    config.inspect.model_parallel = 1
    config.inspect.in_all = True  # a small study: inspect is part of --mode=all
    config.plan.accelerator = "tpu_v3"
    config.plan.n_chips = 1
