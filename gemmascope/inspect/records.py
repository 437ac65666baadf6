"""The inspect stage's JSON records: one per SAE, plus the shared token table.

Formats (docs/inspect.md#json): ``sae_record`` turns an ``scan.SaeInspection`` into
``inspect/data/<slug>.json`` (``format`` ``gemmascope-inspect-sae/1``); ``tokens_record`` is
``inspect/data/tokens.json`` (``gemmascope-inspect-tokens/1``): the scanned sequences, which of
their tokens are unscored, and the text of every token id a record mentions. A context is
``{"seq", "pos", "act", "start", "acts"}``: the latent's activation ``act`` at token ``pos`` of
sequence ``seq``, shown from token ``start`` on, ``acts[i]`` being the latent's activation on
token ``start + i``.

Activations keep 5 significant digits of the latent's largest activation (absolute precision
``1e-4 x max``), logit effects and cosines 5 decimals.

Synopsis::

    record = sae_record(inspection, sae_id, tokens, quantiles=(0.0, 0.5, 0.9), examples=3,
                        metrics_row=row, density_bins=50)
    table = tokens_record(tokens, positions, tokenizer, extra_ids=token_ids_of(record))
"""

from __future__ import annotations

import collections
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


def _decimals(largest: np.ndarray) -> np.ndarray:
    """Per latent, the decimals that keep 5 significant digits of its largest value (0 to 12)."""
    largest = np.asarray(largest, np.float64)
    safe = np.where(np.isfinite(largest) & (largest > 0), largest, 1.0)
    return np.clip(4 - np.floor(np.log10(safe)), 0, 12).astype(np.int64)


def _round_rows(values, decimals: np.ndarray) -> np.ndarray:
    """``values`` (S, ...) rounded to ``decimals[i]`` decimals along row i (as ``np.round``)."""
    values = np.asarray(values, np.float64)
    scale = (10.0 ** decimals.astype(np.float64)).reshape(-1, *([1] * (values.ndim - 1)))
    return np.round(values * scale) / scale


class _LatentWriter:
    """Builds the records of one SAE's latents from its ``SaeInspection``.

    Every array is rounded and turned into Python lists once per SAE, not per context.
    """

    def __init__(self, inspection, quantiles, examples: int):
        s = inspection.stats
        self.inspection = inspection
        self.stats = s
        self.t_len = inspection.seq_len
        self.before = inspection.shape.before
        self.window = inspection.shape.window
        self.quantiles = list(quantiles)
        self.examples = int(examples)
        self.decimals = _decimals(s["top_value"][:, 0])
        self.lists = {
            key: _round_rows(s[key], self.decimals).tolist()
            for key in ("top_value", "top_window", "sample_value", "total")
        }
        self.lists["top_pos"] = s["top_pos"].tolist()
        self.lists["sample_pos"] = s["sample_pos"].tolist()
        # Only a few sampled windows are shown: rounded now, made lists when picked.
        self.sample_window = _round_rows(s["sample_window"], self.decimals)
        self.band = self._bands_of_samples()

    def _bands_of_samples(self) -> np.ndarray:
        """(S, sample_size): the band of each sampled firing, -1 for empty slots.

        A firing's band is where its value's rank among the latent's sampled firings (as a
        fraction) falls between the quantile edges.
        """
        s = self.stats
        valid = s["sample_priority"] >= 0
        order = np.argsort(np.where(valid, s["sample_value"], np.inf), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
        fraction = rank / np.maximum(valid.sum(axis=1, keepdims=True), 1)
        band = np.searchsorted(np.asarray(self.quantiles), fraction, side="right") - 1
        return np.where(valid, band, -1)

    def context(self, position: int, value: float, window: list) -> dict:
        """One context: the window around ``position``, clipped to its sequence."""
        seq, t = divmod(position, self.t_len)
        first = max(0, self.before - t)  # window index of the first token inside the sequence
        last = min(self.window, self.t_len - t + self.before)
        acts = [v if v else 0 for v in window[first:last]]  # 0, not 0.0: shorter JSON
        return {"seq": seq, "pos": t, "act": value, "start": t - self.before + first, "acts": acts}

    def top_contexts(self, slot: int) -> list[dict]:
        """The top-k contexts, largest first (latents that fired fewer times have fewer)."""
        values, positions = self.lists["top_value"][slot], self.lists["top_pos"][slot]
        windows = self.lists["top_window"][slot]
        return [
            self.context(pos, value, windows[j])
            for j, (value, pos) in enumerate(zip(values, positions, strict=True))
            if value > 0 and pos >= 0
        ]

    def bands(self, slot: int) -> list[dict]:
        """Quantile bands of the sampled firings, each with up to ``examples`` contexts.

        A band's examples are its first sampled firings in priority order (a random order).
        """
        values, positions = self.lists["sample_value"][slot], self.lists["sample_pos"][slot]
        band_of = self.band[slot]
        members: dict[int, list[int]] = {}
        for j in np.argsort(-self.stats["sample_priority"][slot], kind="stable").tolist():
            if band_of[j] >= 0:
                members.setdefault(int(band_of[j]), []).append(j)
        edges = self.quantiles + [1.0]
        out = []
        for band in sorted(members):
            in_band = [values[j] for j in members[band]]
            contexts = [
                self.context(positions[j], values[j], self.sample_window[slot, j].tolist())
                for j in members[band][: self.examples]
            ]
            out.append(
                {"from": edges[band], "to": edges[band + 1], "min": min(in_band),
                 "max": max(in_band), "contexts": contexts}
            )  # fmt: skip
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

    def directions(self) -> dict[str, list]:
        """Per latent: logit effects and neighbours as ``[[id, value], ...]`` lists."""
        inspection, out = self.inspection, {}
        pairs = [("neighbours", inspection.neighbours)]
        if inspection.logits is not None:
            pairs += list(zip(("logits_up", "logits_down"), inspection.logits, strict=True))
        for name, (ids, values) in pairs:
            rounded = np.round(np.asarray(values, np.float64), 5).tolist()
            out[name] = [
                [list(p) for p in zip(i, v, strict=True)]
                for i, v in zip(np.asarray(ids).tolist(), rounded, strict=True)
            ]
        return out

    def latents(self, tokens: np.ndarray) -> list[dict]:
        """The records of every inspected latent, in order."""
        s, inspection = self.stats, self.inspection
        directions = self.directions()
        empty = [[] for _ in inspection.latent_ids]
        records = []
        for slot, latent in enumerate(inspection.latent_ids.tolist()):
            count = int(s["count"][slot])
            mean = self.lists["total"][slot] / count if count else 0.0
            top = self.top_contexts(slot)
            records.append(
                {
                    "latent": latent,
                    "count": count,
                    "density": float(f"{count / max(inspection.n_tokens, 1):.6g}"),
                    "mean": round(mean, int(self.decimals[slot])),
                    "max": self.lists["top_value"][slot][0],
                    "top_tokens": _top_tokens(top, tokens),
                    "histogram": self.histogram(slot),
                    "top": top,
                    "bands": self.bands(slot),
                    "logits_up": directions.get("logits_up", empty)[slot],
                    "logits_down": directions.get("logits_down", empty)[slot],
                    "neighbours": directions["neighbours"][slot],
                }
            )
        return records


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
        "histogram_log10_edges": np.round(inspection.shape.histogram_edges(), 6).tolist(),
        "quantiles": list(quantiles),
        "density_histogram": _density_histogram(count, n_tokens, density_bins),
        "latents": writer.latents(tokens),
    }


def _density_histogram(count: np.ndarray, n_tokens: int, bins: int) -> dict:
    """The eval stage's firing-frequency histogram of the latents, edges to 6 decimals."""
    hist = metrics.firing_histogram(count, n_tokens, bins, float(np.floor(np.log10(1 / n_tokens))))
    hist["edges"] = np.round(hist["edges"], 6).tolist()
    return hist


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
