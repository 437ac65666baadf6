"""The inspect site in headless Chromium: the pages render, and what they highlight is right.

The pages are opened from disk (file://) as a user would. The oracle test reads the highlighted
activations of the contexts a latent page shows (each token's ``data-act``, and which tokens are
coloured) and compares them with a fresh float64 encoding of the same sequences
(``inspect_setup.fresh_activations``), computed without the inspect package.
"""

import json
import os

import browser
import inspect_setup
import matplotlib.image
import numpy as np
import pytest

from gemmascope.inspect import site

CHROMIUM = browser.find()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=browser.SKIP_MESSAGE)


def _url(path, fragment=""):
    return "file://" + os.path.abspath(path) + fragment


def _page(workdir, folder):
    sae_id = os.path.relpath(folder, os.path.join(workdir, "saes"))
    root = os.path.join(workdir, "inspect")
    with open(os.path.join(root, "data", site.slug(sae_id) + ".json")) as f:
        record = json.load(f)
    return os.path.join(root, "saes", site.slug(sae_id) + ".html"), record


def _busiest(record):
    """The latent with the most contexts (ties: the lowest id)."""
    return max(record["latents"], key=lambda latent: (len(latent["top"]), -latent["latent"]))


def test_index_lists_every_sae_with_working_links(study):
    _, _, workdir, index, _, _, folders = study
    dom = browser.parse(browser.dump_dom(CHROMIUM, _url(index)))
    rows = dom.find(id="sae-table").find("tbody").find_all("tr")
    assert len(rows) == len(folders) == 4
    for row in rows:
        link = row.find("a")
        assert os.path.exists(os.path.join(os.path.dirname(index), link.attrs["href"]))
        assert link.text in {os.path.relpath(f, os.path.join(workdir, "saes")) for f in folders}
    assert dom.find(id="filter").tag == "input"


def test_sae_page_renders_the_list_the_density_and_a_latent(study):
    _, config, workdir, _, _, _, folders = study
    page, record = _page(workdir, folders[-1])
    latent = _busiest(record)
    dom = browser.parse(browser.dump_dom(CHROMIUM, _url(page, f"#latent={latent['latent']}")))
    rows = dom.find(id="latent-list").find("tbody").find_all("tr")
    assert len(rows) == record["latents_inspected"]
    assert [r.attrs["data-latent"] for r in rows] == [str(x["latent"]) for x in record["latents"]]
    assert "selected" in rows[record["latents"].index(latent)].classes()
    bars = dom.find(id="density").find_all("rect", cls="bar")
    assert len(bars) == len(record["density_histogram"]["counts"])
    view = dom.find(id="latent-view")
    assert view.find("h2").text == f"Latent {latent['latent']}"
    assert len(view.find(id="top-contexts").find_all("div", cls="context")) == len(latent["top"])
    n_band = sum(len(b["contexts"]) for b in latent["bands"])
    assert len(view.find(id="quantile-bands").find_all("div", cls="context")) == n_band
    effects = view.find(id="logit-effects")
    assert len(effects.find("table", cls="up").find("tbody").find_all("tr")) == (
        config.inspect.n_logit_tokens
    )
    neighbours = view.find(id="neighbours").find_all("li")
    assert len(neighbours) == config.inspect.n_neighbours
    assert view.find_all("rect", cls="bar")  # the latent's activation histogram


def test_a_missing_latent_says_so(study):
    _, _, workdir, _, _, _, folders = study
    page, _ = _page(workdir, folders[0])
    dom = browser.parse(browser.dump_dom(CHROMIUM, _url(page, "#latent=99999")))
    assert "Latent 99999 was not inspected" in dom.find(id="latent-view").text


@pytest.mark.parametrize("which", [0, 2])  # attn_z/0 (released), resid_post/1 JumpReLU
def test_highlighted_activations_equal_a_fresh_encoding(study, which):
    model_cfg, config, workdir, _, tokens, positions, folders = study
    folder = folders[which]
    page, record = _page(workdir, folder)
    fresh, _, _ = inspect_setup.fresh_activations(model_cfg, config, folder, tokens, positions)
    latent = _busiest(record)
    f = fresh[..., latent["latent"]]
    tol = 1e-4 * float(f.max()) + 1e-6  # the records keep 5 significant digits of the max
    dom = browser.parse(browser.dump_dom(CHROMIUM, _url(page, f"#latent={latent['latent']}")))
    contexts = dom.find(id="latent-view").find_all("div", cls="context")
    assert len(contexts) >= 3
    highlighted = 0
    for context in contexts:
        seq, start = int(context.attrs["data-seq"]), int(context.attrs["data-start"])
        spans = context.find_all("span", cls="tok")
        ids = [int(s.attrs["data-token"]) for s in spans]
        assert ids == tokens[seq, start : start + len(spans)].tolist()  # the right tokens
        shown = np.array([float(s.attrs["data-act"]) for s in spans])
        np.testing.assert_allclose(shown, f[seq, start : start + len(spans)], atol=tol, rtol=1e-5)
        coloured = ["background-color" in s.attrs.get("style", "") for s in spans]
        assert coloured == list(f[seq, start : start + len(spans)] > 0)
        centre = [s for s in spans if "centre" in s.classes()]
        assert len(centre) == 1 and float(centre[0].attrs["data-act"]) == pytest.approx(
            float(context.attrs["data-act"]), abs=tol
        )
        highlighted += sum(coloured)
    assert highlighted >= len(contexts)


def test_screenshot_of_a_latent_page_shows_highlighted_tokens(study, tmp_path):
    _, _, workdir, _, _, _, folders = study
    page, record = _page(workdir, folders[2])
    shot = tmp_path / "latent.png"
    browser.screenshot(CHROMIUM, _url(page, f"#latent={_busiest(record)['latent']}"), shot)
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (1400, 1280)
    colours = np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, tables and charts, not a blank page
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    orange = (r > 0.9) & (g > 0.35) & (g < 0.85) & (b < 0.6)  # highlights and histogram bars
    assert orange.sum() > 500
