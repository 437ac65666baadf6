r"""Gemma Scope 2's Gemma 3 27B study: its SAE release, PT or IT (common.gemma_scope_2_study).

Plan it (no weights needed; prints jobs, storage, FLOPs, memory and time on 8 TPU v3 chips):

    python -m gemmascope --config=experiments/gemma3_27b.py --mode=plan
    python -m gemmascope --config=experiments/gemma3_27b.py:variant=it --mode=plan

Run it (Gemma 3 27B in Hugging Face format in ./gemma-3-27b-pt, see docs/faq.md):

    python -m gemmascope --config=experiments/gemma3_27b.py:model_dir=gemma-3-27b-pt \
        --workdir=/mnt/gcs/gemma3_27b_pt --mode=all

The model itself needs a sharded mesh: docs/scaling.md (the 27B's plan is explained there).

What it trains (62 layers; widths in latents; target L0s {big 128, medium 48, small 16},
Gemma Scope 2's L0 labels, docs/recipe.md):
    2^14, 2^18          attention, MLP and residual SAEs at every layer, big and small L0
    2^14, 2^16, 2^18    attention, MLP and residual SAEs at layers 16, 31, 40, 53, all three L0s
    2^20                residual, layers 16, 31, 40, 53, all three L0s
(layers 16, 31, 40, 53 are Gemma Scope 2's 25/50/65/85% depths). Tokens per SAE: 4B at 2^14, 16B at
2^20, else 8B (Gemma Scope's rule; Gemma Scope 2's budgets are not public). Every job stacks its
target L0s; JumpReLU with the Gemma Scope recipe in the target-L0 form. `variant=it` trains on the
same text wrapped as a user turn of Gemma 3's chat template, for Gemma 3 27B IT (default
model_dir gemma-3-27b-it).
Transcoders (Gemma Scope 2's transcoder_all, docs/transcoders.md): mlp_in -> mlp_out at every
layer, plain and with an affine skip connection, at 2^14 and 2^18, big and small L0.

Arguments: model_dir (default gemma-3-27b-<variant>), variant (pt | it), pt_workdir (with
variant=it: fine-tune the PT study of that workdir instead of training from scratch,
docs/training.md#init-from), runlocal (the same file
on the shipped tiny model, a few thousand tokens: CI and laptops).
"""

from gemmascope import study

import common


def get_config(arg=None):
    """The study config; `arg` is the text after the colon (arguments: module docstring)."""
    arg = study.parse_arg(arg, model_dir="", variant="pt", runlocal=False, pt_workdir="")
    config = common.gemma_scope_2_study("27b", arg)
    # The 27B in bf16 (50 GiB) per 16 GiB TPU v3 device (`--mode=plan`, docs/scaling.md).
    config.model.dtype = "bfloat16"
    # Capture holds all 186 sites of a batch until it ends: one sequence per pass.
    config.cache.model_parallel = 8
    config.cache.batch_size = 1
    config.eval.model_parallel = 8
    config.eval.batch_size = 2
    common.finish_gemma_scope_2_study(config, arg)
    return config


# Launcher tasks (launch/): one per job, i.e. one Slurm array element or TPU VM run each.
sweep = common.one_task_per_job(get_config)
