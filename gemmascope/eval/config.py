"""Evaluation settings: ``config.eval`` of a study, with Gemma Scope's defaults.

Synopsis::

    cfg = default_config()
    cfg.n_sequences = 64        # held-out sequences (Gemma Scope: 2,048 x 1,024 tokens)
    validate(cfg)
"""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import Mesh

from gemmascope.model import params as lm_params


def default_config() -> ml_collections.ConfigDict:
    """The ``eval`` section of a study config."""
    cfg = ml_collections.ConfigDict()
    # Held-out sequences of the data's "eval" split to evaluate on (GS §4.1: 2,048 of 1,024 tokens).
    cfg.n_sequences = 2048
    # Sequences per forward pass; the clean pass of a batch is shared by every SAE.
    cfg.batch_size = 4
    # SAEs of one group spliced in one vmapped forward pass (memory grows with it); 0 = auto:
    # 1 on CPU (XLA's batched matmuls are slower there, docs/benchmarks.md), 4 on accelerators.
    cfg.splice_batch = 0
    # A latent firing on more than this fraction of evaluated tokens counts as dense.
    cfg.dense_threshold = 0.1
    # Bins of the log10 firing-frequency histogram, from log10(1 / tokens) to 0.
    cfg.histogram_bins = 50
    # Delta LM loss, KL and zero-ablation loss (each costs forward passes); False skips them.
    cfg.lm_metrics = True
    # Write the Figure-2-style plots and the firing-frequency histograms.
    cfg.plots = True
    # Local devices on the LM's "model" mesh axis: its params are sharded that many ways
    # (heads, KV heads, MLP units, vocabulary; a dimension it does not divide stays replicated)
    # and each batch is split over the remaining devices (batch_size is rounded up to a multiple
    # of them). Must divide the process's local device count; 1 = params replicated.
    cfg.model_parallel = 1
    return cfg


def lm_mesh(cfg: ml_collections.ConfigDict) -> Mesh:
    """The (data, model) mesh of this process's local devices for ``cfg.model_parallel``.

    Raises:
      ValueError: ``eval.model_parallel`` is not a positive divisor of the local device count.
    """
    return lm_params.lm_mesh(cfg.model_parallel, field="eval.model_parallel")


def splice_batch(cfg: ml_collections.ConfigDict, backend: str | None = None) -> int:
    """SAEs spliced per vmapped pass: ``cfg.splice_batch``, or for 0 the backend's default.

    The default of ``backend`` (JAX's default backend unless given) is 1 on CPU, where vmapped
    splices do not pay, else 4.
    """
    if cfg.splice_batch:
        return int(cfg.splice_batch)
    return 1 if (backend or jax.default_backend()) == "cpu" else 4


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field of an ``eval`` config."""
    for field in ("n_sequences", "batch_size", "splice_batch", "histogram_bins"):
        value = cfg.get(field)
        smallest = 0 if field == "splice_batch" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise ValueError(f"eval.{field} must be an integer >= {smallest}, got {value!r}")
    lm_params.check_model_parallel(cfg.model_parallel, "eval.model_parallel")
    threshold = cfg.get("dense_threshold")
    if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"eval.dense_threshold must be in (0, 1), got {threshold!r}")
