"""Plots of the metric table (matplotlib, Agg backend), each PNG written atomically.

- ``<kind>_layer<L>_fidelity.png``: per site, delta LM loss and FVU against L0 (log axes), one
  curve per (width, architecture), like Gemma Scope's Figure 2.
- ``<kind>_layer<L>_width<W>_<arch>_firing.png``: per group, the log10 firing-frequency
  histogram of every SAE (dead latents counted in the legend).
- ``<kind>_layer<L>_width<W>_<arch>_position.png``: per group, reconstruction loss by position.

Synopsis::

    paths = write_plots(frame, details_by_sae, workdir + "/eval/plots")
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gemmascope import files  # noqa: E402
from gemmascope.export.layout import width_label  # noqa: E402


def _save(fig, path: str) -> str:
    """Renders `fig` to PNG and writes it atomically (local or gs://); closes the figure."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    files.write_bytes(path, buffer.getvalue())
    return path


def _label(row) -> str:
    if pd.notna(row.sweep_value):
        return f"{row.sweep_field}={row.sweep_value:g}"
    return row.sae.rsplit("/", 1)[-1]


def _fidelity_plot(site_rows: pd.DataFrame, site: str, path: str) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (width, arch), curve in site_rows.groupby(["width", "architecture"], sort=True):
        curve = curve.sort_values("l0")
        label = f"{width_label(int(width))} {arch}"
        for ax, column in zip(axes, ("delta_loss", "fvu"), strict=True):
            ax.plot(curve["l0"], curve[column], marker="o", label=label)
    for ax, title in zip(axes, ("Delta LM loss", "Fraction of variance unexplained"), strict=True):
        ax.set_xlabel("L0")
        ax.set_title(f"{site}: {title}")
        _log_scale_if_positive(ax, site_rows)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small")
    return _save(fig, path)


def _log_scale_if_positive(ax, rows: pd.DataFrame) -> None:
    """Log axes (as Gemma Scope's Figure 2) where values are positive and span a decade."""
    if _spans_a_decade(rows["l0"].to_numpy(dtype=float)):
        ax.set_xscale("log")
    lines = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
    if lines and _spans_a_decade(np.concatenate(lines)):
        ax.set_yscale("log")


def _spans_a_decade(values: np.ndarray) -> bool:
    values = values[np.isfinite(values)]
    return bool(values.size) and (values > 0).all() and values.max() >= 10 * values.min()


def _group_plots(group_rows: pd.DataFrame, details: dict, stem: str, out_dir: str) -> list[str]:
    fig_h, ax_h = plt.subplots(figsize=(6, 4))
    fig_p, ax_p = plt.subplots(figsize=(6, 4))
    for row in group_rows.sort_values("l0").itertuples(index=False):
        info = details[row.sae]
        hist = info["firing_histogram"]
        edges = np.asarray(hist["edges"])
        ax_h.stairs(hist["counts"], edges, label=f"{_label(row)} (dead {hist['dead']})")
        by_position = np.array(
            [np.nan if v is None else v for v in info["recon_loss_by_position"]], dtype=float
        )
        ax_p.plot(np.arange(len(by_position)), by_position, label=_label(row))
    ax_h.set_xlabel("log10 firing frequency")
    ax_h.set_ylabel("latents")
    ax_h.set_title(f"{stem}: firing frequencies")
    ax_h.legend(fontsize="small")
    ax_p.set_xlabel("position")
    ax_p.set_ylabel("mean ||x - x_hat||^2")
    ax_p.set_title(f"{stem}: reconstruction loss by position")
    ax_p.legend(fontsize="small")
    return [
        _save(fig_h, files.join(out_dir, f"{stem}_firing.png")),
        _save(fig_p, files.join(out_dir, f"{stem}_position.png")),
    ]


def write_plots(frame: pd.DataFrame, details: dict[str, dict], out_dir: str) -> list[str]:
    """Writes every plot for ``frame`` (the metric table) into ``out_dir``.

    Args:
      frame: the table of ``gemmascope.eval.table.build_table``.
      details: per ``sae`` column value, the details dict of the evaluation (histogram, by
        position).
      out_dir: the plots folder (created if needed).

    Returns:
      the written PNG paths.
    """
    files.makedirs(out_dir)
    paths = []
    for (kind, layer), site_rows in frame.groupby(["kind", "layer"], sort=True):
        site = f"{kind}/{layer}"
        paths.append(
            _fidelity_plot(
                site_rows, site, files.join(out_dir, f"{kind}_layer{layer}_fidelity.png")
            )
        )
        for (width, arch), group_rows in site_rows.groupby(["width", "architecture"], sort=True):
            stem = f"{kind}_layer{layer}_width{width_label(int(width))}_{arch}"
            paths.extend(_group_plots(group_rows, details, stem, out_dir))
    return paths
