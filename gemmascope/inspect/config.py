"""Inspection settings: ``config.inspect`` of a study (docs/inspect.md).

Synopsis::

    cfg = default_config()
    cfg.n_sequences = 256        # held-out sequences scanned for every SAE
    validate(cfg)
"""

from __future__ import annotations

import math

import ml_collections

from gemmascope.model import params as lm_params


def default_config() -> ml_collections.ConfigDict:
    """The ``inspect`` section of a study config."""
    cfg = ml_collections.ConfigDict()
    # Run the inspect stage at the end of --mode=all (after eval). Costs one LM pass over
    # n_sequences per site; large studies may prefer --mode=inspect when wanted.
    cfg.in_all = True
    # Held-out sequences of the data's "eval" split scanned (the first n, as the eval stage).
    cfg.n_sequences = 1024
    # Sequences per LM pass; the pass of a site is shared by all of that site's SAEs.
    cfg.batch_size = 8
    # Top-activating contexts kept per latent.
    cfg.top_k = 16
    # Tokens shown before and after the token a context is centred on.
    cfg.context_before = 12
    cfg.context_after = 4
    # Firings sampled per latent (uniformly, deterministically) to draw the quantile examples.
    cfg.sample_size = 32
    # Lower edges of the activation bands (fractions of the latent's firings, sorted by value):
    # band i holds the firings ranked in [quantiles[i], quantiles[i+1]) (the last up to 1).
    cfg.quantiles = (0.0, 0.5, 0.9)
    # Sampled contexts shown per band.
    cfg.examples_per_quantile = 3
    # Per-latent histogram of the non-zero activations: equal bins of log10(activation) over
    # histogram_log10_range (raw units; values outside go to the end bins).
    cfg.histogram_bins = 72
    cfg.histogram_log10_range = (-3.0, 6.0)
    # Tokens listed whose logits the decoder direction raises (and lowers) most.
    cfg.n_logit_tokens = 10
    # Nearest other latents by decoder cosine.
    cfg.n_neighbours = 8
    # Latents inspected per SAE: a wider SAE is inspected on a deterministic random sample of
    # this many latents (the encoder still runs at full width: TopK needs every latent).
    cfg.max_latents = 16384
    # Seed of the latent sample and of the firing sample.
    cfg.seed = 0
    # Widths >= this shard the SAE's latent axis (and every per-latent statistic) over all
    # local devices of the LM's mesh; 0 = never.
    cfg.shard_latents_from = 65536
    # Local devices the LM's params are sharded over (as eval.model_parallel).
    cfg.model_parallel = 1
    return cfg


_POSITIVE_INTS = (
    "n_sequences",
    "batch_size",
    "top_k",
    "sample_size",
    "examples_per_quantile",
    "histogram_bins",
    "n_logit_tokens",
    "n_neighbours",
    "max_latents",
)
_NON_NEGATIVE_INTS = ("context_before", "context_after", "seed", "shard_latents_from")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ints(cfg: ml_collections.ConfigDict) -> None:
    for fields, smallest in ((_POSITIVE_INTS, 1), (_NON_NEGATIVE_INTS, 0)):
        for field in fields:
            value = cfg.get(field)
            if not _is_int(value) or value < smallest:
                raise ValueError(f"inspect.{field} must be an integer >= {smallest}, got {value!r}")


def _check_quantiles(cfg: ml_collections.ConfigDict) -> None:
    quantiles = cfg.get("quantiles")
    valid = (
        isinstance(quantiles, (tuple, list))
        and len(quantiles) >= 1
        and all(isinstance(q, (int, float)) and not isinstance(q, bool) for q in quantiles)
        and all(0 <= q < 1 for q in quantiles)
        and all(a < b for a, b in zip(quantiles[:-1], quantiles[1:], strict=True))
    )
    if not valid:
        raise ValueError(
            f"inspect.quantiles must be increasing fractions in [0, 1), e.g. (0.0, 0.5, 0.9), "
            f"got {quantiles!r}"
        )


def _check_histogram_range(cfg: ml_collections.ConfigDict) -> None:
    bounds = cfg.get("histogram_log10_range")
    valid = (
        isinstance(bounds, (tuple, list))
        and len(bounds) == 2
        and all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
        and bounds[0] < bounds[1]
    )
    if not valid:
        raise ValueError(
            "inspect.histogram_log10_range must be (low, high) with low < high (log10 of raw "
            f"activations), e.g. (-3.0, 6.0), got {bounds!r}"
        )


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field of an ``inspect`` config."""
    if not isinstance(cfg.get("in_all"), bool):
        raise ValueError(f"inspect.in_all must be True or False, got {cfg.get('in_all')!r}")
    _check_ints(cfg)
    _check_quantiles(cfg)
    _check_histogram_range(cfg)
    lm_params.check_model_parallel(cfg.get("model_parallel", 1), "inspect.model_parallel")
