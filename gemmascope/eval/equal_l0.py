"""Architectures compared at equal L0: is one's reconstruction better than another's?

Gemma Scope and the JumpReLU paper compare architectures by the fidelity each reaches at a given
sparsity: a sweep traces a curve of (L0, FVU) and (L0, delta LM loss) points per architecture,
and one architecture is better where its curve lies below the other's. This module reads those
curves off the metric table:

    frame = pd.read_csv("workdir/eval/saes.csv")
    points = equal_l0.compare(frame)          # one row per SAE and rival curve
    print(equal_l0.summary_lines(points))     # one line per pair of architectures

For every (site, width) group and every ordered pair of architectures (A, B) with at least two
SAEs of B in the group, each SAE of A whose L0 lies within the L0 range of B's SAEs is compared
with B's curve at the same L0, interpolated linearly in log L0 between B's two neighbouring SAEs
(the fidelity curves are close to straight on a log-L0 axis). Points outside B's range are not
extrapolated: they are left out, and a pair with no overlap has no points. Released (imported)
SAEs form their own curves, labelled ``<architecture> (<source>)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The metrics compared (lower is better for both).
METRICS = ("fvu", "delta_loss")
POINT_COLUMNS = ("site", "width", "architecture", "versus", "sae", "l0") + tuple(
    f"{m}{suffix}" for m in METRICS for suffix in ("", "_versus")
)
# The value of the table's ``source`` column for SAEs trained by the study.
TRAINED = "trained"


def curve_label(row) -> str:
    """The curve an SAE belongs to: its architecture, with the source when it was not trained.

    Transcoders' curves carry their kind (``jumprelu transcoder_affine``), so plain and affine
    transcoders of one site pair are two curves.
    """
    label = str(row.architecture)
    kind = getattr(row, "kind", "")
    marked = getattr(row, "transcoder", False)
    if isinstance(marked, (bool, np.bool_)) and marked and isinstance(kind, str):
        label = f"{label} {kind}"
    source = getattr(row, "source", TRAINED)
    if pd.isna(source) or source == TRAINED:
        return label
    return f"{label} ({source})"


def interpolate_log_l0(l0s: np.ndarray, values: np.ndarray, at: float) -> float:
    """The curve through (l0s, values) at L0 ``at``, linear in log L0; NaN outside its range.

    Args:
      l0s: the curve's L0s (any order; positive).
      values: its metric at those L0s.
      at: the L0 to read the curve at.
    """
    order = np.argsort(l0s)
    l0s, values = np.asarray(l0s, float)[order], np.asarray(values, float)[order]
    if at < l0s[0] or at > l0s[-1] or at <= 0:
        return float("nan")
    return float(np.interp(np.log(at), np.log(l0s), values))


def compare(frame: pd.DataFrame) -> pd.DataFrame:
    """Every SAE against every other architecture's curve at its L0 (the module docstring).

    Args:
      frame: the metric table (columns site, width, architecture, sae, l0, fvu, delta_loss; an
        optional source column).

    Returns:
      One row per comparison, columns ``POINT_COLUMNS``: the SAE's own metrics and the rival
      curve's (``*_versus``) at the same L0.
    """
    frame = frame[frame["l0"] > 0].copy()
    frame["curve"] = [curve_label(row) for row in frame.itertuples()]
    # A transcoder is compared only with transcoders of its site pair (its metrics are the
    # target's), never with SAEs of its input site.
    frame["pair"] = frame["target_site"].astype(object).fillna("") if "target_site" in frame else ""
    points = []
    for (site, width, _), group in frame.groupby(["site", "width", "pair"], sort=True):
        curves = {name: rows for name, rows in group.groupby("curve", sort=True)}
        for name, rows in curves.items():
            for rival, rival_rows in curves.items():
                if rival == name or len(rival_rows) < 2:
                    continue
                for row in rows.itertuples():
                    rival_values = {
                        m: interpolate_log_l0(rival_rows["l0"].values, rival_rows[m].values, row.l0)
                        for m in METRICS
                    }
                    if np.isnan(rival_values[METRICS[0]]):
                        continue
                    point = dict(site=site, width=int(width), architecture=name, versus=rival,
                                 sae=row.sae, l0=float(row.l0))  # fmt: skip
                    for m in METRICS:
                        point[m] = float(getattr(row, m))
                        point[f"{m}_versus"] = rival_values[m]
                    points.append(point)
    return pd.DataFrame(points, columns=list(POINT_COLUMNS))


def summary_lines(points: pd.DataFrame) -> list[str]:
    """One line per ordered pair of architectures: how often the first is lower at equal L0.

    Each line counts the comparison points at which the first architecture's FVU and delta LM
    loss are below the second's interpolated curve, with the median FVU ratio (below 1: the
    first is better) and the median delta-loss difference (below 0: the first is better; a
    ratio would mislead, as a splice can lower the loss slightly).
    """
    lines = []
    for (name, rival), rows in points.groupby(["architecture", "versus"], sort=True):
        n = len(rows)
        fvu_lower = int(np.sum(rows["fvu"] < rows["fvu_versus"]))
        loss_lower = int(np.sum(rows["delta_loss"] < rows["delta_loss_versus"]))
        fvu_ratio = np.median(rows["fvu"] / rows["fvu_versus"])
        loss_diff = np.median(rows["delta_loss"] - rows["delta_loss_versus"])
        lines.append(
            f"{name} vs {rival} at equal L0 ({n} points): lower FVU at {fvu_lower} (median "
            f"ratio {fvu_ratio:.2f}), lower delta LM loss at {loss_lower} (median difference "
            f"{loss_diff:+.4f})"
        )
    return lines
