"""The cost model: what a study will cost before anything runs (`--mode=plan`).

Training FLOPs, step and wall time, memory per device and activation-cache bytes of every job, and
the language model's memory per device when capturing and evaluating, for an accelerator from
`plan.accelerators`. The formulas and their sources are in docs/recipe.md (infrastructure) and
docs/scaling.md.

Synopsis:
    from gemmascope import plan
    study_plan = plan.make_plan(config, model_cfg)    # plan.StudyPlan: .jobs, .storage_bytes, .lm
    print(plan.format_plan(study_plan))               # the text --mode=plan prints
    plan.accelerators.get("tpu_v3").peak_flops        # 123e12
    plan.sae_step_seconds(d_in=3584, width=2**17, batch_size=4096, n_saes=1,
                          accelerator="tpu_v3", n_chips=8, mfu=0.508)   # ~0.046 s
"""

# Accelerators (peak FLOP/s and memory of the chips a plan is for).
from gemmascope.plan.accelerators import ACCELERATORS, Accelerator

# The study's estimate and its cost formulas.
from gemmascope.plan.estimate import (
    JobPlan,
    StudyPlan,
    activation_storage_bytes,
    lm_param_count,
    make_plan,
    plan_job,
    sae_flops_per_token,
    sae_param_count,
    sae_step_flops,
    sae_step_seconds,
)

# The language model's memory per device (capture, streaming, evaluation).
from gemmascope.plan.lm_memory import LmPlan, plan_lm

# The report --mode=plan prints.
from gemmascope.plan.report import format_plan, human_bytes, human_seconds

__all__ = [
    "ACCELERATORS",
    "Accelerator",
    "JobPlan",
    "LmPlan",
    "StudyPlan",
    "activation_storage_bytes",
    "format_plan",
    "human_bytes",
    "human_seconds",
    "lm_param_count",
    "make_plan",
    "plan_job",
    "plan_lm",
    "sae_flops_per_token",
    "sae_param_count",
    "sae_step_flops",
    "sae_step_seconds",
]
