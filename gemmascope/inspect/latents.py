"""Which latents of an SAE are inspected, where they live on the mesh, and how they are encoded.

An SAE wider than ``inspect.max_latents`` is inspected on a deterministic random sample of that
many latents (``sample_latents``: the same sample for every SAE of one width and seed). The
encoder still sees the whole SAE where the rule needs it: a TopK latent fires only if it is among
the token's k largest pre-activations over all latents, so TopK SAEs are encoded at full width
and the sampled columns taken after; JumpReLU latents are independent, so their encoder is cut
to the sampled columns first.

Widths of at least ``inspect.shard_latents_from`` shard the latent axis of the encoder and of every
per-latent statistic over all devices of the LM's (data, model) mesh (Gemma Scope's rule for wide
SAEs, docs/recipe.md#sharding), when the device count divides both the width and the number of
inspected latents; otherwise they are replicated.

Synopsis::

    prepared = prepare(entry, inspect_cfg, mesh)     # an eval.SaeEntry
    f = encode(prepared.params, acts, k=prepared.k)  # (B, T, S) latent activations, fp32
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope.eval import metrics
from gemmascope.eval.sweep_eval import SaeEntry

# Every device of the LM's mesh holds a slice of a sharded latent axis.
LATENT_AXES = ("data", "model")


def sample_latents(width: int, max_latents: int, seed: int) -> np.ndarray:
    """The latents inspected: all of them, or a sorted sample of ``max_latents`` (int32).

    The sample is drawn without replacement by ``np.random.default_rng([seed, width])``, so it
    is the same on every run, process and SAE of that width.
    """
    if width <= max_latents:
        return np.arange(width, dtype=np.int32)
    rng = np.random.default_rng([seed, width])
    return np.sort(rng.choice(width, size=max_latents, replace=False)).astype(np.int32)


def latent_sharding(mesh: Mesh, width: int, n_latents: int, shard_from: int) -> NamedSharding:
    """The sharding of arrays whose leading axis is the inspected latents.

    Split over every device of ``mesh`` when ``shard_from`` > 0, ``width >= shard_from`` and the
    device count divides ``width`` and ``n_latents``; else replicated.
    """
    n_devices = mesh.devices.size
    shard = (
        shard_from > 0
        and width >= shard_from
        and width % n_devices == 0
        and n_latents % n_devices == 0
    )
    return NamedSharding(mesh, P(LATENT_AXES) if shard else P())


@dataclasses.dataclass
class PreparedSae:
    """One SAE ready for the inspection pass.

    Attributes:
      entry: the SAE (folder, config.json, released params).
      latent_ids: (S,) int32, the inspected latents in increasing order.
      params: the encoder's arrays on the device: ``W_enc``, ``b_enc``, ``threshold`` (cut to the
        inspected latents for JumpReLU; whole for TopK, with ``columns`` = latent_ids when
        sampled).
      k: the TopK rule's k, or None for JumpReLU.
      sharding: the sharding of (S, ...) arrays (the statistics).
      blocks: TopK only: the number of shards of the encoder's latent axis; each token's k-th
        largest pre-activation is then found per shard first (``encode``).
    """

    entry: SaeEntry
    latent_ids: np.ndarray
    params: dict[str, jax.Array]
    k: int | None
    sharding: NamedSharding
    blocks: int = 1

    @property
    def width(self) -> int:
        """The SAE's number of latents."""
        return int(self.entry.config["width"])

    @property
    def sampled(self) -> bool:
        """True when only a sample of the latents is inspected."""
        return len(self.latent_ids) < self.width


def prepare(entry: SaeEntry, cfg, mesh: Mesh) -> PreparedSae:
    """Samples the latents of ``entry`` and places its encoder on ``mesh`` (``cfg``: inspect)."""
    width = int(entry.config["width"])
    ids = sample_latents(width, int(cfg.max_latents), int(cfg.seed))
    shard_from = int(cfg.shard_latents_from)
    sharding = latent_sharding(mesh, width, len(ids), shard_from)
    columns = NamedSharding(mesh, P(None, *sharding.spec))
    topk = entry.encoder["type"] == "topk"
    params = entry.params
    blocks = 1
    if topk:
        # The whole encoder: a token's k largest pre-activations are taken over every latent.
        full = latent_sharding(mesh, width, width, shard_from)
        placed = {
            "W_enc": jax.device_put(params["W_enc"], NamedSharding(mesh, P(None, *full.spec))),
            "b_enc": jax.device_put(params["b_enc"], full),
            "threshold": jax.device_put(params["threshold"], full),
        }
        if len(ids) < width:
            placed["columns"] = jax.device_put(ids, NamedSharding(mesh, P()))
        if full.spec != P():
            blocks = mesh.devices.size
    else:
        placed = {
            "W_enc": jax.device_put(params["W_enc"][:, ids], columns),
            "b_enc": jax.device_put(params["b_enc"][ids], sharding),
            "threshold": jax.device_put(params["threshold"][ids], sharding),
        }
    k = int(entry.encoder["k"]) if topk else None
    return PreparedSae(
        entry=entry, latent_ids=ids, params=placed, k=k, sharding=sharding, blocks=blocks
    )


def _blocked_topk_encode(params, acts, k: int, blocks: int) -> jax.Array:
    """``eval.metrics.topk_encode_released`` with the k-th value found shard by shard.

    The pre-activations are split into ``blocks`` contiguous blocks of latents (the shards of a
    sharded encoder); each block's k largest are taken where the block lives, and the k-th
    largest of those ``blocks x k`` candidates is the token's k-th largest over all latents
    (the global top k is among them), so no device gathers a whole row of pre-activations.
    """
    x = jnp.asarray(acts, jnp.float32)
    pre = jnp.matmul(x, params["W_enc"], precision=jax.lax.Precision.HIGHEST) + params["b_enc"]
    per_block = pre.reshape(*pre.shape[:-1], blocks, pre.shape[-1] // blocks)
    candidates = jax.lax.top_k(per_block, k)[0].reshape(*pre.shape[:-1], blocks * k)
    kth = jax.lax.top_k(candidates, k)[0][..., k - 1 : k]
    return jnp.where(pre >= kth, jax.nn.relu(pre), 0.0)


def encode(
    params: dict[str, jax.Array], acts: jax.Array, *, k: int | None, blocks: int = 1
) -> jax.Array:
    """The inspected latents' activations (..., S) on raw activations ``acts`` (..., d).

    The released-form rules of ``eval.metrics`` (``encode_released``, ``topk_encode_released``),
    in full fp32; a TopK encoder sharded in ``blocks`` finds each token's k-th largest
    pre-activation per shard first (the same value). Traceable; ``k`` and ``blocks`` are static.
    """
    if k is None:
        return metrics.encode_released(params, acts)
    if blocks > 1 and k * blocks < params["W_enc"].shape[-1]:
        f = _blocked_topk_encode(params, acts, k, blocks)
    else:
        f = metrics.topk_encode_released(params, acts, k, k)
    if "columns" in params:
        f = jnp.take(f, params["columns"], axis=-1)
    return f
