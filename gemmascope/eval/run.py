"""The evaluation stage: every SAE under ``workdir/saes`` into ``workdir/eval``.

Synopsis::

    from gemmascope import eval as gs_eval
    frame = gs_eval.evaluate(config, workdir)   # config.model, config.data, config.eval

Writes ``workdir/eval/saes.{parquet,csv,md}`` (one row per SAE; columns in docs/metrics.md),
``workdir/eval/details.json`` (per SAE: firing-frequency histogram and reconstruction loss by
position) and ``workdir/eval/plots/*.png``. Every file is written atomically.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pandas as pd

from gemmascope import data, files, model
from gemmascope.eval import equal_l0, plots, table
from gemmascope.eval.config import lm_mesh, validate
from gemmascope.eval.sweep_eval import SaeEntry, evaluate_saes
from gemmascope.export import layout


def find_saes(workdir: str) -> list[SaeEntry]:
    """Loads every SAE folder under ``workdir/saes`` (ours and imported released ones).

    Raises:
      FileNotFoundError: there is no SAE (nothing exported or imported yet).
    """
    found = layout.list_saes(workdir)
    if not found:
        raise FileNotFoundError(
            f"no SAEs under {files.join(workdir, 'saes')}: each needs params.npz + config.json "
            "in saes/<kind>/layer_<L>/width_<W>/<arch>_<tag>/; run the train stage and "
            "gemmascope.export.export_run (or export.import_released) first"
        )
    return [SaeEntry.load(folder) for folder, _ in found]


def eval_tokens(data_cfg, tokenizer, n_sequences: int) -> np.ndarray:
    """The first ``n_sequences`` held-out sequences (split "eval", never used in training).

    Raises:
      ValueError: the eval split is empty.
    """
    sequences = np.asarray(data.sequences(data_cfg, tokenizer, split="eval"))
    if sequences.ndim != 2 or len(sequences) == 0:
        raise ValueError(
            f"the data's eval split is empty (shape {sequences.shape}); raise "
            "data.eval_fraction or data.n_eval_sequences"
        )
    return sequences[:n_sequences]


def _relative_id(folder: str, root: str) -> str:
    """`folder` relative to `root`, '/'-separated (the table's ``sae`` column)."""
    if files.is_url(folder):
        return folder[len(root) :].strip("/")
    return os.path.relpath(folder, root).replace(os.sep, "/")


def table_rows(
    saes: list[SaeEntry], results: list[tuple[dict, dict]], workdir: str, model_name: str | None
) -> tuple[list[dict], dict[str, dict]]:
    """Table rows (identity columns + metrics) and details keyed by the ``sae`` column."""
    rows, details = [], {}
    root = files.join(workdir, "saes")
    for entry, (values, info) in zip(saes, results, strict=True):
        config = entry.config
        recorded_model = config["model"]
        sae_id = _relative_id(entry.folder, root)
        rows.append(
            {
                "sae": sae_id,
                "model": recorded_model if isinstance(recorded_model, str) else model_name,
                "site": config["site"],
                # Transcoder rows: metrics are of target_site, which the output replaced.
                "transcoder": bool(config.get("target_site")),
                "target_site": config.get("target_site") or "",
                "kind": config["kind"],
                "layer": int(config["layer"]),
                "d_in": int(config["d_in"]),
                "width": int(config["width"]),
                "architecture": config["architecture"],
                "source": config["source"],
                "sweep_field": config["sweep_field"],
                "sweep_value": config["sweep_value"],
                "tokens_trained": config["tokens_trained"],
                **values,
            }
        )
        details[sae_id] = info
    return rows, details


def evaluate(config, workdir: str) -> pd.DataFrame:
    """Evaluates every SAE under ``workdir/saes`` on held-out data and writes the table.

    Args:
      config: a study config with sections ``model`` (``path``, ``dtype``; see
        ``model.load_from_config``), ``data`` (the data config; its "eval" split is used) and
        ``eval`` (``eval.default_config()``).
      workdir: the study's workdir.

    Returns:
      the metric table (also written to ``workdir/eval/saes.{parquet,csv,md}``).

    Raises:
      FileNotFoundError: no SAEs in the workdir.
      ValueError: an invalid eval config or an SAE that does not fit the model.
    """
    eval_cfg = config.eval
    validate(eval_cfg)
    mesh = lm_mesh(eval_cfg)  # before loading: a model_parallel the devices refuse fails fast
    saes = find_saes(workdir)
    # Each tensor goes straight into its shards on the (data, model) mesh.
    model_cfg, model_params, tokenizer = model.load_from_config(config.model, mesh=mesh)
    tokens = eval_tokens(config.data, tokenizer, int(eval_cfg.n_sequences))
    # The positions the SAEs were trained on: not BOS/EOS/pad, nor a chat template's user prefix.
    positions = data.trained_positions(config.data, tokenizer, tokens, model_cfg.special_token_ids)
    results = evaluate_saes(model_cfg, model_params, tokens, saes, eval_cfg, positions)
    model_name = str(config.model.path)
    rows, details = table_rows(saes, results, workdir, model_name)
    frame = table.build_table(rows)
    if jax.process_index() != 0:  # multi-host: every process computes, process 0 writes
        return frame
    out_dir = files.join(workdir, "eval")
    table.write_table(frame, out_dir)
    points = equal_l0.compare(frame)
    files.write_bytes(files.join(out_dir, "equal_l0.csv"), points.to_csv(index=False).encode())
    layout.write_json_atomic(files.join(out_dir, "details.json"), details)
    if eval_cfg.plots:
        plots.write_plots(frame, details, files.join(out_dir, "plots"))
    return frame
