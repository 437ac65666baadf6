"""Capture sites: the named activations of a Gemma model that SAEs and transcoders read.

Synopsis:
    sites.parse("mlp_out/3")                       -> ("mlp_out", 3)
    sites.resolve(cfg, ["resid_post/*", "*/3"])    -> sorted concrete site names
    sites.dim(cfg, "attn_z/0")                     -> n_heads * head_dim (d_model for the others)
    sites.all_sites(cfg)                           -> every site of the model
    sites.check(cfg, "resid_post/99")              -> ValueError listing the valid sites

A site is ``<kind>/<layer>`` with layers 0-indexed and kind one of
- ``resid_post``: the residual stream after block ``layer`` (Gemma Scope "res"),
- ``mlp_out``: the MLP output after the post-feedforward RMSNorm, before the residual add ("mlp"),
- ``attn_z``: the concatenated per-head attention outputs, the input of ``o_proj`` ("att"),
- ``mlp_in``: the MLP's input, the residual stream after the pre-feedforward RMSNorm (what Gemma
  Scope's transcoders read; HF ``pre_feedforward_layernorm`` output).

Sites sort in the order the forward pass computes them: by layer, then attn_z, mlp_in, mlp_out,
resid_post. The same kinds exist in every family (Gemma 2 and Gemma 3).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from gemmascope.model.config import GemmaConfig

RESID_POST = "resid_post"
MLP_OUT = "mlp_out"
ATTN_Z = "attn_z"
MLP_IN = "mlp_in"
# In forward-pass order within one block.
KINDS = (ATTN_Z, MLP_IN, MLP_OUT, RESID_POST)


def _valid_sites_message(cfg: GemmaConfig | None) -> str:
    if cfg is None:
        return f"valid sites are '<kind>/<layer>' with kind in {list(KINDS)} and layer an int >= 0"
    last = cfg.num_hidden_layers - 1
    listed = ", ".join(f"{kind}/0..{kind}/{last}" for kind in KINDS)
    return (
        f"valid sites are '<kind>/<layer>' with kind in {list(KINDS)} and layer in 0..{last} "
        f"({listed})"
    )


def parse(site: str) -> tuple[str, int]:
    """Splits a concrete site name into (kind, layer).

    Raises:
        ValueError: If ``site`` is not ``<kind>/<layer>`` with a known kind and an int layer >= 0.
    """
    if not isinstance(site, str) or site.count("/") != 1:
        raise ValueError(f"Unknown site {site!r}: {_valid_sites_message(None)}.")
    kind, layer = site.split("/")
    if kind not in KINDS or not layer.isdigit():
        raise ValueError(f"Unknown site {site!r}: {_valid_sites_message(None)}.")
    return kind, int(layer)


def name(kind: str, layer: int) -> str:
    """The site name for (kind, layer); the inverse of ``parse``."""
    return f"{kind}/{layer}"


def check(cfg: GemmaConfig, site: str) -> tuple[str, int]:
    """Parses ``site`` and checks it exists in a model of config ``cfg``.

    Returns:
        (kind, layer).

    Raises:
        ValueError: Naming the bad site and listing the valid ones.
    """
    try:
        kind, layer = parse(site)
    except ValueError:
        raise ValueError(f"Unknown site {site!r}: {_valid_sites_message(cfg)}.") from None
    if layer >= cfg.num_hidden_layers:
        raise ValueError(
            f"Unknown site {site!r}: the model has {cfg.num_hidden_layers} layers; "
            f"{_valid_sites_message(cfg)}."
        )
    return kind, layer


def sort_key(site: str) -> tuple[int, int]:
    """Forward-pass order: by layer, then by position within the block."""
    kind, layer = parse(site)
    return layer, KINDS.index(kind)


def all_sites(cfg: GemmaConfig) -> list[str]:
    """Every site of the model, in forward-pass order."""
    return [name(kind, layer) for layer in range(cfg.num_hidden_layers) for kind in KINDS]


def resolve(cfg: GemmaConfig, patterns: str | Iterable[str]) -> list[str]:
    """Expands site names and globs into concrete sites, deduplicated, in forward-pass order.

    Each pattern is ``<kind>/<layer>`` where either part may be a shell glob, e.g.
    ``resid_post/*``, ``*/12``, ``*/*``, ``mlp_out/1?``.

    Args:
        cfg: The model config (for the number of layers).
        patterns: One pattern or an iterable of them.

    Returns:
        The sorted list of concrete site names.

    Raises:
        ValueError: If a pattern is malformed or matches no site (the message lists valid sites).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    everything = all_sites(cfg)
    found: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str) or pattern.count("/") != 1:
            raise ValueError(
                f"Site pattern {pattern!r} is not '<kind>/<layer>': {_valid_sites_message(cfg)}."
            )
        kind_glob, layer_glob = pattern.split("/")
        matches = [
            site
            for site in everything
            if fnmatch.fnmatchcase(site.split("/")[0], kind_glob)
            and fnmatch.fnmatchcase(site.split("/")[1], layer_glob)
        ]
        if not matches:
            raise ValueError(
                f"Site pattern {pattern!r} matches no site: {_valid_sites_message(cfg)}."
            )
        found.update(matches)
    return sorted(found, key=sort_key)


def dim(cfg: GemmaConfig, site: str) -> int:
    """Width of a site's activation vector: n_heads * head_dim for attn_z, else d_model."""
    kind, _ = check(cfg, site)
    return cfg.attn_z_width if kind == ATTN_Z else cfg.hidden_size
