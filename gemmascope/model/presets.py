"""Named Gemma 2 configurations: the three released sizes and tiny ones for tests.

Synopsis:
    cfg = presets.gemma2_2b()         # every number of docs/recipe.md#gemma-2-sizes
    cfg = presets.get("gemma2_9b")    # by name, for config files
    cfg = presets.tiny()              # a few thousand parameters, for tests and examples
    cfg = presets.tiny(num_key_value_heads=1)   # any field can be overridden

The released numbers are from HF's config.json files and google-deepmind/gemma
(docs/recipe.md#gemma-2-sizes). Vocabulary is the HF checkpoint's 256,000 rows (the original JAX
checkpoints pad to 256,128).
"""

from __future__ import annotations

from collections.abc import Callable

from gemmascope.model.config import Gemma2Config

_COMMON = dict(
    vocab_size=256000,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=8192,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
)


def gemma2_2b() -> Gemma2Config:
    """Gemma 2 2B ("2.6B"): d_model 2304, 26 layers, 8 query / 4 KV heads of 256."""
    return Gemma2Config(
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        **_COMMON,
    )


def gemma2_9b() -> Gemma2Config:
    """Gemma 2 9B: d_model 3584, 42 layers, 16 query / 8 KV heads of 256."""
    return Gemma2Config(
        hidden_size=3584,
        intermediate_size=14336,
        num_hidden_layers=42,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        query_pre_attn_scalar=256,
        **_COMMON,
    )


def gemma2_27b() -> Gemma2Config:
    """Gemma 2 27B: d_model 4608, 46 layers, 32 query / 16 KV heads of 128, scalar 144."""
    return Gemma2Config(
        hidden_size=4608,
        intermediate_size=36864,
        num_hidden_layers=46,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
        # 27B scales queries by 1/sqrt(d_model / n_heads) = 1/sqrt(144), not 1/sqrt(head_dim).
        query_pre_attn_scalar=144,
        **_COMMON,
    )


def tiny(**overrides) -> Gemma2Config:
    """A tiny Gemma 2 (4 layers, d_model 64, vocab 512) for tests; fields can be overridden.

    Its sliding window (8) is shorter than typical test sequences so local layers really differ
    from global ones, and its query_pre_attn_scalar (24) differs from head_dim (16).
    """
    fields = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=8,
        max_position_embeddings=512,
    )
    # Built from keywords (not dataclasses.replace) so that overriding num_hidden_layers also
    # re-derives the default layer_types.
    return Gemma2Config(**{**fields, **overrides})


PRESETS: dict[str, Callable[[], Gemma2Config]] = {
    "gemma2_2b": gemma2_2b,
    "gemma2_9b": gemma2_9b,
    "gemma2_27b": gemma2_27b,
    "tiny": tiny,
}


def get(name: str) -> Gemma2Config:
    """Returns the preset called ``name``.

    Raises:
        ValueError: If there is no such preset (the message lists the valid names).
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; valid presets: {sorted(PRESETS)}.")
    return PRESETS[name]()
