"""The oracle: random tiny HF Gemma 2 models (torch, eager attention) and their site values.

Each case is a torch ``Gemma2ForCausalLM`` with ``attn_implementation="eager"`` and every weight
(norm offsets included) drawn at random, saved with ``save_pretrained``, plus its logits and the
value of every site taken with torch forward hooks on a fixed token batch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

SEQ_LEN = 10
BATCH = 2

# Three configs, each exercising one trap (plus small softcaps so tanh is really non-linear).
CASES = {
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


def torch_forward(torch_model, tokens, zero_site=None):
    """Runs the torch model, returning (logits, acts) with every site from forward hooks.

    Args:
        torch_model: A transformers Gemma2ForCausalLM.
        tokens: int (B, T).
        zero_site: Optional site whose activation a hook replaces by zeros.
    """
    import torch

    acts, handles = {}, []

    def save(site, value):
        if site == zero_site:
            value = torch.zeros_like(value)
        acts[site] = value.detach().float().numpy().copy()
        return value

    for layer, block in enumerate(torch_model.model.layers):
        handles.append(
            block.register_forward_hook(lambda mod, inp, out, s=f"resid_post/{layer}": save(s, out))
        )
        handles.append(
            block.post_feedforward_layernorm.register_forward_hook(
                lambda mod, inp, out, s=f"mlp_out/{layer}": save(s, out)
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


def _build_case(name: str, kwargs: dict, folder: Path, seed: int) -> HFCase:
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_cfg = transformers.Gemma2Config(attn_implementation="eager", **kwargs)
    torch_model = transformers.Gemma2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for param_name, param in torch_model.named_parameters():
            # Norm offsets away from zero so the (1 + w) gain is really tested.
            param.normal_(0.0, 0.3 if "norm" in param_name else 0.25)
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
