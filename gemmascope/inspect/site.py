"""The static site under ``workdir/inspect/``: plain HTML, CSS and a little JavaScript.

Layout (docs/inspect.md#the-site)::

    inspect/index.html             every SAE: its metric-table row, a link to its page; plots
    inspect/saes/<slug>.html       one SAE: density histogram, searchable latent list, and the
                                   latent view (#latent=<id>): contexts, histogram, logit
                                   effects, neighbours
    inspect/data/<slug>.json       its data (records.sae_record), for other tools
    inspect/data/<slug>.js         the same, as `window.GS_SAE = {...};` for the page
    inspect/data/tokens.{json,js}  the scanned sequences and token texts (records.tokens_record)
    inspect/assets/                inspect.js, style.css
    inspect/plots/                 the eval stage's fidelity plots, copied

One page per SAE renders any of its latents from the data script, so a 16k-latent SAE is one page,
not 16k files. The data is loaded by ``<script>`` tags, which browsers allow from ``file://``
(``fetch()`` of a sibling file is refused there). Nothing is fetched from the network. Every
file is written atomically through ``gemmascope.files`` (local or gs://).

Synopsis::

    index = write_site(workdir + "/inspect", records, tokens_table, title="tiny_demo",
                       plots={"resid_post_layer1_fidelity.png": png_bytes})
"""

from __future__ import annotations

import html
import json
import math
import os

from gemmascope import files

WEB_DIR = os.path.join(os.path.dirname(__file__), "web")
ASSETS = ("inspect.js", "style.css")
# Metric-table columns shown on the index and SAE pages, with their headings.
METRIC_COLUMNS = (
    ("l0", "L0"),
    ("fvu", "FVU"),
    ("delta_loss", "delta LM loss"),
    ("loss_recovered", "loss recovered"),
    ("kl_div", "KL"),
    ("frac_dead", "dead (eval)"),
)


def slug(sae_id: str) -> str:
    """File name stem of an SAE: its id with '/' as '__' (ids have a fixed depth, so unique)."""
    return sae_id.replace("/", "__")


def _json_text(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _write_data(out_dir: str, stem: str, obj, variable: str) -> None:
    """Writes ``data/<stem>.json`` and ``data/<stem>.js`` (``window.<variable> = ...;``)."""
    text = _json_text(obj)
    files.write_bytes(files.join(out_dir, "data", stem + ".json"), text.encode("utf-8"))
    script = f"window.{variable} = {text};\n"
    files.write_bytes(files.join(out_dir, "data", stem + ".js"), script.encode("utf-8"))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _page(title: str, body: str, depth: int, page: str, scripts: list[str]) -> str:
    """A whole HTML page; ``depth`` is its folder depth under inspect/ (for relative links)."""
    up = "../" * depth
    tags = "".join(f'<script src="{up}{html.escape(s)}"></script>' for s in scripts)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{up}assets/style.css"></head>\n'
        f'<body data-page="{page}">\n{body}\n'
        f'{tags}<script src="{up}assets/inspect.js"></script>\n</body></html>\n'
    )


def _sweep_text(config: dict) -> str:
    if config.get("sweep_field") is None:
        return config.get("tag") or ""
    return f"{config['sweep_field']}={config.get('sweep_value')}"


def _index_page(records: list[dict], title: str, plots: list[str]) -> str:
    heads = ["SAE", "site", "width", "architecture", "setting"]
    heads += [label for _, label in METRIC_COLUMNS] + ["latents inspected", "dead (scan)"]
    rows = []
    for record in records:
        config, row = record["config"], record["metrics"] or {}
        dead = record["density_histogram"]["dead"]
        cells = [
            f'<a href="saes/{html.escape(slug(record["sae"]))}.html">'
            f"{html.escape(record['sae'])}</a>",
            _cell(config.get("site")),
            _cell(config.get("width")),
            _cell(config.get("architecture")),
            _cell(_sweep_text(config)),
            *(_cell(row.get(column)) for column, _ in METRIC_COLUMNS),
            _cell(record["latents_inspected"]) + (" (sample)" if record["sampled"] else ""),
            _cell(dead),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    figures = "".join(
        f'<figure><img src="plots/{html.escape(name)}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name in plots
    )
    tokens = records[0]["eval_tokens"] if records else 0
    body = (
        f"<h1>{html.escape(title)}: {len(records)} SAEs</h1>\n"
        f"<p>Per-latent statistics on {tokens} held-out tokens. Metrics from the eval "
        "stage's table (empty when it has not run).</p>\n"
        '<input type="search" id="filter" placeholder="Filter SAEs">\n'
        '<table id="sae-table"><thead><tr>'
        + "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        + "</tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>\n"
        + (
            f'<section class="plots" id="plots"><h2>Fidelity plots</h2>{figures}</section>'
            if plots
            else ""
        )
    )
    return _page(f"{title}: inspect", body, 0, "index", [])


def _sae_page(record: dict) -> str:
    config, row = record["config"], record["metrics"] or {}
    meta = [
        ("site", config.get("site")),
        ("width", config.get("width")),
        ("architecture", config.get("architecture")),
        ("setting", _sweep_text(config)),
        ("source", config.get("source")),
        ("scanned tokens", record["eval_tokens"]),
        ("latents inspected", record["latents_inspected"]),
        *((label, row.get(column)) for column, label in METRIC_COLUMNS),
    ]
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_cell(value)}</td></tr>" for name, value in meta
    )
    sampled = (
        "<p>A sample of the latents is inspected (inspect.max_latents).</p>"
        if record["sampled"]
        else ""
    )
    body = (
        '<nav><a href="../index.html">All SAEs</a></nav>\n'
        f"<h1>{html.escape(record['sae'])}</h1>\n{sampled}"
        f'<table class="meta" id="summary">{table}</table>\n'
        '<section id="density"></section>\n'
        '<div class="layout"><section id="latent-view"></section>\n'
        '<section id="latents"><h2>Latents</h2>'
        '<input type="search" id="search" placeholder="Search latent id or token">'
        '<div id="latent-list-box"><table id="latent-list"><thead><tr><th>latent</th>'
        "<th>density</th><th>max</th><th>top tokens</th></tr></thead><tbody></tbody></table>"
        "</div></section></div>"
    )
    scripts = ["data/tokens.js", f"data/{slug(record['sae'])}.js"]
    return _page(record["sae"], body, 1, "sae", scripts)


def write_site(
    out_dir: str, records: list[dict], tokens: dict, *, title: str, plots: dict[str, bytes]
) -> str:
    """Writes the site and the JSON data under ``out_dir``; returns the index page's path.

    Args:
      out_dir: ``workdir/inspect`` (local or gs://).
      records: ``records.sae_record`` of every SAE, in table order.
      tokens: ``records.tokens_record``.
      title: the study's name.
      plots: PNG files to show on the index, by file name.
    """
    for name in ASSETS:
        with open(os.path.join(WEB_DIR, name), "rb") as f:
            files.write_bytes(files.join(out_dir, "assets", name), f.read())
    _write_data(out_dir, "tokens", tokens, "GS_TOKENS")
    for record in records:
        _write_data(out_dir, slug(record["sae"]), record, "GS_SAE")
        page = _sae_page(record)
        files.write_bytes(files.join(out_dir, "saes", slug(record["sae"]) + ".html"), page.encode())
    for name, payload in plots.items():
        files.write_bytes(files.join(out_dir, "plots", name), payload)
    index = files.join(out_dir, "index.html")
    files.write_bytes(index, _index_page(records, title, sorted(plots)).encode("utf-8"))
    return index
