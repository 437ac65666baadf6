"""The oracle: random tiny HF Gemma 2 / Gemma 3 models (torch, eager attention) and their sites.

Each case is a torch ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM`` with
``attn_implementation="eager"`` and every weight (norm offsets, QK-norm included) drawn at
random, saved with ``save_pretrained``, plus its logits and the value of every site taken with
torch forward hooks on a fixed token batch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

SEQ_LEN = 10
BATCH = 2

# Three configs, each exercising one trap (plus small softcaps so tanh is really non-linear).
GEMMA2_CASES = {
    # sliding window (3) shorter than the sequence (10): local layers really are local.
    "window": dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=3,
    ),
    # query_pre_attn_scalar (20) != head_dim (8); strong softcaps.
    "scalar": dict(
        vocab_size=48,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=20,
        sliding_window=16,
        attn_logit_softcapping=1.5,
        final_logit_softcapping=4.0,
    ),
    # a single KV head shared by 4 query heads (multi-query attention).
    "single_kv": dict(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=6,
        query_pre_attn_scalar=6,
        sliding_window=5,
    ),
}

# Gemma 3 (transformers.Gemma3TextConfig keywords, 4.x style as the released config.json files):
# every case mixes local and global layers with a window shorter than the sequence (10) and
# two different RoPE bases; QK-norm gains are random like every other norm.
GEMMA3_CASES = {
    # GQA (4 query / 2 KV heads), layers local-global-local, linear RoPE scaling x4 on the global
    # layer, small bases so both rotate visibly within 10 positions.
    "g3_scaled": dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=3,
        sliding_window_pattern=2,
        rope_theta=1000.0,
        rope_local_base_freq=50.0,
        rope_scaling={"rope_type": "linear", "factor": 4.0},
    ),
    # A global layer first, query_pre_attn_scalar (20) != head_dim (8) as in the 27B, the real
    # bases (10k local, 1M global) with scaling x8 as in 4B+, and a final logit softcap (which
    # transformers' Gemma 3 applies when a config sets it).
    "g3_scalar": dict(
        vocab_size=48,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=20,
        sliding_window=4,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        final_logit_softcapping=4.0,
    ),
    # Multi-query attention (4 query heads on one KV head), no scaling, the pattern given by
    # sliding_window_pattern 3 (local, local, global, local).
    "g3_mqa": dict(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=6,
        query_pre_attn_scalar=6,
        sliding_window=5,
        sliding_window_pattern=3,
        rope_theta=200.0,
        rope_local_base_freq=20.0,
    ),
}

CASES = {**GEMMA2_CASES, **GEMMA3_CASES}


@dataclasses.dataclass
class HFCase:
    """One oracle model: its folder, a token batch, and torch's logits and site values."""

    name: str
    path: Path
    sharded_path: Path
    torch_model: object
    tokens: np.ndarray  # int32 (B, T), BOS first
    logits: np.ndarray  # fp32 (B, T, V)
    acts: dict  # site -> fp32 (B, T, d_site)


def decoder_layers(torch_model):
    """The decoder blocks of a Gemma2/3ForCausalLM or a Gemma3ForConditionalGeneration."""
    inner = torch_model.model
    return getattr(inner, "language_model", inner).layers


def torch_forward(torch_model, tokens, zero_site=None, edit_site=None, edit=None):
    """Runs the torch model, returning (logits, acts) with every site from forward hooks.

    Args:
        torch_model: A transformers Gemma2ForCausalLM, Gemma3ForCausalLM or
            Gemma3ForConditionalGeneration.
        tokens: int (B, T).
        zero_site: Optional site whose activation a hook replaces by zeros.
        edit_site: Optional site whose activation a hook replaces by ``edit(activation)``.
        edit: The function for ``edit_site`` (torch tensors in, torch tensors out).

    Returns:
        (logits, acts); ``acts[site]`` is the value the pass continues with (after the edit).
    """
    import torch

    acts, handles = {}, []
    edits = {} if edit_site is None else {edit_site: edit}
    if zero_site is not None:
        edits[zero_site] = torch.zeros_like

    def save(site, value):
        if site in edits:
            value = edits[site](value)
        acts[site] = value.detach().float().numpy().copy()
        return value

    for layer, block in enumerate(decoder_layers(torch_model)):
        handles.append(
            block.register_forward_hook(lambda mod, inp, out, s=f"resid_post/{layer}": save(s, out))
        )
        handles.append(
            block.post_feedforward_layernorm.register_forward_hook(
                lambda mod, inp, out, s=f"mlp_out/{layer}": save(s, out)
            )
        )
        # mlp_in: the output of the pre-feedforward norm, i.e. the MLP's input.
        handles.append(
            block.pre_feedforward_layernorm.register_forward_hook(
                lambda mod, inp, out, s=f"mlp_in/{layer}": save(s, out)
            )
        )
        handles.append(
            block.self_attn.o_proj.register_forward_pre_hook(
                lambda mod, inp, s=f"attn_z/{layer}": (save(s, inp[0]),)
            )
        )
    try:
        with torch.no_grad():
            logits = torch_model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits.float().numpy(), acts


def randomize(torch_model) -> None:
    """Every weight random; norm offsets away from zero so the (1 + w) gain is really tested."""
    import torch

    with torch.no_grad():
        for param_name, param in torch_model.named_parameters():
            param.normal_(0.0, 0.3 if "norm" in param_name else 0.25)


def _build_case(name: str, kwargs: dict, folder: Path, seed: int) -> HFCase:
    import torch
    import transformers

    torch.manual_seed(seed)
    if name in GEMMA3_CASES:
        hf_cfg = transformers.Gemma3TextConfig(attn_implementation="eager", **kwargs)
        torch_model = transformers.Gemma3ForCausalLM(hf_cfg).eval()
    else:
        hf_cfg = transformers.Gemma2Config(attn_implementation="eager", **kwargs)
        torch_model = transformers.Gemma2ForCausalLM(hf_cfg).eval()
    randomize(torch_model)
    path, sharded_path = folder / "single", folder / "sharded"
    torch_model.save_pretrained(path)
    torch_model.save_pretrained(sharded_path, max_shard_size="8KB")
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, kwargs["vocab_size"], size=(BATCH, SEQ_LEN)).astype(np.int32)
    tokens[:, 0] = hf_cfg.bos_token_id
    logits, acts = torch_forward(torch_model, tokens)
    return HFCase(name, path, sharded_path, torch_model, tokens, logits, acts)


def build_cases(root: Path) -> dict[str, HFCase]:
    """Builds every case under ``root``, keyed by case name."""
    return {
        name: _build_case(name, kwargs, root / name, seed)
        for seed, (name, kwargs) in enumerate(CASES.items())
    }
