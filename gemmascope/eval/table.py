"""The per-SAE metric table: one row per SAE, written as Parquet, CSV and Markdown atomically.

Columns (meanings in docs/metrics.md): identity (``sae``, ``model``, ``site``, ``transcoder``,
``target_site``, ``kind``, ``layer``, ``d_in``, ``width``, ``architecture``, ``source``,
``sweep_field``, ``sweep_value``, ``tokens_trained``, ``eval_tokens``) then the metrics (``l0``,
``fvu``, ``mse``, ``recon_loss``, ``cosine_similarity``, ``relative_reconstruction_bias``,
``clean_loss``, ``spliced_loss``, ``delta_loss``, ``kl_div``, ``zero_ablation_loss``,
``loss_recovered``, ``frac_dead``, ``frac_dense``). A transcoder's row (``transcoder`` True) reads
``site`` and holds the metrics of ``target_site``, whose activation its output replaced.

Synopsis::

    frame = build_table(rows)                  # rows: list of dicts
    write_table(frame, workdir + "/eval")      # saes.parquet, saes.csv, saes.md
"""

from __future__ import annotations

import io
import math

import pandas as pd

from gemmascope import files

IDENTITY_COLUMNS = (
    "sae",
    "model",
    "site",
    "transcoder",
    "target_site",
    "kind",
    "layer",
    "d_in",
    "width",
    "architecture",
    "source",
    "sweep_field",
    "sweep_value",
    "tokens_trained",
    "eval_tokens",
)
METRIC_COLUMNS = (
    "l0",
    "fvu",
    "mse",
    "recon_loss",
    "cosine_similarity",
    "relative_reconstruction_bias",
    "clean_loss",
    "spliced_loss",
    "delta_loss",
    "kl_div",
    "zero_ablation_loss",
    "loss_recovered",
    "frac_dead",
    "frac_dense",
)
COLUMNS = IDENTITY_COLUMNS + METRIC_COLUMNS
TABLE_FILES = ("saes.parquet", "saes.csv", "saes.md")


def build_table(rows: list[dict]) -> pd.DataFrame:
    """A DataFrame with exactly ``COLUMNS``, sorted by site, width, architecture and L0.

    Raises:
      ValueError: a row lacks a column.
    """
    for row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"table row for {row.get('sae')!r} lacks column(s) {missing}")
    frame = pd.DataFrame([{c: row[c] for c in COLUMNS} for row in rows], columns=list(COLUMNS))
    # Mixed int/float/None sweep values and model names must stay one Parquet type.
    frame["sweep_value"] = pd.to_numeric(frame["sweep_value"], errors="coerce").astype("float64")
    frame["tokens_trained"] = pd.to_numeric(frame["tokens_trained"], errors="coerce")
    frame["tokens_trained"] = frame["tokens_trained"].astype("Int64")
    for column in ("model", "sweep_field", "target_site"):
        frame[column] = frame[column].astype("string")
    frame["transcoder"] = frame["transcoder"].astype(bool)
    return frame.sort_values(["kind", "layer", "width", "architecture", "l0"], kind="stable")


def _format_cell(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` (floats to 6 significant digits, NaN empty)."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = [
        "| " + " | ".join(_format_cell(v) for v in row) + " |"
        for row in frame.astype(object).itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


def write_table(frame: pd.DataFrame, out_dir: str) -> list[str]:
    """Writes ``saes.parquet``, ``saes.csv`` and ``saes.md`` under ``out_dir`` (local or gs://).

    All three are rendered in memory first, then each is written atomically
    (``files.write_bytes``), so a failure while rendering leaves the previous table untouched and
    a crash never leaves a truncated file.

    Returns:
      the three final paths.
    """
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    rendered = {
        "saes.parquet": parquet.getvalue(),
        "saes.csv": frame.to_csv(index=False).encode("utf-8"),
        "saes.md": to_markdown(frame).encode("utf-8"),
    }
    paths = []
    for name, payload in rendered.items():
        paths.append(files.join(out_dir, name))
        files.write_bytes(paths[-1], payload)
    return paths
