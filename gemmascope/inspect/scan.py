"""The inspection pass: per site, one LM pass over the held-out tokens shared by its SAEs.

For each site with SAEs, the batches of held-out sequences (``eval.sweep_eval.token_batches``: the
eval stage's batching, rows split over the mesh's "data" axis, padding rows masked) go through
one jitted LM pass that stops after the site's layer (``model.collect_sites``); every SAE of the
site then encodes the captured activations and merges them into its per-latent statistics
(``stats.update``) in one jitted step. Only one site's statistics are on the devices at a time.
After the last batch, each SAE's statistics come to the host with its logit effects and
decoder-cosine neighbours (``directions``).

Synopsis::

    results = inspect_saes(model_cfg, model_params, tokens, saes, inspect_cfg, positions)
    results[i].stats["top_value"]   # (S, top_k) for saes[i]; see SaeInspection
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope import mesh as mesh_lib
from gemmascope import model
from gemmascope.eval.sweep_eval import SaeEntry, token_batches
from gemmascope.inspect import directions, latents, stats
from gemmascope.model import params as lm_params


@dataclasses.dataclass
class SaeInspection:
    """Everything measured about one SAE's inspected latents (host numpy arrays).

    Attributes:
      entry: the SAE.
      latent_ids: (S,) the inspected latents (all, or a sample; ``latents.sample_latents``).
      stats: the final ``stats`` state (``count``, ``total``, ``hist``, ``top_*``,
        ``sample_*``), leading axis S.
      n_tokens: the number of scored tokens (the denominator of firing densities).
      seq_len: T, to turn positions ``sequence * T + t`` back into (sequence, t).
      shape: the statistics' sizes.
      logits: ``((up_ids, up_values), (down_ids, down_values))`` (S, n) each, or None when the
        site has no direct path to the logits.
      neighbours: ``(ids, cosines)`` (S, n).
    """

    entry: SaeEntry
    latent_ids: np.ndarray
    stats: dict[str, np.ndarray]
    n_tokens: int
    seq_len: int
    shape: stats.StatsShape
    logits: tuple | None
    neighbours: tuple[np.ndarray, np.ndarray]


@functools.partial(jax.jit, static_argnames=("cfg", "site"))
def _capture(model_params, tokens, *, cfg, site):
    """The site's activations (B, T, d), running the LM only up to the site's layer."""
    return model.collect_sites(cfg, model_params, tokens, [site])[site]


@functools.partial(jax.jit, static_argnames=("shape", "k", "blocks"), donate_argnums=(0,))
def _inspect_batch(
    state, params, acts, kept, row_valid, first_row, latent_ids, *, shape, k, blocks
):
    """Encodes one batch with one SAE and merges it into the SAE's statistics."""
    f = latents.encode(params, acts, k=k, blocks=blocks)
    keep = kept & row_valid[:, None]
    return stats.update(state, f, keep, first_row, latent_ids, shape=shape)


def _check(model_cfg, tokens, positions, saes: Sequence[SaeEntry]) -> dict[str, list[int]]:
    """Indices of the SAEs per site (sites and widths checked against the model)."""
    if not saes:
        raise ValueError("inspect_saes: no SAEs to inspect")
    if tokens.ndim != 2 or len(tokens) == 0:
        raise ValueError(f"inspect_saes: tokens must be (N >= 1, T), got shape {tokens.shape}")
    if positions.shape != tokens.shape:
        raise ValueError(
            f"inspect_saes: positions has shape {positions.shape} but tokens {tokens.shape}"
        )
    by_site: dict[str, list[int]] = {}
    for index, entry in enumerate(saes):
        site = entry.config["site"]
        model.sites.check(model_cfg, site)
        d_in = entry.params["W_enc"].shape[0]
        if model.sites.dim(model_cfg, site) != d_in:
            raise ValueError(
                f"{entry.folder}: d_in {d_in} does not match site {site} of width "
                f"{model.sites.dim(model_cfg, site)}"
            )
        by_site.setdefault(site, []).append(index)
    return by_site


def _finish(prepared: latents.PreparedSae, state, model_cfg, model_params, cfg, mesh):
    """The statistics on the host, with the logit effects and neighbours of the latents."""
    ids = prepared.latent_ids
    w_dec = np.asarray(prepared.entry.params["W_dec"], np.float32)
    every = latents.latent_sharding(mesh, prepared.width, prepared.width, cfg.shard_latents_from)
    all_rows = jax.device_put(w_dec, NamedSharding(mesh, P(*every.spec, None)))
    rows = w_dec[ids]
    site = prepared.entry.config["site"]
    return (
        jax.device_get(state),
        directions.logit_effects(model_cfg, model_params, site, rows, int(cfg.n_logit_tokens)),
        directions.neighbours(rows, ids, all_rows, int(cfg.n_neighbours)),
    )


def inspect_saes(
    model_cfg,
    model_params,
    tokens: np.ndarray,
    saes: Sequence[SaeEntry],
    cfg,
    positions: np.ndarray | None = None,
) -> list[SaeInspection]:
    """Per-latent statistics of every SAE on ``tokens``, one LM pass per site.

    Args:
      model_cfg: the model config.
      model_params: the model's params (anywhere; placed on the LM mesh here).
      tokens: int (N, T) held-out sequences, BOS first.
      saes: the SAEs (``eval.SaeEntry``); each one's site must be a site of the model.
      cfg: an ``inspect`` config section (``inspect.default_config()``).
      positions: bool (N, T), the scored tokens (``data.trained_positions``); default: every
        token but BOS, EOS and pad.

    Returns:
      one ``SaeInspection`` per SAE, in order.

    Raises:
      ValueError: no SAEs, malformed tokens or positions, an SAE that does not fit its site, or
        an ``inspect.model_parallel`` that does not divide the local device count.
    """
    mesh = lm_params.lm_mesh(cfg.get("model_parallel", 1), field="inspect.model_parallel")
    tokens = np.asarray(tokens)
    if positions is None:
        positions = ~np.isin(tokens, np.asarray(model_cfg.special_token_ids, tokens.dtype))
    positions = np.asarray(positions, bool)
    by_site = _check(model_cfg, tokens, positions, saes)
    shape = stats.StatsShape.from_config(cfg)
    model_params = lm_params.place_params(model_cfg, model_params, mesh)
    batch_size = mesh_lib.batch_for_mesh(int(cfg.batch_size), mesh)
    results: list = [None] * len(saes)
    for site, members in by_site.items():
        prepared = [latents.prepare(saes[i], cfg, mesh) for i in members]
        states = [
            jax.device_put(stats.init_state(len(p.latent_ids), shape), p.sharding) for p in prepared
        ]
        ids = [jax.device_put(p.latent_ids, p.sharding) for p in prepared]
        batches = token_batches(tokens, positions, batch_size, mesh)
        for index, (batch, kept, row_valid) in enumerate(batches):
            acts = _capture(model_params, batch, cfg=model_cfg, site=site)
            first_row = np.int32(index * batch_size)
            for j, p in enumerate(prepared):
                states[j] = _inspect_batch(
                    states[j],
                    p.params,
                    acts,
                    kept,
                    row_valid,
                    first_row,
                    ids[j],
                    shape=shape,
                    k=p.k,
                    blocks=p.blocks,
                )
        for j, p in enumerate(prepared):
            host, logits, near = _finish(p, states[j], model_cfg, model_params, cfg, mesh)
            states[j] = None  # frees the device copy before the next SAE's
            results[members[j]] = SaeInspection(
                entry=p.entry,
                latent_ids=p.latent_ids,
                stats=host,
                n_tokens=int(positions.sum()),
                seq_len=int(tokens.shape[1]),
                shape=shape,
                logits=logits,
                neighbours=near,
            )
    return results
