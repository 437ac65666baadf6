"""The inspect stage: every SAE under ``workdir/saes`` into the site under ``workdir/inspect``.

Synopsis::

    from gemmascope import inspect
    index = inspect.inspect(config, workdir)   # config.model, config.data, config.inspect

Reads the SAEs as the eval stage does (``eval.find_saes``), scans the first
``inspect.n_sequences`` sequences of the data's "eval" split at the positions SAEs are trained and
evaluated on (``data.trained_positions``), and writes the JSON records and the static site
(``site.write_site``), with the metric table's rows when the eval stage has run. Process 0 writes.
"""

from __future__ import annotations

import io
import json
import os

import jax
import pandas as pd

from gemmascope import data, files, model
from gemmascope.eval import run as eval_run
from gemmascope.inspect import records, scan, site
from gemmascope.inspect.config import validate
from gemmascope.model import params as lm_params

# Bins of each SAE's firing-density histogram (as eval.histogram_bins' default).
DENSITY_BINS = 50


def sae_id(folder: str, workdir: str) -> str:
    """``folder`` relative to ``workdir/saes``, '/'-separated (the metric table's ``sae``)."""
    root = files.join(workdir, "saes")
    if files.is_url(folder):
        return folder[len(root) :].strip("/")
    return os.path.relpath(folder, root).replace(os.sep, "/")


def metric_rows(workdir: str) -> dict[str, dict]:
    """The eval stage's table rows by ``sae`` (NaN as None), or {} when it has not run."""
    path = files.join(workdir, "eval", "saes.csv")
    if not files.exists(path):
        return {}
    frame = pd.read_csv(io.BytesIO(files.read_bytes(path)))
    return {row["sae"]: row for row in json.loads(frame.to_json(orient="records"))}


def fidelity_plots(workdir: str) -> dict[str, bytes]:
    """The eval stage's per-site fidelity plots (PNG bytes by file name), if any."""
    folder = files.join(workdir, "eval", "plots")
    return {
        name: files.read_bytes(files.join(folder, name))
        for name in files.listdir(folder)
        if name.endswith("_fidelity.png")
    }


def inspect(config, workdir: str) -> str:
    """Inspects every SAE under ``workdir/saes`` and writes ``workdir/inspect/``.

    Args:
      config: a study config with sections ``model``, ``data`` (its "eval" split is scanned)
        and ``inspect`` (``inspect.default_config()``); ``name`` titles the site.
      workdir: the study's workdir.

    Returns:
      the path of the site's index page.

    Raises:
      FileNotFoundError: no SAEs in the workdir.
      ValueError: an invalid inspect config or an SAE that does not fit the model.
    """
    cfg = config.inspect
    validate(cfg)
    mesh = lm_params.lm_mesh(cfg.model_parallel, field="inspect.model_parallel")
    saes = eval_run.find_saes(workdir)
    model_cfg, model_params, tokenizer = model.load_from_config(config.model, mesh=mesh)
    tokens = eval_run.eval_tokens(config.data, tokenizer, int(cfg.n_sequences))
    positions = data.trained_positions(config.data, tokenizer, tokens, model_cfg.special_token_ids)
    results = scan.inspect_saes(model_cfg, model_params, tokens, saes, cfg, positions)
    out_dir = files.join(workdir, "inspect")
    index = files.join(out_dir, "index.html")
    if jax.process_index() != 0:  # multi-host: every process computes, process 0 writes
        return index
    rows = metric_rows(workdir)
    built = []
    for result in results:
        identity = sae_id(result.entry.folder, workdir)
        built.append(
            records.sae_record(
                result,
                identity,
                tokens,
                quantiles=tuple(cfg.quantiles),
                examples=int(cfg.examples_per_quantile),
                metrics_row=rows.get(identity),
                density_bins=DENSITY_BINS,
            )
        )
    built.sort(key=lambda record: record["sae"])
    extra = set().union(*(records.token_ids_of(record) for record in built))
    table = records.tokens_record(tokens, positions, tokenizer, extra_ids=extra)
    title = str(config.get("name", "study"))
    return site.write_site(out_dir, built, table, title=title, plots=fidelity_plots(workdir))
