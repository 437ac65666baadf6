r"""Gemma Scope's Gemma 2 27B study: the 27B PT residual SAEs (docs/recipe.md#release).

Plan it (no weights needed; prints jobs, storage, FLOPs, memory and time on 8 TPU v3 chips):

    python -m gemmascope --config=experiments/gemma2_27b.py --mode=plan

Run it (Gemma 2 27B in Hugging Face format in ./gemma-2-27b, see docs/faq.md; the model itself
needs a sharded mesh, docs/scaling.md):

    python -m gemmascope --config=experiments/gemma2_27b.py:model_dir=gemma-2-27b \
        --workdir=/mnt/gcs/gemma2_27b --mode=all

What it trains (PT, 46 layers): residual SAEs of width 2^17 at layers 10, 22 and 34, 8B tokens each,
every job a λ sweep of 6 JumpReLU SAEs (recipe of docs/recipe.md#jumprelu), latent-sharded
(docs/recipe.md#sharding). `arch=gated`, `arch=topk`, `arch=batchtopk`, `arch=relu`,
`arch=matryoshka` or `arch=jumprelu+gated` swap or add architectures.

Arguments: model_dir, arch, runlocal (the same file on the shipped tiny model, a few thousand
tokens: CI and laptops).
"""

from gemmascope import study

import common


def get_config(arg=None):
    """The study config; `arg` is the text after the colon (arguments: module docstring)."""
    arg = study.parse_arg(arg, model_dir="gemma-2-27b", arch="jumprelu", runlocal=False)
    config = study.base_config()
    config.name = "gemma2_27b_pt"
    # Hugging Face folder of google/gemma-2-27b; the preset gives shapes for plan mode.
    config.model.path = arg.model_dir
    config.model.preset = "gemma2_27b"
    # The 27B does not fit one accelerator in fp32: load it in bf16 (docs/scaling.md).
    config.model.dtype = "bfloat16"
    # Gemma 1's pretraining mix is not public (docs/recipe.md#training-data): any large English web
    # corpus stands in.
    config.data.corpus = "monology/pile-uncopyrighted"
    config.data.text_field = "text"
    # Sequence length of Gemma Scope (docs/recipe.md#training-data).
    config.data.seq_len = 1024

    config.sites = ("resid_post/10", "resid_post/22", "resid_post/34")
    config.jobs.groups.res_131k = common.gemma_scope_group(config.sites, [2**17])
    config.jobs.archs = common.gemma_scope_archs(arg.arch)

    # Activations per step (docs/recipe.md#optimiser).
    config.train.batch_size = 4096
    # Every 27B SAE is 131k wide: latent-sharded (docs/recipe.md#sharding).
    config.mesh.shard_latents_from = 2**15
    config.plan.accelerator = "tpu_v3"
    config.plan.n_chips = 8
    config.plan.mfu = 0.508
    # The bf16 27B (51 GiB) per 16 GiB v3 device (`--mode=plan`, docs/scaling.md): split over 4
    # devices to capture, over all 8 to evaluate.
    config.cache.model_parallel = 4
    config.eval.model_parallel = 8
    config.eval.batch_size = 2

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
