r"""Gemma Scope's Gemma 2 2B study: every SAE of the 2B PT release (docs/recipe.md#release).

Plan it (no weights needed; prints jobs, storage, FLOPs, memory and time on 8 TPU v3 chips):

    python -m gemmascope --config=experiments/gemma2_2b.py --mode=plan

Run it (Gemma 2 2B in Hugging Face format in ./gemma-2-2b, see docs/faq.md):

    python -m gemmascope --config=experiments/gemma2_2b.py:model_dir=gemma-2-2b \
        --workdir=/mnt/gcs/gemma2_2b --mode=all

What it trains (PT, 26 layers; widths in latents, tokens per SAE):
    2^14                attention, MLP and residual SAEs at every layer     4B tokens
    2^15                residual, layer 12                                  8B
    2^16                attention, MLP and residual SAEs at every layer     8B
    2^17, 2^18, 2^19    residual, layer 12                                  8B
    2^20                residual, layers 5, 12, 19                          16B
(The 2B transcoders of the release are not an SAE of one site and are not part of this study.) Each
job stacks a λ sweep of 6 JumpReLU SAEs (recipe of docs/recipe.md#jumprelu); `arch=gated`,
`arch=topk`, `arch=batchtopk`, `arch=relu`, `arch=matryoshka` or `arch=jumprelu+gated` swap or add
architectures. 16k SAEs train data-parallel, wider ones shard latents (docs/recipe.md#sharding).

Arguments: model_dir, arch, runlocal (the same file on the shipped tiny model, a few thousand
tokens: CI and laptops).
"""

from gemmascope import study

import common


def get_config(arg=None):
    """The study config; `arg` is the text after the colon (arguments: module docstring)."""
    arg = study.parse_arg(arg, model_dir="gemma-2-2b", arch="jumprelu", runlocal=False)
    config = study.base_config()
    config.name = "gemma2_2b_pt"
    # Hugging Face folder of google/gemma-2-2b; the preset gives shapes for plan mode.
    config.model.path = arg.model_dir
    config.model.preset = "gemma2_2b"
    # Gemma 1's pretraining mix is not public (docs/recipe.md#training-data): any large English web
    # corpus stands in.
    config.data.corpus = "monology/pile-uncopyrighted"
    config.data.text_field = "text"
    # Sequence length of Gemma Scope (docs/recipe.md#training-data).
    config.data.seq_len = 1024

    # Gemma Scope's three site kinds on every layer (a group's "*/*" matches among these).
    config.sites = ("attn_z/*", "mlp_out/*", "resid_post/*")
    config.jobs.groups.all_16k = common.gemma_scope_group(["*/*"], [2**14])
    config.jobs.groups.res_L12_8b = common.gemma_scope_group(
        ["resid_post/12"], [2**15, 2**17, 2**18, 2**19]
    )
    config.jobs.groups.all_65k = common.gemma_scope_group(["*/*"], [2**16])
    config.jobs.groups.res_1m = common.gemma_scope_group(
        ["resid_post/5", "resid_post/12", "resid_post/19"], [2**20]
    )
    config.jobs.archs = common.gemma_scope_archs(arg.arch)

    # Activations per step (docs/recipe.md#optimiser).
    config.train.batch_size = 4096
    # Gemma Scope: 16k SAEs maximally data-parallel, every wider SAE latent-sharded
    # (docs/recipe.md#sharding).
    config.mesh.shard_latents_from = 2**15
    config.plan.accelerator = "tpu_v3"
    config.plan.n_chips = 8
    config.plan.mfu = 0.508
    # The LM per 16 GiB v3 device (`--mode=plan`, docs/scaling.md): capture fits replicated;
    # eval's 256k-vocab logits need the model split over 2 devices.
    config.eval.model_parallel = 2

    # Inspect (docs/inspect.md) on eval's mesh and batch. Not part of --mode=all at this scale
    # (hundreds of SAEs, ~0.1 GB of feature pages each at the defaults); run --mode=inspect.
    config.inspect.model_parallel = config.eval.model_parallel
    config.inspect.batch_size = config.eval.batch_size
    config.inspect.in_all = False

    if arg.runlocal:
        common.shrink_for_local(config)
    return config


# Launcher tasks (launch/): one per job, i.e. one Slurm array element or TPU VM run each.
sweep = common.one_task_per_job(get_config)
