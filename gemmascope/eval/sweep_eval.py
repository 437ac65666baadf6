"""Evaluate many SAEs at once: one clean forward pass per batch, batched splicing per group.

For each batch of held-out token sequences:

1. one jitted clean forward pass captures every site that has an SAE (plus the residual stream
   just before it) and gives the clean log-probabilities, shared by all SAEs of all sites;
2. per site, the total-variance sums (FVU's denominator) and one pass with the site zero-ablated
   (for ``zero_ablation_loss`` and ``loss_recovered``);
3. per group of SAEs with the same (site, encoder type), stacked on a leading axis (narrower SAEs
   zero-padded to the group's widest: padding latents never fire and decode to 0), one
   jitted program encodes the captured activations and splices each reconstruction into the model,
   called once per chunk of ``splice_batch`` SAEs (``vmap`` inside a chunk). Its first chunk
   splices nothing: delta loss and KL are taken against it, from the same compiled program, so
   an SAE whose reconstruction is exact gives exactly 0 (``_splice_group``).

Spliced passes at a site of layer L resume from the clean ``resid_post/{L-1}``
(``model.forward_from``), so only layers L.. are recomputed. Only sums leave the device; the host
accumulates them in float64 (``metrics.finalize``).

Every pass runs on a (data, model) mesh of this process's local devices
(``model.params.lm_mesh(eval_cfg.model_parallel)``): the LM's params are sharded over "model"
(``model.param_shardings``), the SAEs replicated, and the batch rows split over "data"; GSPMD
partitions the jitted passes. With several processes each evaluates everything on its own devices.

Synopsis::

    saes = [SaeEntry.load(folder) for folder, _ in export.list_saes(workdir)]
    results = evaluate_saes(model_cfg, model_params, tokens, saes, eval_cfg)
    # results[i] = (metrics dict, details dict) for saes[i]
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gemmascope import mesh as mesh_lib
from gemmascope import model
from gemmascope.eval import config as eval_config
from gemmascope.eval import metrics
from gemmascope.export import layout
from gemmascope.export.npz_format import NPZ_KEYS, load_npz
from gemmascope.model import params as lm_params

JUMPRELU = {"type": "jumprelu"}


class GroupKey(NamedTuple):
    """SAEs with equal keys are stacked and spliced in one program, whatever their architecture.

    After export all are the same five arrays (six for skip-transcoders), applied by the same
    encoder rule. ``site`` is where the output is spliced and measured; ``input_site`` is what
    the encoder reads: the same site for an SAE, ``mlp_in/L`` for a transcoder of ``mlp_out/L``.
    SAEs of one key but different widths share a group: each is zero-padded to ``width``, the
    widest member's (a padding latent has π = 0, so it never fires, and a zero decoder row),
    which changes no metric and compiles one program per key instead of one per width.
    """

    site: str
    width: int  # the widest member's
    encoder: str  # "jumprelu" or "topk"
    input_site: str = ""
    skip: bool = False

    @property
    def is_transcoder(self) -> bool:
        """Whether the group reads another site than it splices."""
        return self.input_site != self.site


@dataclasses.dataclass
class SaeEntry:
    """One SAE or transcoder to evaluate: its folder, its config.json, its raw-unit params.

    Attributes:
        folder: where it was loaded from (names it in errors and in the table).
        config: its config.json (``export.layout.read_config``); a transcoder's names its
            ``target_site`` (docs/transcoders.md).
        params: the five arrays of ``NPZ_KEYS``, plus ``W_skip`` for a skip-transcoder.
        encoder: the encoder rule, ``{"type": "jumprelu"}`` or ``{"type": "topk", "k": k}``
            (config.json's ``encoder``).
    """

    folder: str
    config: dict
    params: dict[str, np.ndarray]
    encoder: dict = dataclasses.field(default_factory=lambda: dict(JUMPRELU))

    def __post_init__(self):
        """Checks the encoder rule (a clear error naming the folder)."""
        kind, k = self.encoder.get("type"), self.encoder.get("k")
        if kind not in ("jumprelu", "topk"):
            raise ValueError(
                f"{self.folder}/config.json: encoder type {kind!r} is unknown; valid: 'jumprelu', "
                "'topk'"
            )
        width = self.config["width"]
        if kind == "topk" and not (isinstance(k, int) and 1 <= k <= width):
            raise ValueError(
                f"{self.folder}/config.json: topk encoder needs an integer k in 1..{width}, got "
                f"{k!r}"
            )

    @classmethod
    def load(cls, folder: str) -> SaeEntry:
        """Reads ``folder/config.json`` and ``folder/params.npz`` (shapes checked)."""
        config = layout.read_config(folder)
        params = load_npz(
            f"{folder}/{layout.PARAMS_FILE}",
            d_in=int(config["d_in"]),
            width=int(config["width"]),
            d_out=config.get("d_out"),
        )
        return cls(folder=folder, config=config, params=params, encoder=config["encoder"])

    @property
    def target_site(self) -> str:
        """Where the output is spliced: config.json's ``target_site``, or the site of an SAE."""
        return self.config.get("target_site") or self.config["site"]

    @property
    def width(self) -> int:
        """Its number of latents."""
        return int(self.config["width"])

    @property
    def group_key(self) -> GroupKey:
        """The key of the group this SAE is spliced with, before padding (its own width)."""
        return GroupKey(
            self.target_site,
            self.width,
            self.encoder["type"],
            input_site=self.config["site"],
            skip="W_skip" in self.params,
        )


# ---------------------------------------------------------------------------------------------
# Jitted passes. `cfg` (a frozen, hashable model config) and site names are static.


def prefix_site(site: str) -> str | None:
    """The ``resid_post`` site a spliced pass at ``site`` can resume from (None: from the start).

    A site of layer L only depends on the residual stream after layer L − 1, so the spliced pass
    reuses the clean pass's ``resid_post/{L-1}`` and runs layers L.. only.
    """
    kind, layer = layout.split_site(site)
    del kind
    return f"resid_post/{layer - 1}" if layer > 0 else None


def _spliced_logits(cfg, model_params, tokens, prefix, site, fn, replace=None):
    """Logits with ``fn`` replacing ``site`` (and any other ``replace``); resumes from ``prefix``.

    ``prefix`` is the clean resid_post before ``site``'s layer, or None to run from the start.
    """
    replace = {**(replace or {}), site: fn}
    if prefix is None:
        return model.forward(cfg, model_params, tokens, replace=replace)[0]
    return model.forward_from(cfg, model_params, prefix_site(site), prefix, replace=replace)[0]


@functools.partial(jax.jit, static_argnames=("cfg", "sites"))
def _clean_pass(model_params, tokens, positions, row_valid, *, cfg, sites):
    """The clean forward pass.

    Returns the activations of ``sites`` (and of their prefixes), log-probs, the kept-token mask
    (``positions`` of real rows) and the clean CE sum.
    """
    logits, acts = model.forward(cfg, model_params, tokens, capture=list(sites))
    keep = positions & row_valid[:, None]
    logp = metrics.next_token_logp(logits)
    keep_lm = metrics.lm_keep(keep)
    w = keep_lm.astype(jnp.float32)
    clean_ce = jnp.sum(metrics.token_cross_entropy(logp, tokens) * w)
    return acts, logp, keep, clean_ce, jnp.sum(w)


@functools.partial(jax.jit, static_argnames=("cfg", "site", "with_lm"))
def _site_pass(
    model_params, tokens, keep, acts, prefix, clean_logp, reference, *, cfg, site, with_lm
):
    """Variance sums of one site and the LM sums with the site zero-ablated."""
    if not with_lm:
        return metrics.site_sums(acts, keep, reference), {}

    def zero_ablate(a):
        return jnp.where(keep[..., None], jnp.zeros_like(a), a)

    logits = _spliced_logits(cfg, model_params, tokens, prefix, site, zero_ablate)
    zero_lm = metrics.lm_sums(clean_logp, logits, tokens, metrics.lm_keep(keep))
    return metrics.site_sums(acts, keep, reference), zero_lm


def _encode(sae, x, k_max):
    """The group's encoder: JumpReLU, or TopK when ``k_max`` (static) is set."""
    if k_max is None:
        return metrics.encode_released(sae, x)
    return metrics.topk_encode_released(sae, x, sae["k"], k_max)


def _apply(sae, x, k_max):
    """(latents, output) of raw input ``x``: the SAE's reconstruction, a transcoder's target."""
    f = _encode(sae, x, k_max)
    return f, metrics.decode_released(sae, f, x)


def _padded_params(entry: SaeEntry, width: int) -> dict[str, np.ndarray]:
    """The SAE's arrays with zero latents appended up to ``width`` (see ``GroupKey``)."""
    pad = width - entry.width
    if pad == 0:
        return entry.params
    axes = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "threshold": 0}
    padded = dict(entry.params)
    for name, axis in axes.items():
        widths = [(0, 0)] * padded[name].ndim
        widths[axis] = (0, pad)
        padded[name] = np.pad(padded[name], widths)
    return padded


def _stack_group(
    members: Sequence[SaeEntry], chunk: int, width: int
) -> list[dict[str, np.ndarray]]:
    """A group's params as ``_splice_group`` runs them: chunks of ``chunk``, stacked on axis 0.

    First one chunk of references, then the SAEs, then padding up to a whole chunk; every SAE
    zero-padded to ``width`` latents (``_padded_params``).

    References and padding are copies of the first SAE with ``use_sae`` False (they splice
    nothing). The mask is a traced input, never a constant, so XLA cannot specialise the
    references' code path.
    """
    n_total = (1 + -(-len(members) // chunk)) * chunk
    padding = n_total - chunk - len(members)
    order = [members[0]] * chunk + list(members) + [members[0]] * padding
    keys = [*NPZ_KEYS, "W_skip"] if "W_skip" in members[0].params else NPZ_KEYS
    padded = [_padded_params(entry, width) for entry in order]
    stacked = {k: np.stack([params[k] for params in padded]) for k in keys}
    if members[0].encoder["type"] == "topk":
        stacked["k"] = np.asarray([int(entry.encoder["k"]) for entry in order], np.int32)
    index = np.arange(n_total)
    stacked["use_sae"] = (index >= chunk) & (index < chunk + len(members))
    return [
        {k: v[start : start + chunk] for k, v in stacked.items()}
        for start in range(0, n_total, chunk)
    ]


@functools.partial(jax.jit, static_argnames=("cfg", "site", "input_site", "with_lm", "k_max"))
def _chunk_pass(
    model_params,
    tokens,
    keep,
    acts,
    inputs,
    prefix,
    elements,
    *,
    cfg,
    site,
    input_site,
    with_lm,
    k_max,
):
    """Reconstruction sums and spliced log-probs of one chunk of a group (``_stack_group``).

    ``vmap`` over the chunk's elements; ``_splice_group`` calls this one compiled program for
    every chunk of a group, the references' chunk included.

    A transcoder group (``input_site`` not ``site``) encodes ``inputs`` (the clean
    ``input_site``) and is measured against ``acts`` (the clean ``site``). Its splice replaces
    ``site`` with the transcoder's output of the same spliced pass's ``input_site`` activation:
    an identity replacement at ``input_site`` hands that activation to the one at ``site``
    (both run in one trace, ``input_site`` first, as ``mlp_in/L`` comes before ``mlp_out/L``).

    Returns:
      ``(recon, logp)``: per element, the reconstruction sums and the spliced model's log-probs
      (B, T, V) (None without ``with_lm``).
    """

    def one_element(sae):
        f, out = _apply(sae, inputs, k_max)
        recon = metrics.reconstruction_sums(acts, out, f, keep)
        if not with_lm:
            return recon, None
        seen = {}

        def read_input(x):
            seen["x"] = x
            return x

        def spliced(a):
            # Special tokens (and padding rows) keep their original activation; so does
            # every token of the reference and padding elements (use_sae False).
            x = seen["x"] if input_site != site else a
            out = _apply(sae, x, k_max)[1].astype(a.dtype)
            return jnp.where(sae["use_sae"] & keep[..., None], out, a)

        def splice(a):
            # A conditional (a batch without kept tokens changes nothing) whose operand is one
            # buffer: outside one, XLA may fuse copies of `a`'s cheap producer (an RMSNorm)
            # into the encoder and into the select, copies that round differently, and an SAE
            # that reconstructs `a` exactly would no longer splice exactly (tested).
            return jax.lax.cond(jnp.any(keep), spliced, lambda a: a, a)

        reads = {input_site: read_input} if input_site != site else None
        logits = _spliced_logits(cfg, model_params, tokens, prefix, site, splice, reads)
        return recon, metrics.next_token_logp(logits)

    return jax.vmap(one_element)(elements)


@jax.jit
def _chunk_lm_sums(reference_logp, logp, tokens, keep):
    """Per element of a chunk, delta CE and KL of ``logp`` against the references' chunk.

    A loop over the chunk's elements, not a ``vmap``: XLA:CPU ran the vmapped token gather
    of the cross-entropy 6x slower than one gather per element.
    """
    keep_lm = metrics.lm_keep(keep)
    sums = [
        metrics.lm_sums_from_logp(reference_logp[j], logp[j], tokens, keep_lm)
        for j in range(logp.shape[0])
    ]
    return jax.tree.map(lambda *v: jnp.stack(v), *sums)


def _splice_group(passes: _Passes, key: GroupKey, group: _Group, batch, keep, acts, prefix):
    """The reconstruction and LM sums of every element of a group on one batch.

    Runs ``_chunk_pass`` on the group's chunks in order. Delta CE and KL of the SAE at position
    j of a chunk are taken against position j of the first chunk (the references), not against
    the clean pass: same compiled program, same position in the vmapped batch, same inputs
    (``use_sae`` False makes the splice return the activation ``a`` itself). So an SAE whose
    reconstruction equals ``a`` bitwise gets bitwise-equal logits and delta CE = KL = 0 exactly.
    Neither a separately compiled program (the clean pass) nor another position in the vmapped
    batch guarantees that: XLA's CPU matmuls round rows differently by their position in the
    tile. (One call per chunk, not a ``lax.scan`` over them in one program: XLA:CPU ran the LM
    inside the scan's loop at half the speed of the same program called per chunk,
    docs/benchmarks.md#eval-chunk-calls.)

    Returns:
      ``(recon, lm)``: dicts of host arrays with one row per stacked element (``_stack_group``);
      ``lm`` is empty without LM metrics.
    """
    recon_rows, lm_rows = [], []
    reference = None
    for elements in group.chunks:
        recon, logp = _chunk_pass(
            passes.model_params,
            batch,
            keep,
            acts[key.site],
            acts[key.input_site],
            prefix,
            elements,
            cfg=passes.model_cfg,
            site=key.site,
            input_site=key.input_site,
            k_max=group.k_max,
            with_lm=passes.with_lm,
        )
        recon_rows.append(recon)
        if passes.with_lm:
            if reference is None:  # the references' chunk (its own sums, all 0, are unused)
                reference = logp
            lm_rows.append(_chunk_lm_sums(reference, logp, batch, keep))

    def rows(chunks):
        if not chunks:
            return {}
        return jax.tree.map(lambda *v: np.concatenate([np.asarray(x) for x in v]), *chunks)

    return rows(recon_rows), rows(lm_rows)


# ---------------------------------------------------------------------------------------------
# Host-side accumulation.


def _add(total: dict, batch: dict) -> None:
    """Adds a pytree of device sums into float64/int64 numpy totals (in place)."""
    for key, value in batch.items():
        value = np.asarray(value)
        value = value.astype(np.int64 if value.dtype.kind in "iu" else np.float64)
        total[key] = total[key] + value if key in total else value


def token_batches(tokens: np.ndarray, positions: np.ndarray, batch_size: int, mesh: Mesh):
    """Yields (tokens, positions, row_valid), every batch padded to ``batch_size`` rows.

    The rows are split over the mesh's "data" axis.

    Padding rows repeat the first row and are masked out by ``row_valid``, so one compiled
    program serves every batch. The inspect stage (``gemmascope.inspect.scan``) reads its
    batches from here too.
    """
    rows_2d = mesh_lib.named_sharding(mesh, ("batch", "seq"))
    rows_1d = mesh_lib.named_sharding(mesh, ("batch",))
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start : start + batch_size]
        kept = positions[start : start + batch_size]
        valid = np.ones(len(chunk), dtype=bool)
        if len(chunk) < batch_size:
            pad = batch_size - len(chunk)
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
            kept = np.concatenate([kept, np.repeat(kept[:1], pad, axis=0)])
            valid = np.concatenate([valid, np.zeros(pad, dtype=bool)])
        yield (
            jax.device_put(np.asarray(chunk, np.int32), rows_2d),
            jax.device_put(np.asarray(kept, bool), rows_2d),
            jax.device_put(valid, rows_1d),
        )


def evaluate_saes(
    model_cfg,
    model_params,
    tokens: np.ndarray,
    saes: Sequence[SaeEntry],
    eval_cfg,
    positions: np.ndarray | None = None,
) -> list[tuple[dict, dict]]:
    """Evaluates every SAE on ``tokens`` with one clean pass per batch.

    Three phases: group and stack the SAEs (``_prepare_groups``), accumulate every pass's sums
    over the batches (``_accumulate``), turn the sums into each SAE's metrics (``_results``).

    Args:
      model_cfg: ``model.GemmaConfig`` (Gemma 2 or 3).
      model_params: the model's params pytree.
      tokens: int (N, T) held-out sequences, BOS first.
      saes: the SAEs; each one's ``config["site"]`` must be a site of the model.
      eval_cfg: ``eval.default_config()``-like: ``batch_size``, ``splice_batch``,
        ``dense_threshold``, ``histogram_bins``, ``lm_metrics``, ``model_parallel`` (local
        devices the LM's params are sharded over; the batch, rounded up to a multiple of the
        remaining "data" devices, is split over them).
      positions: bool (N, T), the positions SAEs are measured and spliced at (the ones they
        were trained on: ``data.trained_positions``, which also leaves out a chat template's
        user prefix); default: every position but BOS, EOS and pad.

    Returns:
      per SAE, in order, ``(metrics, details)``: ``metrics`` maps table columns to floats
      (see ``metrics.finalize`` plus ``eval_tokens``); ``details`` holds the firing-frequency
      histogram and the reconstruction loss by position.

    Raises:
      ValueError: no SAEs, no tokens, an SAE whose d_in does not match its site,
        ``positions`` of another shape than ``tokens``, or an ``eval_cfg.model_parallel`` that
        does not divide the local device count.
    """
    if not saes:
        raise ValueError("evaluate_saes: no SAEs to evaluate")
    mesh = eval_config.lm_mesh(eval_cfg)
    tokens, positions = _check_tokens(model_cfg, tokens, positions)
    groups = _prepare_groups(model_cfg, saes, eval_config.splice_batch(eval_cfg), mesh)
    model_params = lm_params.place_params(model_cfg, model_params, mesh)
    passes = _Passes(model_cfg, model_params, bool(eval_cfg.lm_metrics), groups)
    batch_size = mesh_lib.batch_for_mesh(int(eval_cfg.batch_size), mesh)
    totals = _accumulate(passes, token_batches(tokens, positions, batch_size, mesh))
    return _results(saes, groups, totals, eval_cfg)


# ---------------------------------------------------------------------------------------------
# Phase 1: the groups.


@dataclasses.dataclass
class _Group:
    """One group's SAEs, stacked as ``_splice_group`` runs them.

    Attributes:
        members: indices (into the caller's list of SAEs) of the group's SAEs, in stacking order.
        chunk: SAEs spliced per vmapped pass.
        k_max: the largest k of a TopK group (static), None for JumpReLU.
        chunks: the stacked params on the mesh, replicated, chunk by chunk (``_stack_group``).
    """

    members: list[int]
    chunk: int
    k_max: int | None
    chunks: list[dict[str, jax.Array]]


def _prepare_groups(
    model_cfg, saes: Sequence[SaeEntry], splice_batch: int, mesh: Mesh
) -> dict[GroupKey, _Group]:
    """Groups the SAEs by ``GroupKey`` (sites and widths checked) and stacks each group."""
    unpadded: dict[GroupKey, list[int]] = {}  # keyed with width 0
    for index, entry in enumerate(saes):
        site, target = entry.config["site"], entry.target_site
        for where, width, what in (
            (site, entry.params["W_enc"].shape[0], "d_in"),
            (target, entry.params["W_dec"].shape[1], "d_out"),
        ):
            model.sites.check(model_cfg, where)
            if model.sites.dim(model_cfg, where) != width:
                raise ValueError(
                    f"{entry.folder}: {what} {width} does not match site {where} of width "
                    f"{model.sites.dim(model_cfg, where)}"
                )
        kind, layer = model.sites.parse(site)
        if target != site and (kind, target) != ("mlp_in", f"mlp_out/{layer}"):
            raise ValueError(
                f"{entry.folder}: a transcoder of {site} -> {target} cannot be spliced: the "
                "evaluation splices transcoders of mlp_in/L -> mlp_out/L (the same layer's MLP)"
            )
        unpadded.setdefault(entry.group_key._replace(width=0), []).append(index)
    indices = {
        key._replace(width=max(saes[i].width for i in members)): members
        for key, members in unpadded.items()
    }
    replicated = mesh_lib.named_sharding(mesh, ())
    groups = {}
    for key, members in indices.items():
        chunk = min(splice_batch, len(members))
        chunks = _stack_group([saes[i] for i in members], chunk, key.width)
        k_max = None
        if key.encoder == "topk":
            k_max = max(int(saes[i].encoder["k"]) for i in members)
        groups[key] = _Group(members, chunk, k_max, jax.device_put(chunks, replicated))
    return groups


# ---------------------------------------------------------------------------------------------
# Phase 2: the sums over every batch.


@dataclasses.dataclass
class _Passes:
    """What every batch's passes share: the model, whether LM metrics run, the groups."""

    model_cfg: object
    model_params: dict
    with_lm: bool
    groups: dict[GroupKey, _Group]

    @property
    def sites(self) -> tuple[str, ...]:
        """The sites that have an SAE (or a transcoder writing them)."""
        return tuple(sorted({key.site for key in self.groups}))

    @property
    def input_sites(self) -> tuple[str, ...]:
        """The sites the encoders read (a transcoder's input site besides the SAE sites)."""
        return tuple(sorted({key.input_site for key in self.groups}))


@dataclasses.dataclass
class _Totals:
    """Host-side float64/int64 sums of every pass, accumulated over the batches.

    Attributes:
        clean: the clean pass's cross-entropy sum ``ce`` and LM token count ``n``.
        site: per site, the variance sums (FVU's denominator).
        zero: per site, the LM sums with the site zero-ablated.
        recon: per group, the reconstruction sums of every stacked element.
        lm: per group, the LM sums (delta CE, KL) of every stacked element.
    """

    clean: dict = dataclasses.field(default_factory=dict)
    site: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))
    zero: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))
    recon: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))
    lm: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))


def _accumulate(passes: _Passes, batches) -> _Totals:
    """Runs the clean, per-site and per-group passes on every batch; returns their sums."""
    totals = _Totals()
    references: dict[str, jax.Array] = {}
    cfg, params = passes.model_cfg, passes.model_params
    prefixes = {site: prefix_site(site) for site in passes.sites}
    captured = set(passes.sites) | set(passes.input_sites)
    captured = tuple(sorted(captured | {p for p in prefixes.values() if p is not None}))
    for batch, kept, row_valid in batches:
        acts, clean_logp, keep, clean_ce, n_lm = _clean_pass(
            params, batch, kept, row_valid, cfg=cfg, sites=captured
        )
        _add(totals.clean, {"ce": clean_ce, "n": n_lm})
        for site in passes.sites:
            if site not in references:  # a fixed shift: the first batch's mean (site_sums)
                w = keep.astype(jnp.float32)[..., None]
                references[site] = jnp.sum(acts[site] * w, (0, 1)) / jnp.maximum(w.sum(), 1.0)
            prefix = acts[prefixes[site]] if prefixes[site] else None
            shared = (params, batch, keep, acts[site], prefix, clean_logp)
            variance, zero_lm = _site_pass(
                *shared, references[site], cfg=cfg, site=site, with_lm=passes.with_lm
            )
            _add(totals.site[site], variance)
            _add(totals.zero[site], zero_lm)
        for key, group in passes.groups.items():
            prefix = acts[prefixes[key.site]] if prefixes[key.site] else None
            recon, lm = _splice_group(passes, key, group, batch, keep, acts, prefix)
            _add(totals.recon[key], recon)
            _add(totals.lm[key], lm)
    return totals


# ---------------------------------------------------------------------------------------------
# Phase 3: each SAE's metrics.


def _results(
    saes: Sequence[SaeEntry], groups: dict[GroupKey, _Group], totals: _Totals, eval_cfg
) -> list[tuple[dict, dict]]:
    """(metrics, details) of every SAE, in the caller's order, from the accumulated sums."""
    with_lm = bool(eval_cfg.lm_metrics)
    results: list = [None] * len(saes)
    for key, group in groups.items():
        for position, index in enumerate(group.members):
            row = group.chunk + position  # after the chunk of references (_stack_group)
            recon = {k: v[row] for k, v in totals.recon[key].items()}
            recon["fired"] = recon["fired"][: saes[index].width]  # without the zero padding
            lm = {k: v[row] for k, v in totals.lm[key].items()} if with_lm else None
            results[index] = _finish(
                recon,
                totals.site[key.site],
                lm,
                totals.clean,
                totals.zero[key.site],
                saes[index],
                eval_cfg,
            )
    return results


def _check_tokens(model_cfg, tokens, positions) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, positions) as arrays; positions default to every non-special token."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or len(tokens) == 0 or tokens.shape[1] < 2:
        raise ValueError(f"evaluate_saes: tokens must be (N >= 1, T >= 2), got {tokens.shape}")
    if positions is None:
        positions = ~np.isin(tokens, np.asarray(model_cfg.special_token_ids, tokens.dtype))
    positions = np.asarray(positions, bool)
    if positions.shape != tokens.shape:
        raise ValueError(
            f"evaluate_saes: positions has shape {positions.shape} but tokens {tokens.shape}"
        )
    return tokens, positions


def _finish(recon, site, lm, clean, zero, entry: SaeEntry, eval_cfg) -> tuple[dict, dict]:
    """Metrics and details of one SAE from its accumulated sums."""
    nan = float("nan")
    lm_sums = lm if lm is not None else {"delta_ce": nan, "kl": nan}
    zero_delta_ce = float(zero["delta_ce"]) if lm is not None else nan
    values = metrics.finalize(
        recon,
        site,
        lm_sums,
        float(clean["ce"]),
        zero_delta_ce,
        int(entry.params["W_dec"].shape[1]),
        float(clean["n"]),
        float(eval_cfg.dense_threshold),
    )
    n_tokens = float(site["count"])
    values["eval_tokens"] = int(n_tokens)
    min_log10 = float(np.floor(np.log10(1.0 / n_tokens)))
    by_position = np.asarray(recon["sq_err_by_position"]) / np.maximum(
        np.asarray(site["count_by_position"]), 1.0
    )
    details = {
        "firing_histogram": metrics.firing_histogram(
            recon["fired"], n_tokens, int(eval_cfg.histogram_bins), min_log10
        ),
        "recon_loss_by_position": [
            float(v) if c > 0 else None
            for v, c in zip(by_position, np.asarray(site["count_by_position"]), strict=True)
        ],
    }
    return values, details
