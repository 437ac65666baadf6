/*
 * gemmascope inspect: the pages of workdir/inspect/ (docs/inspect.md).
 *
 * An SAE page loads its data as scripts (data/tokens.js sets window.GS_TOKENS, data/<slug>.js
 * sets window.GS_SAE), which also works from file:// where fetch() of sibling files does not.
 * Everything is built with DOM calls and textContent: token texts never become HTML.
 * No network, no libraries.
 */
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "";
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
    return String(+x.toPrecision(4));
  }

  function tokenText(tokens, id) {
    const text = tokens.vocab[String(id)];
    return text === undefined ? "<" + id + ">" : text;
  }

  function visible(text) {
    return text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d");
  }

  /* A bar chart: counts[i] over [edges[i], edges[i + 1]], x labels from label(edge). */
  function barChart(counts, edges, label, caption) {
    const width = 420, height = 120, pad = 24;
    const svg = svgEl("svg", {
      class: "chart", viewBox: `0 0 ${width} ${height + pad}`, width: width, height: height + pad,
    });
    const top = Math.max(1, ...counts);
    const step = (width - 2) / Math.max(1, counts.length);
    counts.forEach((count, i) => {
      const h = (height - 4) * count / top;
      const bar = svgEl("rect", {
        class: "bar", x: 1 + i * step, y: height - h, width: Math.max(1, step - 1), height: h,
      });
      const tip = svgEl("title", {});
      tip.textContent = `${label(edges[i])} to ${label(edges[i + 1])}: ${count}`;
      bar.appendChild(tip);
      svg.appendChild(bar);
    });
    svg.appendChild(svgEl("line", { x1: 0, y1: height, x2: width, y2: height, class: "axis" }));
    const ticks = [0, Math.floor(counts.length / 2), counts.length];
    for (const i of ticks) {
      const text = svgEl("text", {
        x: Math.min(width - 30, Math.max(0, 1 + i * step - 10)), y: height + 16, class: "tick",
      });
      text.textContent = label(edges[i]);
      svg.appendChild(text);
    }
    return el("figure", {}, [svg, el("figcaption", { text: caption })]);
  }

  // ----------------------------------------------------------------------------------- index

  function initIndex() {
    const input = document.getElementById("filter");
    const rows = Array.from(document.querySelectorAll("#sae-table tbody tr"));
    if (!input) return;
    input.addEventListener("input", () => {
      const query = input.value.trim().toLowerCase();
      for (const row of rows) row.hidden = query !== "" && !row.textContent.toLowerCase().includes(query);
    });
  }

  // ------------------------------------------------------------------------------- SAE page

  function renderDensity(data) {
    const hist = data.density_histogram;
    const box = document.getElementById("density");
    box.appendChild(barChart(
      hist.counts, hist.edges, (e) => "1e" + fmt(e),
      `Firing density of the ${data.latents_inspected} inspected latents (log10 of the fraction ` +
      `of ${data.eval_tokens} scanned tokens); ${hist.dead} never fired.`));
  }

  function topTokensText(tokens, latent) {
    return latent.top_tokens.map((id) => JSON.stringify(tokenText(tokens, id))).join(" ");
  }

  function renderList(data, tokens) {
    const body = document.querySelector("#latent-list tbody");
    for (const latent of data.latents) {
      const link = el("a", { href: "#latent=" + latent.latent, text: String(latent.latent) });
      const row = el("tr", { "data-latent": latent.latent }, [
        el("td", {}, [link]),
        el("td", { class: "num", text: fmt(latent.density) }),
        el("td", { class: "num", text: fmt(latent.max) }),
        el("td", { class: "toks", text: visible(topTokensText(tokens, latent)) }),
      ]);
      body.appendChild(row);
    }
    const search = document.getElementById("search");
    search.addEventListener("input", () => {
      const query = search.value.trim().toLowerCase();
      for (const row of body.rows) {
        row.hidden = query !== "" && !row.textContent.toLowerCase().includes(query);
      }
    });
  }

  /* One context: acts[i] is the latent's activation on token start + i of sequence seq. */
  function contextNode(ctx, tokens, largest) {
    const seq = tokens.sequences[ctx.seq];
    const end = ctx.start + ctx.acts.length;
    const unscored = new Set(tokens.unscored[ctx.seq]);
    const line = el("div", {
      class: "context", "data-seq": ctx.seq, "data-pos": ctx.pos, "data-start": ctx.start,
      "data-act": ctx.act,
    }, [el("span", { class: "ctx-act", text: fmt(ctx.act) })]);
    for (let i = ctx.start; i < end; i++) {
      const value = ctx.acts[i - ctx.start];
      let cls = "tok";
      if (i === ctx.pos) cls += " centre";
      if (unscored.has(i)) cls += " unscored";
      const text = tokenText(tokens, seq[i]);
      const span = el("span", {
        class: cls, "data-token": seq[i], "data-act": value,
        title: `${JSON.stringify(text)} (token ${seq[i]}): ${fmt(value)}`, text: visible(text),
      });
      if (value > 0) {
        const alpha = 0.15 + 0.85 * Math.min(1, value / Math.max(largest, 1e-30));
        span.style.backgroundColor = `rgba(255, 110, 0, ${alpha.toFixed(3)})`;
      }
      line.appendChild(span);
    }
    return line;
  }

  function tokenTable(title, rows, tokens, cls) {
    const body = rows.map(([id, value]) => el("tr", {}, [
      el("td", { class: "tokcell", text: visible(JSON.stringify(tokenText(tokens, id))) }),
      el("td", { class: "num", text: fmt(value) }),
    ]));
    return el("table", { class: "logits " + cls }, [
      el("thead", {}, [el("tr", {}, [el("th", { colspan: 2, text: title })])]),
      el("tbody", {}, body),
    ]);
  }

  function latentView(data, tokens, latent) {
    const parts = [
      el("h2", { text: "Latent " + latent.latent }),
      el("p", {
        class: "latent-stats",
        text: `fires on ${latent.count} of ${data.eval_tokens} tokens (density ` +
          `${fmt(latent.density)}); mean activation when firing ${fmt(latent.mean)}, ` +
          `max ${fmt(latent.max)}`,
      }),
    ];
    if (latent.count === 0) {
      parts.push(el("p", { class: "dead", text: "This latent never fired on the scanned tokens." }));
    } else {
      const edges = data.histogram_log10_edges.slice(
        latent.histogram.first_bin, latent.histogram.first_bin + latent.histogram.counts.length + 1);
      parts.push(barChart(latent.histogram.counts, edges, (e) => fmt(Math.pow(10, e)),
        "Activation histogram (log10 bins of the non-zero activations)"));
    }
    const top = el("section", { id: "top-contexts" }, [el("h3", { text: "Top activations" })]);
    for (const ctx of latent.top) top.appendChild(contextNode(ctx, tokens, latent.max));
    parts.push(top);
    const bands = el("section", { id: "quantile-bands" }, [el("h3", { text: "Sampled by quantile" })]);
    for (const band of latent.bands) {
      const box = el("div", { class: "band" }, [el("h4", {
        text: `firings ranked ${fmt(100 * band.from)}% to ${fmt(100 * band.to)}% ` +
          `(activations ${fmt(band.min)} to ${fmt(band.max)})`,
      })]);
      for (const ctx of band.contexts) box.appendChild(contextNode(ctx, tokens, latent.max));
      bands.appendChild(box);
    }
    parts.push(bands);
    const effects = el("section", { id: "logit-effects" }, [el("h3", { text: "Logit effects" })]);
    if (latent.logits_up.length) {
      effects.appendChild(tokenTable("raises", latent.logits_up, tokens, "up"));
      effects.appendChild(tokenTable("lowers", latent.logits_down, tokens, "down"));
    } else {
      effects.appendChild(el("p", { text: "No direct path from this site to the logits." }));
    }
    parts.push(effects);
    const known = new Set(data.latents.map((l) => l.latent));
    const near = el("ul", { class: "neighbours" });
    for (const [id, cosine] of latent.neighbours) {
      const name = known.has(id)
        ? el("a", { href: "#latent=" + id, text: "latent " + id })
        : el("span", { text: "latent " + id + " (not inspected)" });
      near.appendChild(el("li", {}, [name, " cos " + fmt(cosine)]));
    }
    parts.push(el("section", { id: "neighbours" }, [
      el("h3", { text: "Nearest latents (decoder cosine)" }), near]));
    return parts;
  }

  function initSae() {
    const data = window.GS_SAE, tokens = window.GS_TOKENS;
    const view = document.getElementById("latent-view");
    if (!data || !tokens) {
      view.textContent = "The data scripts did not load (data/tokens.js, data/<sae>.js).";
      return;
    }
    const byId = new Map(data.latents.map((latent) => [latent.latent, latent]));
    renderDensity(data);
    renderList(data, tokens);
    function route() {
      const match = window.location.hash.match(/latent=(\d+)/);
      view.replaceChildren();
      for (const row of document.querySelectorAll("#latent-list tr.selected")) row.classList.remove("selected");
      if (!match) {
        view.appendChild(el("p", { class: "hint", text: "Pick a latent from the list below." }));
        return;
      }
      const latent = byId.get(Number(match[1]));
      if (!latent) {
        view.appendChild(el("p", { class: "missing", text: `Latent ${match[1]} was not inspected.` }));
        return;
      }
      for (const part of latentView(data, tokens, latent)) view.appendChild(part);
      const row = document.querySelector(`#latent-list tr[data-latent="${latent.latent}"]`);
      if (row) row.classList.add("selected");
    }
    window.addEventListener("hashchange", route);
    route();
  }

  if (document.body.dataset.page === "sae") initSae();
  else initIndex();
})();
