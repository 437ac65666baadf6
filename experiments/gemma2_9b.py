r"""Gemma Scope's Gemma 2 9B study: every SAE of the 9B PT release (docs/recipe.md#release).

Plan it (no weights needed; prints jobs, storage, FLOPs, memory and time on 8 TPU v3 chips):

    python -m gemmascope --config=experiments/gemma2_9b.py --mode=plan

Run it (Gemma 2 9B in Hugging Face format in ./gemma-2-9b, see docs/faq.md; about 17 PiB of
activations with every site cached, so see docs/scaling.md for streaming and launchers):

    python -m gemmascope --config=experiments/gemma2_9b.py:model_dir=gemma-2-9b \
        --workdir=/mnt/gcs/gemma2_9b --mode=all

What it trains (PT, 42 layers; widths in latents, tokens per SAE):
    2^14        attention, MLP and residual SAEs at every layer     4B tokens
    2^15, 2^16  residual, layer 20                                  8B
    2^17        attention, MLP and residual SAEs at every layer     8B
    2^18, 2^19  residual, layer 20                                  8B
    2^20        residual, layers 9, 20, 31                          16B
and with `variant=it` the 9B IT suite: residual layers 9, 20, 31 at 2^14 (4B) and 2^17 (8B),
on Gemma 2 9B IT (model_dir=gemma-2-9b-it) and chat-wrapped pretraining text as GS §4.5 trains
them: every document becomes `<start_of_turn>user\n` + document +
`<end_of_turn>\n<start_of_turn>model\n` (data.chat_wrap), and the user-prefix tokens are left out of
the cache, training and evaluation (docs/data.md). Each job stacks a λ sweep of 6 JumpReLU SAEs
(recipe of docs/recipe.md#jumprelu); `arch=gated`, `arch=topk`, `arch=batchtopk`, `arch=relu`,
`arch=matryoshka` or `arch=jumprelu+gated` swap or add architectures. 16k SAEs train data-parallel,
wider ones shard latents (docs/recipe.md#sharding).

Arguments: model_dir, variant (pt | it), arch, runlocal (the same file on the shipped tiny model,
a few thousand tokens: CI and laptops).
"""

from gemmascope import study

import common


def get_config(arg=None):
    """The study config; `arg` is the text after the colon (arguments: module docstring)."""
    arg = study.parse_arg(
        arg, model_dir="gemma-2-9b", variant="pt", arch="jumprelu", runlocal=False
    )
    config = study.base_config()
    config.name = f"gemma2_9b_{arg.variant}"
    # Hugging Face folder of google/gemma-2-9b (or -it); the preset gives shapes for plan mode.
    config.model.path = arg.model_dir
    config.model.preset = "gemma2_9b"
    # Gemma 1's pretraining mix is not public (docs/recipe.md#training-data): any large English web
    # corpus stands in.
    config.data.corpus = "monology/pile-uncopyrighted"
    config.data.text_field = "text"
    # Sequence length of Gemma Scope (docs/recipe.md#training-data).
    config.data.seq_len = 1024

    layers_1m = ("resid_post/9", "resid_post/20", "resid_post/31")
    if arg.variant == "pt":
        # Gemma Scope's three site kinds on every layer (a group's "*/*" matches among these).
        config.sites = ("attn_z/*", "mlp_out/*", "resid_post/*")
        config.jobs.groups.all_16k = common.gemma_scope_group(["*/*"], [2**14])
        config.jobs.groups.res_L20_8b = common.gemma_scope_group(
            ["resid_post/20"], [2**15, 2**16, 2**18, 2**19]
        )
        config.jobs.groups.all_131k = common.gemma_scope_group(["*/*"], [2**17])
        config.jobs.groups.res_1m = common.gemma_scope_group(layers_1m, [2**20])
    elif arg.variant == "it":
        config.name = "gemma2_9b_it"
        config.sites = layers_1m
        config.jobs.groups.res_16k = common.gemma_scope_group(layers_1m, [2**14])
        config.jobs.groups.res_131k = common.gemma_scope_group(layers_1m, [2**17])
    else:
        raise ValueError(f"variant must be 'pt' or 'it', got {arg.variant!r}.")
    config.jobs.archs = common.gemma_scope_archs(arg.arch)

    # Activations per step (docs/recipe.md#optimiser).
    config.train.batch_size = 4096
    # Gemma Scope: 16k SAEs maximally data-parallel, every wider SAE latent-sharded
    # (docs/recipe.md#sharding).
    config.mesh.shard_latents_from = 2**15
    # The throughput example of docs/recipe.md#throughput: 8 TPU v3 chips at 50.8% MFU.
    config.plan.accelerator = "tpu_v3"
    config.plan.n_chips = 8
    config.plan.mfu = 0.508
    # The fp32 9B (34 GiB) per 16 GiB v3 device (`--mode=plan`, docs/scaling.md): split over 4
    # devices to capture, over all 8 to evaluate, with small forward batches.
    config.cache.model_parallel = 4
    config.cache.batch_size = 4
    config.eval.model_parallel = 8
    config.eval.batch_size = 2

    # Inspect (docs/inspect.md) on eval's mesh and batch. Not part of --mode=all at this scale
    # (hundreds of SAEs, ~0.1 GB of feature pages each at the defaults); run --mode=inspect.
    config.inspect.model_parallel = config.eval.model_parallel
    config.inspect.batch_size = config.eval.batch_size
    config.inspect.in_all = False

    if arg.runlocal:
        common.shrink_for_local(config)
    if arg.variant == "it":
        # GS §4.5: pretraining documents wrapped as one user turn of Gemma 2's chat template;
        # SAEs skip the user-prefix tokens (constant and of much larger norm). Set after
        # shrink_for_local, which resets config.data, so runlocal wraps too.
        config.data.chat_wrap = True
    return config


# Launcher tasks (launch/): one per job, i.e. one Slurm array element or TPU VM run each.
sweep = common.one_task_per_job(get_config)
