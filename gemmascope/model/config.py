"""The Gemma 2 configuration: one frozen, hashable dataclass that jit can treat as static.

Synopsis:
    cfg = Gemma2Config(vocab_size=256, hidden_size=64, ...)   # or model.presets.gemma2_2b()
    cfg = Gemma2Config.from_hf_dict(json.load(open("config.json")))
    hf = cfg.to_hf_dict()                                    # what save_hf writes as config.json
    cfg.is_sliding(layer)                                    # local (sliding-window) layer?

Field names follow the Hugging Face ``Gemma2Config`` so that a reader who knows one knows the other
(docs/recipe.md#gemma-2-sizes gives the values of the released sizes). Defaults are HF's defaults,
which are the 2B model, because transformers fills missing ``config.json`` keys with them too.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"
LAYER_TYPES = (SLIDING, FULL)

# config.json keys that carry no information for the forward pass (training, generation and the
# generic PretrainedConfig fields); from_hf_dict drops them silently. Keys that would change the
# forward pass if set (attention bias, RoPE scaling, quantization, ...) are checked explicitly and
# raise; any other unknown key is dropped with a warning.
_IGNORED_HF_KEYS = frozenset(
    {
        "_attn_implementation_autoset",
        "_name_or_path",
        "add_cross_attention",
        "architectures",
        "attention_dropout",
        "cache_implementation",
        "chunk_size_feed_forward",
        "dtype",
        "finetuning_task",
        "hidden_act",
        "id2label",
        "initializer_range",
        "is_decoder",
        "is_encoder_decoder",
        "label2id",
        "output_attentions",
        "output_hidden_states",
        "problem_type",
        "return_dict",
        "tokenizer_class",
        "torch_dtype",
        "transformers_version",
        "use_cache",
    }
)


def _default_layer_types(n_layers: int) -> tuple[str, ...]:
    """Local and global attention alternate, local at layer 0 (docs/recipe.md#gemma-2-layers)."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n_layers))


@dataclasses.dataclass(frozen=True)
class Gemma2Config:
    """Architecture of one Gemma 2 model; hashable, so it can be a jit static arg.

    The released sizes: docs/recipe.md#gemma-2-sizes.

    Attributes:
        vocab_size: Rows of the (tied) embedding table.
        hidden_size: d_model, the residual stream width.
        intermediate_size: d_mlp, the width of each of the gate and up projections.
        num_hidden_layers: Number of decoder blocks.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (grouped-query attention); divides the query heads.
        head_dim: Width of one head (even, for RoPE).
        query_pre_attn_scalar: Attention logits are scaled by ``query_pre_attn_scalar ** -0.5``.
        sliding_window: Keys a local-layer query may see, itself included; None = unbounded.
        layer_types: Per layer ``"sliding_attention"`` or ``"full_attention"``; None = Gemma 2's
            alternation (even layers local). Always a tuple after construction.
        attn_logit_softcapping: ``c * tanh(logits / c)`` before masking; None = off.
        final_logit_softcapping: The same on the output logits; None = off.
        rms_norm_eps: Epsilon of every RMSNorm.
        rope_theta: RoPE base frequency.
        max_position_embeddings: Positions the model was trained for (informational only).
        pad_token_id: Padding token id.
        eos_token_id: End-of-sequence id, or a tuple of them (instruction-tuned configs list two).
        bos_token_id: Beginning-of-sequence id.
        hidden_activation: Only ``"gelu_pytorch_tanh"`` (GeGLU with the tanh gelu) is supported.
        tie_word_embeddings: Only True (Gemma 2 unembeds with the embedding table) is supported.
    """

    vocab_size: int = 256000
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] | None = None
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    pad_token_id: int = 0
    eos_token_id: int | tuple[int, ...] = 1
    bos_token_id: int = 2
    hidden_activation: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True

    def __post_init__(self):
        """Fills the default layer types, normalises list fields to tuples and validates."""
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", _default_layer_types(self.num_hidden_layers))
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        self._validate()

    def _validate(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Gemma2Config.{name} must be a positive int, got {value!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}.")
        if self.query_pre_attn_scalar <= 0:
            raise ValueError(
                f"query_pre_attn_scalar must be positive, got {self.query_pre_attn_scalar}."
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(
                f"sliding_window must be a positive int or None, got {self.sliding_window}."
            )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}."
            )
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            raise ValueError(f"Unknown layer_types {bad}; valid: {list(LAYER_TYPES)}.")
        if self.hidden_activation != "gelu_pytorch_tanh":
            raise ValueError(
                f"hidden_activation {self.hidden_activation!r} is not supported; Gemma 2 uses "
                "'gelu_pytorch_tanh'."
            )
        if not self.tie_word_embeddings:
            raise ValueError(
                "tie_word_embeddings=False is not supported: Gemma 2 unembeds with the "
                "embedding table."
            )

    # ------------------------------------------------------------------ derived quantities

    @property
    def attn_z_width(self) -> int:
        """Width of the ``attn_z`` site: the concatenated per-head outputs, heads * head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple, whether the config holds one or several."""
        if isinstance(self.eos_token_id, tuple):
            return self.eos_token_id
        return (self.eos_token_id,)

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """bos, eos (all of them) and pad ids, the positions metrics and caches leave out."""
        return tuple(sorted({self.bos_token_id, self.pad_token_id, *self.eos_token_ids}))

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` uses sliding-window (local) attention with a finite window."""
        return self.layer_types[layer] == SLIDING and self.sliding_window is not None

    def n_params(self) -> int:
        """Number of parameters (tied embedding counted once)."""
        d, m, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        per_layer = attn + 3 * d * m + 4 * d
        return self.vocab_size * d + self.num_hidden_layers * per_layer + d

    # ------------------------------------------------------------------ HF config.json

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> Gemma2Config:
        """Builds a config from a transformers ``config.json`` dict (4.x or 5.x style).

        Args:
            hf: The parsed ``config.json``. Missing keys take HF's defaults, as in transformers.

        Returns:
            The config.

        Raises:
            ValueError: If ``model_type`` is not ``gemma2``, or the config asks for a feature this
                implementation does not have (attention bias, RoPE scaling, quantization,
                bidirectional attention, untied embeddings, another activation).

        Warns:
            UserWarning: For unknown keys, which are ignored.
        """
        hf = dict(hf)
        model_type = hf.pop("model_type", None)
        if model_type != "gemma2":
            raise ValueError(f"config.json has model_type={model_type!r}; expected 'gemma2'.")
        if hf.pop("attention_bias", False):
            raise ValueError("attention_bias=True is not supported (Gemma 2 has no biases).")
        if hf.pop("quantization_config", None):
            raise ValueError("Quantized checkpoints (quantization_config) are not supported.")
        if hf.pop("use_bidirectional_attention", None):
            raise ValueError("use_bidirectional_attention=True is not supported (causal only).")
        rope = hf.pop("rope_parameters", None) or hf.pop("rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope_type {rope_type!r} is not supported; only 'default'.")
        if "rope_theta" in rope:
            hf.setdefault("rope_theta", rope["rope_theta"])
        hf.pop("rope_scaling", None)
        for key in _IGNORED_HF_KEYS:
            hf.pop(key, None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(hf) - fields)
        if unknown:
            warnings.warn(
                f"Ignoring config.json keys this Gemma 2 implementation does not use: {unknown}.",
                stacklevel=2,
            )
        return cls(**{key: value for key, value in hf.items() if key in fields})

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers reads back as the same ``Gemma2Config``."""
        out: dict[str, Any] = {
            "architectures": ["Gemma2ForCausalLM"],
            "model_type": "gemma2",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "hidden_act": self.hidden_activation,
            "rope_parameters": {"rope_theta": float(self.rope_theta), "rope_type": "default"},
            "use_cache": True,
        }
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "rope_theta":
                continue
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out
