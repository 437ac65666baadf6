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

import math

import ml_collections

from gemmascope import data, sae, study
from gemmascope.study import jobs

# Gemma Scope's three SAE site kinds (Gemma Scope 2 calls attn_z "attn_out"; not mlp_in, the
# transcoders' input).
GS2_SAE_KINDS = ("attn_z", "mlp_out", "resid_post")
# The depths of Gemma Scope 2's wider sweeps, as fractions of the layer count.
GS2_DEPTHS = (0.25, 0.5, 0.65, 0.85)


def gemma_scope_2_depths(n_layers: int) -> tuple[int, ...]:
    """The layers of Gemma Scope 2's wider sweeps: 25/50/65/85% depth, rounded half up.

    270M (18 layers): 5, 9, 12, 15, as Gemma Scope 2 lists them; 1B (26): 7, 13, 17, 22; 4B (34):
    9, 17, 22, 29; 12B (48): 12, 24, 31, 41; 27B (62): 16, 31, 40, 53, the layers of the released
    1B, 4B and 27B residual SAEs (SAELens's pretrained_saes.yaml).
    """
    return tuple(math.floor(fraction * n_layers + 0.5) for fraction in GS2_DEPTHS)


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


# Gemma Scope 2's L0 labels (small 10-20, medium 30-60, big 90-150) as targets of the target-L0
# JumpReLU form, one value inside each range (our choice; the released 270M residual ladder
# measures 18-20, 55-60 and 135-150). Sweeps run from the largest L0 to the smallest, so
# sparsity rises left to right.
GS2_TARGET_L0 = {"big": 128.0, "medium": 48.0, "small": 16.0}
# Gemma Scope 2's widths: every layer at 16k and 262k; the four depths also at 65k, and
# their residual stream at 1m.
GS2_EVERY_LAYER_WIDTHS = (2**14, 2**18)
GS2_DEPTH_WIDTHS = (2**14, 2**16, 2**18)
GS2_RESID_DEPTH_WIDTHS = (2**20,)
GS2_SIZES = ("270m", "1b", "4b", "12b", "27b")
# Gemma Scope 2's transcoders: plain (`transcoder`) and with an affine skip connection
# (`..._affine`), each mlp_in/L -> mlp_out/L.
GS2_TRANSCODERS = ("plain", "affine")


def gemma_scope_2_jumprelu() -> ml_collections.ConfigDict:
    """`config.jobs.archs` for Gemma Scope 2: JumpReLU, its L0 labels as target L0s.

    The rest of the Gemma Scope recipe as gemma_scope_archs("jumprelu") sets it (log θ, lr 7e-5,
    the warmups, Adam(0, 0.999)), with `sparsity_form="target_l0"`: the SAE is told the L0 of its
    label. (Gemma Scope 2's own penalty is quadratic in the L0 with a frequency penalty, not
    public in full; not this.) Every group sweeps all three labels unless it sets its own.
    """
    archs = gemma_scope_archs("jumprelu")
    archs.jumprelu.sweep_values = tuple(GS2_TARGET_L0.values())
    archs.jumprelu.sae.sparsity_form = "target_l0"
    return archs


def gemma_scope_2_groups(n_layers: int) -> ml_collections.ConfigDict:
    """`config.jobs.groups` of Gemma Scope 2's SAE release for a model of `n_layers` layers.

    Every layer x {attn_z, mlp_out, resid_post} at widths 16k and 262k with the small and big
    target L0; at the four depths (gemma_scope_2_depths) the same kinds at 16k, 65k and 262k and
    the residual stream also at 1m, each with all three labels. The depth layers are left out
    of the every-layer groups (their 16k and 262k jobs sweep three labels, a superset). Token
    budgets: Gemma Scope 2 did not publish them; Gemma Scope's rule (gemma_scope_token_budget).
    """
    depths = gemma_scope_2_depths(n_layers)
    other_layers = [layer for layer in range(n_layers) if layer not in depths]
    groups = ml_collections.ConfigDict()

    def sites(layers, kinds=GS2_SAE_KINDS):
        return [f"{kind}/{layer}" for layer in layers for kind in kinds]

    small_big = (GS2_TARGET_L0["big"], GS2_TARGET_L0["small"])
    for width in GS2_EVERY_LAYER_WIDTHS:
        group = gemma_scope_group(sites(other_layers), [width])
        group.sweep_values = ml_collections.ConfigDict(dict(jumprelu=small_big))
        groups[f"all_{width // 1024}k"] = group
    for width in GS2_DEPTH_WIDTHS:
        groups[f"depths_{width // 1024}k"] = gemma_scope_group(sites(depths), [width])
    for width in GS2_RESID_DEPTH_WIDTHS:
        groups[f"res_depths_{width // 2**20}m"] = gemma_scope_group(
            sites(depths, ["resid_post"]), [width]
        )
    groups.update(gemma_scope_2_transcoder_groups(n_layers))
    return groups


def gemma_scope_2_transcoder_groups(n_layers: int) -> ml_collections.ConfigDict:
    """Gemma Scope 2's `transcoder_all`: an mlp_in/L -> mlp_out/L transcoder on every layer.

    Plain and with an affine skip connection (Gemma Scope 2's `..._affine`), at widths 16k and
    262k, with the small and big target L0 as the every-layer SAEs (docs/transcoders.md). The
    config's sites must cache mlp_in and mlp_out of every layer.
    """
    groups = ml_collections.ConfigDict()
    small_big = (GS2_TARGET_L0["big"], GS2_TARGET_L0["small"])
    for width in GS2_EVERY_LAYER_WIDTHS:
        group = gemma_scope_group([f"mlp_in/{layer}" for layer in range(n_layers)], [width])
        group.transcoders = GS2_TRANSCODERS
        group.sweep_values = ml_collections.ConfigDict(dict(jumprelu=small_big))
        groups[f"tc_all_{width // 1024}k"] = group
    return groups


def gemma_scope_2_study(size: str, arg) -> ml_collections.ConfigDict:
    """The config of the Gemma Scope 2 study of Gemma 3 `size` ("270m" ... "27b").

    `arg` is the parsed config argument of the experiment file (model_dir, variant, runlocal).
    PT trains on plain pretraining-style text; IT (`variant=it`) on the same documents wrapped
    as one user turn of Gemma 3's chat template (data.chat_wrap; the user-prefix tokens are left
    out of the cache, training and evaluation, docs/data.md). The caller sets what depends on
    the hardware (dtype, model_parallel, forward batch sizes).

    Raises:
        ValueError: Unknown size or variant.
    """
    from gemmascope import model, study

    if size not in GS2_SIZES:
        raise ValueError(f"Unknown Gemma 3 size {size!r}; valid: {', '.join(GS2_SIZES)}.")
    if arg.variant not in ("pt", "it"):
        raise ValueError(f"variant must be 'pt' or 'it', got {arg.variant!r}.")
    config = study.base_config()
    config.name = f"gemma3_{size}_{arg.variant}"
    # Hugging Face folder of google/gemma-3-<size>-pt (or -it; default: that name in the current
    # directory); the preset gives plan mode the shapes without weights.
    config.model.path = arg.model_dir or f"gemma-3-{size}-{arg.variant}"
    config.model.preset = f"gemma3_{size}"
    # Gemma 3's pretraining mix is not public (nor Gemma Scope 2's SAE data): any large English
    # web corpus stands in, as in the Gemma 2 studies.
    config.data.corpus = "monology/pile-uncopyrighted"
    config.data.text_field = "text"
    # Sequence length of Gemma Scope (docs/recipe.md#training-data).
    config.data.seq_len = 1024
    # The SAE sites, and mlp_in: the transcoders' input (their target is mlp_out).
    config.sites = ("attn_z/*", "mlp_in/*", "mlp_out/*", "resid_post/*")
    n_layers = model.presets.get(config.model.preset).num_hidden_layers
    config.jobs.groups = gemma_scope_2_groups(n_layers)
    config.jobs.archs = gemma_scope_2_jumprelu()
    # Activations per step (docs/recipe.md#optimiser).
    config.train.batch_size = 4096
    # 16k SAEs data-parallel, every wider SAE latent-sharded (docs/recipe.md#sharding).
    config.mesh.shard_latents_from = 2**15
    # Gemma Scope 2's hardware is not public: Gemma Scope's 8 TPU v3 chips at 50.8% MFU
    # (docs/recipe.md#throughput), as in the Gemma 2 studies.
    config.plan.accelerator = "tpu_v3"
    config.plan.n_chips = 8
    config.plan.mfu = 0.508
    return config


def finish_gemma_scope_2_study(config: ml_collections.ConfigDict, arg) -> None:
    """The last step of every Gemma 3 study file: inspect's settings, runlocal, IT's chat wrapping.

    Chat wrapping is set after shrink_for_local (which resets config.data), so runlocal wraps
    too. Gemma 3's turn markers are those of Gemma 2 (`data.chat` defaults): `<start_of_turn>`
    and `<end_of_turn>` are single tokens (105 and 106 in Gemma 3's vocabulary).
    """
    # Inspect (docs/inspect.md) on eval's mesh and batch, as the Gemma 2 studies; not part of
    # --mode=all at this scale (hundreds of SAEs): run --mode=inspect. runlocal turns it back on.
    config.inspect.model_parallel = config.eval.model_parallel
    config.inspect.batch_size = config.eval.batch_size
    config.inspect.in_all = False
    if arg.runlocal:
        shrink_for_local(config)
        # Target L0s the embedded model's 64- and 128-wide local SAEs can reach.
        config.jobs.archs.jumprelu.sweep_values = (32.0, 16.0, 8.0)
        # One layer's transcoders, plain and affine, at the local SAEs' smaller width.
        config.sites = (*config.sites, "mlp_in/1")
        config.jobs.groups.local_transcoders = ml_collections.ConfigDict(
            dict(
                sites=("mlp_in/1",), widths=(64,), total_tokens=4096.0, transcoders=GS2_TRANSCODERS
            )
        )
    if arg.variant == "it":
        config.data.chat_wrap = True
    if arg.get("pt_workdir"):
        fine_tune_from_pt(config, arg)


# The share of the PT budget an IT SAE fine-tuned from its PT SAE trains on. Gemma Scope 2
# fine-tuned every PT SAE for IT but did not publish for how long; a tenth is our choice.
IT_FINETUNE_FRACTION = 0.1


def fine_tune_from_pt(config: ml_collections.ConfigDict, arg) -> None:
    """Gemma Scope 2's IT SAEs: each job fine-tunes the same job of the PT study in arg.pt_workdir.

    Every job starts from the PT job's final params (`<pt_workdir>/runs/<job>`) and trains on
    IT_FINETUNE_FRACTION of its budget on the chat-wrapped data of the IT variant, with no
    sparsity warmup (docs/training.md#init-from).

    Raises:
        ValueError: pt_workdir given for the PT variant.
    """
    if arg.variant != "it":
        raise ValueError(
            f"pt_workdir={arg.pt_workdir!r} fine-tunes PT SAEs into IT ones: give variant=it too "
            f"(got variant={arg.variant!r})."
        )
    config.name = config.name + "_from_pt"
    config.jobs.init_from = arg.pt_workdir
    config.jobs.init_token_fraction = IT_FINETUNE_FRACTION


def one_task_per_job(get_config):
    """A study module's ``sweep(add, arg=None)`` for launch/: one task per job of its config."""

    def sweep(add, arg=None):
        """Launcher tasks (launch/): one per job (a Slurm array element or a TPU VM run)."""
        config = get_config(arg)
        for job in jobs.expand(config, study.model_config(config.model)):
            add(jobs=job.name)

    return sweep
