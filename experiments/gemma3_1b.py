r"""Gemma Scope 2's Gemma 3 1B study: its SAE release, PT or IT (common.gemma_scope_2_study).

Plan it (no weights needed; prints jobs, storage, FLOPs, memory and time on 8 TPU v3 chips):

    python -m gemmascope --config=experiments/gemma3_1b.py --mode=plan
    python -m gemmascope --config=experiments/gemma3_1b.py:variant=it --mode=plan

Run it (Gemma 3 1B in Hugging Face format in ./gemma-3-1b-pt, see docs/faq.md):

    python -m gemmascope --config=experiments/gemma3_1b.py:model_dir=gemma-3-1b-pt \
        --workdir=/mnt/gcs/gemma3_1b_pt --mode=all

What it trains (26 layers; widths in latents; target L0s {big 128, medium 48, small 16},
Gemma Scope 2's L0 labels, docs/recipe.md):
    2^14, 2^18          attention, MLP and residual SAEs at every layer, big and small L0
    2^14, 2^16, 2^18    attention, MLP and residual SAEs at layers 7, 13, 17, 22, all three L0s
    2^20                residual, layers 7, 13, 17, 22, all three L0s
(layers 7, 13, 17, 22 are Gemma Scope 2's 25/50/65/85% depths). Tokens per SAE: 4B at 2^14, 16B at
2^20, else 8B (Gemma Scope's rule; Gemma Scope 2's budgets are not public). Every job stacks its
target L0s; JumpReLU with the Gemma Scope recipe in the target-L0 form. `variant=it` trains on the
same text wrapped as a user turn of Gemma 3's chat template, for Gemma 3 1B IT (default
model_dir gemma-3-1b-it).
Transcoders (Gemma Scope 2's transcoder_all, docs/transcoders.md): mlp_in -> mlp_out at every
layer, plain and with an affine skip connection, at 2^14 and 2^18, big and small L0.

Arguments: model_dir (default gemma-3-1b-<variant>), variant (pt | it), pt_workdir (with
variant=it: fine-tune the PT study of that workdir instead of training from scratch,
docs/training.md#init-from), runlocal (the same file
on the shipped tiny model, a few thousand tokens: CI and laptops).
"""

from gemmascope import study

import common


def get_config(arg=None):
    """The study config; `arg` is the text after the colon (arguments: module docstring)."""
    arg = study.parse_arg(arg, model_dir="", variant="pt", runlocal=False, pt_workdir="")
    config = common.gemma_scope_2_study("1b", arg)
    # The fp32 1B per 16 GiB TPU v3 device (`--mode=plan`, docs/scaling.md): capture fits
    # replicated; eval's 262k-vocabulary logits need the model split over 2 devices.
    config.eval.model_parallel = 2
    config.eval.batch_size = 2
    common.finish_gemma_scope_2_study(config, arg)
    return config


# Launcher tasks (launch/): one per job, i.e. one Slurm array element or TPU VM run each.
sweep = common.one_task_per_job(get_config)
