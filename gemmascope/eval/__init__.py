"""Per-SAE evaluation: metrics, the metric table and its plots.

Synopsis::

    from gemmascope import eval as gs_eval
    cfg = gs_eval.default_config()                 # the study config's `eval` section
    frame = gs_eval.evaluate(study_config, workdir)  # -> workdir/eval/saes.{parquet,csv,md}, plots

Lower level: ``evaluate_saes(model_cfg, model_params, tokens, saes, eval_cfg)`` evaluates a list
of ``SaeEntry`` on given tokens; ``metrics`` holds the per-batch sums and exact definitions.
"""

# Configuration and the stage.
from gemmascope.eval import metrics
from gemmascope.eval.config import default_config, validate
from gemmascope.eval.run import evaluate, find_saes

# The engine.
from gemmascope.eval.sweep_eval import GroupKey, SaeEntry, evaluate_saes

__all__ = [
    "GroupKey",
    "SaeEntry",
    "default_config",
    "evaluate",
    "evaluate_saes",
    "find_saes",
    "metrics",
    "validate",
]
