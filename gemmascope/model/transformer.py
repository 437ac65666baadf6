"""The Gemma 2 / Gemma 3 forward pass as pure functions, with named capture and replace sites.

The order of operations (Gemma 2): docs/recipe.md#gemma-2-forward.

Synopsis:
    logits, acts = forward(cfg, params, tokens, capture=["resid_post/3", "attn_z/0"])
    logits, _ = forward(cfg, params, tokens, replace={"mlp_out/1": fn})     # acts -> fn(acts)
    acts = collect_sites(cfg, params, tokens, ["resid_post/*"])            # stops early, no logits
    logits, acts = forward_from(cfg, params, "resid_post/5", resid, replace={"mlp_out/6": fn})
    mask = special_mask(cfg, tokens)                                        # bos / eos / pad

Axis letters used in the einsum strings:
    B batch, T query position, S key position, D d_model, V vocabulary,
    N query heads, K key/value heads, G query heads per KV head (N = K * G), H head_dim,
    M MLP hidden units (``intermediate_size``).

One block (both families; attention up to ``o_proj`` is ``attention.py``)::

    z = attention_z(input_norm(h))                    site attn_z
    h = h + post_attn_norm(o_proj(z))
    x = pre_ffw_norm(h)                               site mlp_in (what transcoders read)
    m = post_ffw_norm(down(gelu(gate(x)) * up(x)))    site mlp_out
    h = h + m                                         site resid_post

Why pure functions over a params pytree rather than Flax linen or nnx modules: the forward pass
has no state beyond its weights, the capture/replace points are plain Python control flow over
static site names (no ``sow`` collections or module surgery needed), and the params pytree maps one
to one onto HF checkpoint tensors and onto ``NamedSharding`` pytrees (``params.py``). Everything
here is traceable: callers ``jax.jit`` it with ``cfg``, ``capture`` and ``replace`` closed over.

Numerics follow HF's ``Gemma2ForCausalLM`` / ``Gemma3ForCausalLM`` eager path: the embedding scale
sqrt(d_model) is cast to the compute dtype before multiplying; RMSNorm runs in fp32 with gain
(1 + w) and casts back; RoPE cos/sin are computed in fp32 and cast; attention logits are softcapped
(Gemma 2) before masking and the softmax runs in fp32. Two deliberate choices: the tanh-gelu is
evaluated in fp32 and cast (what torch's CPU/GPU kernels do internally for bf16), and the
unembedding accumulates into fp32 and the final softcap runs in fp32, so logits are always fp32 (in
bf16 compute HF rounds logits to bf16, a spacing of 0.0625 at logit 10, which would blur
delta-loss and KL measurements). Matmuls request ``Precision.HIGHEST`` (``primitives.einsum``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.model import sites as sites_lib
from gemmascope.model.attention import attention_z
from gemmascope.model.config import GemmaConfig
from gemmascope.model.params import Params, get_leaf, param_specs
from gemmascope.model.primitives import einsum, rms_norm, softcap

Array = jax.Array
ReplaceFn = Callable[[Array], Array]


def _mlp(p: Params, x: Array) -> Array:
    """GeGLU with the tanh gelu: down(gelu(gate(x)) * up(x))."""
    gate = einsum("BTD,DM->BTM", x, p["gate"])
    up = einsum("BTD,DM->BTM", x, p["up"])
    act = jax.nn.gelu(gate.astype(jnp.float32), approximate=True).astype(x.dtype)
    return einsum("BTM,MD->BTD", act * up, p["down"])


class _SiteHooks:
    """Captures and replaces activations at named sites during one forward pass."""

    def __init__(
        self,
        cfg: GemmaConfig,
        capture: str | Iterable[str],
        replace: Mapping[str, ReplaceFn] | None,
    ):
        capture = () if capture is None else capture
        self.capture = set(sites_lib.resolve(cfg, capture)) if capture else set()
        self.replace = dict(replace or {})
        for site in self.replace:
            sites_lib.check(cfg, site)
            if not callable(self.replace[site]):
                raise TypeError(f"replace[{site!r}] must be a function acts -> acts.")
        self.acts: dict[str, Array] = {}

    def sites(self) -> set[str]:
        return self.capture | set(self.replace)

    def __call__(self, kind: str, layer: int, x: Array) -> Array:
        site = sites_lib.name(kind, layer)
        if site in self.capture:
            self.acts[site] = x
        if site in self.replace:
            new = self.replace[site](x)
            if new.shape != x.shape:
                raise ValueError(
                    f"replace[{site!r}] returned shape {new.shape}; it must keep the site's shape "
                    f"{x.shape}."
                )
            x = new.astype(x.dtype)
        return x


def _block(cfg: GemmaConfig, layer: int, p: Params, h: Array, hooks: _SiteHooks) -> Array:
    """One decoder block; returns the residual stream after it (the ``resid_post`` site)."""
    eps = cfg.rms_norm_eps
    b, t, _ = h.shape
    # Attention: pre-norm, heads up to o_proj (site attn_z), o_proj, post-norm, residual add.
    z = attention_z(cfg, layer, p, rms_norm(h, p["input_norm"], eps))
    z = hooks(sites_lib.ATTN_Z, layer, z)
    z = z.reshape(b, t, cfg.num_attention_heads, cfg.head_dim)
    attn_out = einsum("BTNH,NHD->BTD", z, p["o"])
    h = h + rms_norm(attn_out, p["post_attn_norm"], eps)
    # MLP: pre-norm (site mlp_in), GeGLU, post-norm (site mlp_out), residual add (resid_post).
    x = hooks(sites_lib.MLP_IN, layer, rms_norm(h, p["pre_ffw_norm"], eps))
    m = hooks(sites_lib.MLP_OUT, layer, rms_norm(_mlp(p, x), p["post_ffw_norm"], eps))
    return hooks(sites_lib.RESID_POST, layer, h + m)


def check_params(cfg: GemmaConfig, params: Params) -> None:
    """Checks the params pytree has every parameter of ``cfg`` with the right shape.

    Shapes are static, so this costs nothing under jit and turns a config/params mix-up into one
    clear error instead of an einsum shape error deep in the pass.

    Raises:
        ValueError: Naming the first missing or misshaped parameter.
    """
    if len(params.get("layers", ())) != cfg.num_hidden_layers:
        raise ValueError(
            f"params have {len(params.get('layers', ()))} layers but the config has "
            f"{cfg.num_hidden_layers}."
        )
    for spec in param_specs(cfg):
        try:
            shape = tuple(jnp.shape(get_leaf(params, spec.path)))
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"params lack {list(spec.path)} ({spec.hf_name}).") from None
        if shape != spec.shape:
            raise ValueError(
                f"params{list(spec.path)} has shape {shape}, but the config needs {spec.shape}."
            )


def cast_params(params: Params, dtype: Any) -> Params:
    """Casts every param, norm offsets included, to ``dtype``.

    Computing in a dtype means computing as if the checkpoint had been loaded in it, which is what
    HF does for a bf16 model.
    """
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda w: w if w.dtype == dtype else w.astype(dtype), params)


def _run_layers(
    cfg: GemmaConfig, params: Params, h: Array, first: int, last: int, hooks: _SiteHooks
) -> Array:
    for layer in range(first, last):
        h = _block(cfg, layer, params["layers"][layer], h, hooks)
    return h


def check_tokens(cfg: GemmaConfig, tokens: Any) -> None:
    """Checks tokens are an integer (B, T) array and, when concrete, within the vocabulary.

    Under ``jax.jit`` the values are abstract and only shape and dtype are checked; an
    out-of-range token there gives NaN embeddings (and so NaN logits for its whole sequence)
    rather than silently wrong numbers.

    Raises:
        ValueError: On a wrong rank or dtype, or a token outside [0, vocab_size).
    """
    shape, dtype = jnp.shape(tokens), jnp.result_type(tokens)
    if len(shape) != 2:
        raise ValueError(f"tokens must have shape (batch, seq), got shape {shape}.")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"tokens must be integers (int32), got dtype {dtype}.")
    if isinstance(tokens, jax.core.Tracer) or 0 in shape:
        return
    if isinstance(tokens, jax.Array) and not tokens.is_fully_addressable:
        return  # multi-host global array: this host cannot read every value
    values = np.asarray(tokens)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= cfg.vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"token id {bad} is out of the vocabulary range [0, {cfg.vocab_size}) of this model."
        )


def embed(cfg: GemmaConfig, params: Params, tokens: Array, dtype: Any = None) -> Array:
    """Scaled token embeddings ``E[tokens] * sqrt(d_model)``, the input of layer 0.

    The scale is rounded to the compute dtype first, as Gemma does (bf16: 48.0 / 59.75 / 68.0 for
    2B / 9B / 27B).
    """
    check_tokens(cfg, tokens)
    dtype = jnp.dtype(dtype or params["embed"].dtype)
    table = params["embed"].astype(dtype)
    scale = jnp.asarray(np.float32(math.sqrt(cfg.hidden_size)), dtype)
    # mode="fill": an out-of-range id under jit becomes NaN instead of a silently clamped row.
    return jnp.take(table, tokens, axis=0, mode="fill", fill_value=jnp.nan) * scale


def unembed(cfg: GemmaConfig, params: Params, h: Array) -> Array:
    """Final RMSNorm, tied unembedding (fp32 accumulation) and final softcap; fp32 logits."""
    h = rms_norm(h, params["final_norm"], cfg.rms_norm_eps)
    logits = einsum(
        "BTD,VD->BTV", h, params["embed"].astype(h.dtype), preferred_element_type=jnp.float32
    )
    return softcap(logits.astype(jnp.float32), cfg.final_logit_softcapping)


def forward(
    cfg: GemmaConfig,
    params: Params,
    tokens: Array,
    capture: str | Iterable[str] = (),
    replace: Mapping[str, ReplaceFn] | None = None,
    dtype: Any = None,
) -> tuple[Array, dict[str, Array]]:
    """Runs the model on ``tokens``, capturing and/or replacing activations at named sites.

    Args:
        cfg: Model config (static under jit).
        params: The params pytree (``init_params`` / ``load_hf``).
        tokens: int (B, T) token ids, BOS first as Gemma expects; all positions attend causally.
        capture: Site names or globs (``"resid_post/*"``, ``"*/3"``) whose activations to return.
        replace: ``{site: fn}``; the site's activation ``x`` is replaced by ``fn(x)`` (same shape)
            before the pass continues. Captured values are taken *before* replacement.
        dtype: Compute dtype; None = the dtype of ``params["embed"]``. All params (norm offsets
            too) are cast to it, so fp32 params with ``dtype=bfloat16`` compute exactly like
            params loaded in bf16.

    Returns:
        (logits, acts): logits fp32 (B, T, V) after the final softcap; ``acts[site]`` is
        (B, T, d_site) in the compute dtype.

    Raises:
        ValueError: For an unknown site (the message lists valid sites) or bad tokens.
    """
    hooks = _SiteHooks(cfg, capture, replace)
    check_params(cfg, params)
    params = cast_params(params, dtype or params["embed"].dtype)
    h = embed(cfg, params, tokens)
    h = _run_layers(cfg, params, h, 0, cfg.num_hidden_layers, hooks)
    return unembed(cfg, params, h), hooks.acts


def collect_sites(
    cfg: GemmaConfig,
    params: Params,
    tokens: Array,
    capture: str | Iterable[str],
    replace: Mapping[str, ReplaceFn] | None = None,
    dtype: Any = None,
) -> dict[str, Array]:
    """Like ``forward`` but returns only ``acts``, stopping after the deepest captured layer.

    This is what activation caching wants: no later layers and no (vocab-sized) unembedding.
    """
    hooks = _SiteHooks(cfg, capture, replace)
    if not hooks.capture:
        raise ValueError("collect_sites needs at least one site to capture.")
    last = max(sites_lib.parse(site)[1] for site in hooks.capture)
    check_params(cfg, params)
    params = cast_params(params, dtype or params["embed"].dtype)
    h = embed(cfg, params, tokens)
    _run_layers(cfg, params, h, 0, last + 1, hooks)
    return hooks.acts


def forward_from(
    cfg: GemmaConfig,
    params: Params,
    site: str,
    resid: Array,
    capture: str | Iterable[str] = (),
    replace: Mapping[str, ReplaceFn] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Continues a forward pass from a captured ``resid_post/L`` activation.

    Lets an evaluation share one clean prefix: capture ``resid_post/L-1`` once, then run layers
    L.. with a different SAE spliced in each time. Positions are 0..T-1, as in ``forward``.

    Args:
        cfg: Model config.
        params: The params pytree.
        site: A ``resid_post/<L>`` site; the pass continues at layer L + 1.
        resid: (B, T, d_model) activation at ``site``; its dtype is the compute dtype.
        capture: Sites to capture; all must be after ``site``.
        replace: ``{site: fn}`` as in ``forward``; all must be after ``site``.

    Returns:
        (logits, acts) as in ``forward``.

    Raises:
        ValueError: If ``site`` is not a resid_post site of the model or a capture/replace site
            is not after it.
    """
    kind, start = sites_lib.check(cfg, site)
    if kind != sites_lib.RESID_POST:
        raise ValueError(f"forward_from starts from a resid_post site, got {site!r}.")
    if jnp.shape(resid)[-1:] != (cfg.hidden_size,) or len(jnp.shape(resid)) != 3:
        raise ValueError(
            f"resid must have shape (batch, seq, {cfg.hidden_size}), got {jnp.shape(resid)}."
        )
    hooks = _SiteHooks(cfg, capture, replace)
    early = sorted(s for s in hooks.sites() if sites_lib.parse(s)[1] <= start)
    if early:
        raise ValueError(
            f"Sites {early} come before or at {site!r}; forward_from cannot reach them."
        )
    check_params(cfg, params)
    params = cast_params(params, resid.dtype)
    h = _run_layers(cfg, params, resid, start + 1, cfg.num_hidden_layers, hooks)
    return unembed(cfg, params, h), hooks.acts


def special_mask(cfg: GemmaConfig, tokens: Array) -> Array:
    """Bool (B, T) mask, True where the token is bos, any eos, or pad (the ids in ``cfg``)."""
    return jnp.isin(tokens, jnp.asarray(cfg.special_token_ids, dtype=jnp.int32))
