"""The inspect stage's JSON records: one per SAE, plus the shared token table.

Formats (docs/inspect.md#json): ``sae_record`` turns an ``scan.SaeInspection`` into
``inspect/data/<slug>.json`` (``format`` ``gemmascope-inspect-sae/1``); ``tokens_record`` is
``inspect/data/tokens.json`` (``gemmascope-inspect-tokens/1``): the scanned sequences, which of
their tokens are unscored, and the text of every token id a record mentions. A context is
``{"seq", "pos", "act", "start", "acts"}``: the latent's activation ``act`` at token ``pos`` of
sequence ``seq``, shown from token ``start`` on, with ``acts`` the non-zero activations of the
window as ``[offset from start, value]`` pairs.

Activations keep 6 significant digits of the latent's largest activation (absolute precision
``1e-5 x max``), logit effects and cosines 5 decimals.

Synopsis::

    record = sae_record(inspection, sae_id, quantiles=(0.0, 0.5, 0.9), examples=3,
                        metrics_row=row, density_bins=50)
    table = tokens_record(tokens, positions, tokenizer, extra_ids=token_ids_of(records))
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable

import numpy as np

from gemmascope.eval import metrics

SAE_FORMAT = "gemmascope-inspect-sae/1"
TOKENS_FORMAT = "gemmascope-inspect-tokens/1"
# Identity fields of an SAE's config.json copied into its record.
_IDENTITY = (
    "site",
    "kind",
    "layer",
    "d_in",
    "width",
    "architecture",
    "source",
    "sweep_field",
    "sweep_value",
    "tag",
    "model",
    "encoder",
)


def _decimals(largest: float) -> int:
    """Decimals that keep 6 significant digits of ``largest`` (0 to 12)."""
    if not largest > 0 or not math.isfinite(largest):
        return 6
    return int(min(12, max(0, 5 - math.floor(math.log10(largest)))))


def _rounded(values, decimals: int) -> list:
    return np.round(np.asarray(values, np.float64), decimals).tolist()


class _LatentWriter:
    """Builds the records of one SAE's latents from its ``SaeInspection``."""

    def __init__(self, inspection, quantiles, examples: int):
        self.inspection = inspection
        self.stats = inspection.stats
        self.t_len = inspection.seq_len
        self.before = inspection.shape.before
        self.quantiles = list(quantiles)
        self.examples = int(examples)

    def context(self, position, value, window, decimals) -> dict:
        """One context: the window around ``position`` with its non-zero activations."""
        seq, t = divmod(int(position), self.t_len)
        start = max(0, t - self.before)
        acts = [
            [t - self.before + j - start, v]
            for j, v in enumerate(_rounded(window, decimals))
            if v != 0 and 0 <= t - self.before + j < self.t_len
        ]
        return {
            "seq": seq,
            "pos": t,
            "act": round(float(value), decimals),
            "start": start,
            "acts": acts,
        }

    def top_contexts(self, slot: int, decimals: int) -> list[dict]:
        """The top-k contexts, largest first (latents that fired fewer times have fewer)."""
        s = self.stats
        return [
            self.context(pos, value, s["top_window"][slot, j], decimals)
            for j, (value, pos) in enumerate(
                zip(s["top_value"][slot], s["top_pos"][slot], strict=True)
            )
            if value > 0 and pos >= 0
        ]

    def bands(self, slot: int, decimals: int) -> list[dict]:
        """Quantile bands of the sampled firings, each with up to ``examples`` contexts."""
        s = self.stats
        valid = np.flatnonzero(s["sample_priority"][slot] >= 0)
        if not len(valid):
            return []
        by_value = valid[np.argsort(s["sample_value"][slot, valid], kind="stable")]
        rank = {int(j): r / len(by_value) for r, j in enumerate(by_value)}
        random_order = valid[np.argsort(-s["sample_priority"][slot, valid], kind="stable")]
        edges = self.quantiles + [1.0]
        out = []
        for low, high in zip(edges[:-1], edges[1:], strict=True):
            members = [j for j in random_order if low <= rank[int(j)] < high]
            if not members:
                continue
            values = s["sample_value"][slot, members]
            out.append(
                {
                    "from": low,
                    "to": high,
                    "min": round(float(values.min()), decimals),
                    "max": round(float(values.max()), decimals),
                    "contexts": [
                        self.context(
                            s["sample_pos"][slot, j],
                            s["sample_value"][slot, j],
                            s["sample_window"][slot, j],
                            decimals,
                        )
                        for j in members[: self.examples]
                    ],
                }
            )
        return out

    def histogram(self, slot: int) -> dict:
        """The non-empty stretch of the latent's log10 activation histogram."""
        counts = self.stats["hist"][slot]
        nonzero = np.flatnonzero(counts)
        if not len(nonzero):
            return {"first_bin": 0, "counts": []}
        return {
            "first_bin": int(nonzero[0]),
            "counts": counts[nonzero[0] : nonzero[-1] + 1].tolist(),
        }

    def latent(self, slot: int, tokens: np.ndarray) -> dict:
        """The record of the latent in ``slot``."""
        s, inspection = self.stats, self.inspection
        count = int(s["count"][slot])
        largest = float(s["top_value"][slot, 0])
        decimals = _decimals(largest)
        top = self.top_contexts(slot, decimals)
        record = {
            "latent": int(inspection.latent_ids[slot]),
            "count": count,
            "density": float(f"{count / max(inspection.n_tokens, 1):.6g}"),
            "mean": round(float(s["total"][slot]) / count, decimals) if count else 0.0,
            "max": round(largest, decimals),
            "top_tokens": _top_tokens(top, tokens),
            "histogram": self.histogram(slot),
            "top": top,
            "bands": self.bands(slot, decimals),
            "logits_up": [],
            "logits_down": [],
            "neighbours": [],
        }
        if inspection.logits is not None:
            for name, (ids, values) in zip(
                ("logits_up", "logits_down"), inspection.logits, strict=True
            ):
                record[name] = [
                    [int(i), v] for i, v in zip(ids[slot], _rounded(values[slot], 5), strict=True)
                ]
        ids, cosines = inspection.neighbours
        record["neighbours"] = [
            [int(i), v] for i, v in zip(ids[slot], _rounded(cosines[slot], 5), strict=True)
        ]
        return record


def _top_tokens(contexts: list[dict], tokens: np.ndarray, n: int = 3) -> list[int]:
    """The most frequent tokens at the top contexts' centres (ties: the higher activation)."""
    counts = collections.Counter(int(tokens[c["seq"], c["pos"]]) for c in contexts)
    return [token for token, _ in counts.most_common(n)]


def sae_record(
    inspection,
    sae_id: str,
    tokens: np.ndarray,
    *,
    quantiles: Iterable[float],
    examples: int,
    metrics_row: dict | None,
    density_bins: int,
) -> dict:
    """The JSON record of one SAE (docs/inspect.md#json).

    Args:
      inspection: its ``scan.SaeInspection``.
      sae_id: its folder relative to ``workdir/saes`` (the metric table's ``sae`` column).
      tokens: int (N, T), the scanned sequences (for the top tokens).
      quantiles: lower edges of the activation bands (``inspect.quantiles``).
      examples: contexts per band.
      metrics_row: its row of the metric table (``eval/saes.csv``), or None.
      density_bins: bins of the log10 firing-density histogram.
    """
    writer = _LatentWriter(inspection, quantiles, examples)
    count = inspection.stats["count"]
    n_tokens = max(inspection.n_tokens, 1)
    config = inspection.entry.config
    return {
        "format": SAE_FORMAT,
        "sae": sae_id,
        "config": {key: config.get(key) for key in _IDENTITY},
        "metrics": metrics_row,
        "eval_tokens": int(inspection.n_tokens),
        "latents_inspected": int(len(inspection.latent_ids)),
        "sampled": bool(len(inspection.latent_ids) < int(config["width"])),
        "context": {"before": inspection.shape.before, "after": inspection.shape.after},
        "histogram_log10_edges": _rounded(inspection.shape.histogram_edges(), 6),
        "quantiles": list(quantiles),
        "density_histogram": metrics.firing_histogram(
            count, n_tokens, density_bins, float(np.floor(np.log10(1.0 / n_tokens)))
        ),
        "latents": [writer.latent(slot, tokens) for slot in range(len(inspection.latent_ids))],
    }


def token_ids_of(record: dict) -> set[int]:
    """Every token id a SAE record names outside its contexts (logit effects, top tokens)."""
    ids = set()
    for latent in record["latents"]:
        ids.update(latent["top_tokens"])
        ids.update(i for i, _ in latent["logits_up"])
        ids.update(i for i, _ in latent["logits_down"])
    return ids


def token_texts(tokenizer, ids: Iterable[int]) -> dict[str, str]:
    """``{str(id): text}``: each token decoded on its own (as dashboards show tokens)."""
    ids = sorted({int(i) for i in ids})
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    return {str(i): text for i, text in zip(ids, texts, strict=True)}


def tokens_record(tokens: np.ndarray, positions: np.ndarray, tokenizer, extra_ids=()) -> dict:
    """The shared token table: sequences, unscored positions and token texts.

    Args:
      tokens: int (N, T), the scanned sequences.
      positions: bool (N, T), the scored tokens.
      tokenizer: decodes the token ids.
      extra_ids: more ids to decode (``token_ids_of`` each record: logit effects).
    """
    tokens = np.asarray(tokens)
    return {
        "format": TOKENS_FORMAT,
        "seq_len": int(tokens.shape[1]),
        "sequences": tokens.tolist(),
        "unscored": [np.flatnonzero(~row).tolist() for row in np.asarray(positions, bool)],
        "vocab": token_texts(tokenizer, set(np.unique(tokens).tolist()) | set(extra_ids)),
    }
