"""Gemma 2 and Gemma 3 configurations: frozen, hashable dataclasses that jit can treat as static.

Synopsis:
    cfg = Gemma2Config(vocab_size=256, hidden_size=64, ...)   # or model.presets.gemma2_2b()
    cfg = Gemma3Config(vocab_size=256, hidden_size=64, ...)   # or model.presets.gemma3_1b()
    cfg = hf_config.config_from_hf_dict(json.load(open("config.json")))  # any family
    hf = cfg.to_hf_dict()                                    # what save_hf writes as config.json
    cfg.is_sliding(layer)                                    # local (sliding-window) layer?
    theta, scale = cfg.rope(layer)                           # RoPE base and linear scaling factor
    cfg.qk_norm                                              # RMSNorm on queries and keys?

Both families are one architecture contract, ``GemmaConfig``: the forward pass, the params table,
the sites, checkpoint loading and plan mode read only its fields and its three architecture
hooks (``qk_norm``, ``rope(layer)``, ``is_sliding(layer)``), so no caller branches on the family.
What differs lives in the subclasses:

- ``Gemma2Config``: attention and final logit softcapping, local/global alternation starting
  local, one RoPE base.
- ``Gemma3Config``: QK-norm, no softcapping, five local layers per global one
  (``sliding_window_pattern`` 6), a local RoPE base (``rope_local_base_freq``) and a global one
  (``rope_theta``) with linear scaling on the global layers (``rope_scaling_factor``, 8 for the
  4B and up).

Field names follow the Hugging Face ``Gemma2Config`` / ``Gemma3TextConfig`` so that a reader who
knows one knows the other (the released Gemma 2 sizes: docs/recipe.md#gemma-2-sizes). Defaults
are HF's defaults (the 2B of each family), because transformers fills missing ``config.json``
keys with them too: the multimodal Gemma 3 checkpoints list only the keys that differ from them.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

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
        "_model_name_or_path",
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
        "unk_token_id",
        "use_cache",
    }
)


def _rope_type(params: dict[str, Any]) -> str:
    return params.get("rope_type", params.get("type", "default"))


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """What every Gemma decoder has; subclasses add their family's fields and hooks.

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
        layer_types: Per layer ``"sliding_attention"`` or ``"full_attention"``; None = the
            family's default pattern. Always a tuple after construction.
        attn_logit_softcapping: ``c * tanh(logits / c)`` before masking; None = off.
        final_logit_softcapping: The same on the output logits; None = off.
        rms_norm_eps: Epsilon of every RMSNorm.
        rope_theta: RoPE base frequency (Gemma 3: of the global layers).
        max_position_embeddings: Positions the model was trained for (informational only).
        pad_token_id: Padding token id.
        eos_token_id: End-of-sequence id, or a tuple of them (instruction-tuned configs list two).
        bos_token_id: Beginning-of-sequence id.
        hidden_activation: Only ``"gelu_pytorch_tanh"`` (GeGLU with the tanh gelu) is supported.
        tie_word_embeddings: Only True (Gemma unembeds with the embedding table) is supported.
    """

    # The family: config.json's model_type and architecture, and the name errors use.
    model_type: ClassVar[str] = ""
    hf_architecture: ClassVar[str] = ""
    family: ClassVar[str] = "Gemma"
    # Whether queries and keys get a per-head RMSNorm (params q_norm, k_norm) before RoPE.
    qk_norm: ClassVar[bool] = False
    # Fields that to_hf_dict writes inside rope_parameters rather than as top-level keys.
    _rope_fields: ClassVar[tuple[str, ...]] = ("rope_theta",)

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
            layer_types = self.default_layer_types(self.num_hidden_layers)
        else:
            layer_types = tuple(self.layer_types)
        object.__setattr__(self, "layer_types", layer_types)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        self._validate()

    # ------------------------------------------------------------------ the family's hooks

    @staticmethod
    def default_layer_types(n_layers: int) -> tuple[str, ...]:
        """The family's attention pattern when config.json gives no ``layer_types``."""
        raise NotImplementedError

    def rope(self, layer: int) -> tuple[float, float]:
        """(base frequency, linear scaling factor) of ``layer``'s RoPE.

        The inverse frequencies are divided by the factor, as transformers'
        ``rope_type="linear"`` does.
        """
        raise NotImplementedError

    @classmethod
    def _fields_from_hf(cls, hf: dict[str, Any]) -> dict[str, Any]:
        """Pops the family's RoPE (and pattern) keys from ``hf``; returns the fields they set."""
        raise NotImplementedError

    def _hf_rope_parameters(self) -> dict[str, Any]:
        """The ``rope_parameters`` value of transformers 5.x for this config."""
        raise NotImplementedError

    # ------------------------------------------------------------------ validation

    def _validate(self) -> None:
        name = type(self).__name__
        for field in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}.{field} must be a positive int, got {value!r}.")
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
                f"hidden_activation {self.hidden_activation!r} is not supported; {self.family} "
                "uses 'gelu_pytorch_tanh'."
            )
        if not self.tie_word_embeddings:
            raise ValueError(
                f"tie_word_embeddings=False is not supported: {self.family} unembeds with the "
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
        per_layer = attn + 3 * d * m + 4 * d + (2 * h if self.qk_norm else 0)
        return self.vocab_size * d + self.num_hidden_layers * per_layer + d

    # ------------------------------------------------------------------ HF config.json

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> GemmaConfig:
        """Builds a config from a transformers ``config.json`` dict (4.x or 5.x style).

        Args:
            hf: The parsed ``config.json``. Missing keys take HF's defaults, as in transformers.

        Returns:
            The config.

        Raises:
            ValueError: If ``model_type`` is not this family's, or the config asks for a feature
                this implementation does not have (attention bias, another RoPE type,
                quantization, bidirectional attention, untied embeddings, another activation).

        Warns:
            UserWarning: For unknown keys, which are ignored.
        """
        hf = dict(hf)
        model_type = hf.pop("model_type", None)
        if model_type != cls.model_type:
            raise ValueError(
                f"config.json has model_type={model_type!r}; expected {cls.model_type!r}."
            )
        if hf.pop("attention_bias", False):
            raise ValueError(f"attention_bias=True is not supported ({cls.family} has no biases).")
        if hf.pop("quantization_config", None):
            raise ValueError(
                "Quantized checkpoints (quantization_config) are not supported; a GGUF file is "
                "converted to a plain HF folder with `python -m gemmascope.model.convert`."
            )
        if hf.pop("use_bidirectional_attention", None):
            raise ValueError("use_bidirectional_attention=True is not supported (causal only).")
        family_fields = cls._fields_from_hf(hf)
        for key in _IGNORED_HF_KEYS:
            hf.pop(key, None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(hf) - fields)
        if unknown:
            warnings.warn(
                f"Ignoring config.json keys this {cls.family} implementation does not use: "
                f"{unknown}.",
                stacklevel=2,
            )
        values = {key: value for key, value in hf.items() if key in fields}
        return cls(**{**values, **family_fields})

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers reads back as the same config."""
        out: dict[str, Any] = {
            "architectures": [self.hf_architecture],
            "model_type": self.model_type,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "hidden_act": self.hidden_activation,
            "rope_parameters": self._hf_rope_parameters(),
            "use_cache": True,
        }
        for field in dataclasses.fields(self):
            if field.name in self._rope_fields:
                continue
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclasses.dataclass(frozen=True)
class Gemma2Config(GemmaConfig):
    """Gemma 2 (2B, 9B, 27B): softcapped attention and logits, local/global alternation.

    The fields are ``GemmaConfig``'s, with HF ``Gemma2Config``'s defaults (the 2B); layer_types
    defaults to the alternation starting local at layer 0, and one RoPE base serves every layer.
    """

    model_type: ClassVar[str] = "gemma2"
    hf_architecture: ClassVar[str] = "Gemma2ForCausalLM"
    family: ClassVar[str] = "Gemma 2"
    qk_norm: ClassVar[bool] = False

    @staticmethod
    def default_layer_types(n_layers: int) -> tuple[str, ...]:
        """Local and global layers alternate, local first (docs/recipe.md#gemma-2-layers)."""
        return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n_layers))

    def rope(self, layer: int) -> tuple[float, float]:
        """Every layer: (``rope_theta``, 1.0)."""
        return self.rope_theta, 1.0

    @classmethod
    def _fields_from_hf(cls, hf: dict[str, Any]) -> dict[str, Any]:
        rope = hf.pop("rope_parameters", None) or hf.pop("rope_scaling", None) or {}
        hf.pop("rope_scaling", None)
        if _rope_type(rope) != "default":
            raise ValueError(f"rope_type {_rope_type(rope)!r} is not supported; only 'default'.")
        return {"rope_theta": rope["rope_theta"]} if "rope_theta" in rope else {}

    def _hf_rope_parameters(self) -> dict[str, Any]:
        return {"rope_theta": float(self.rope_theta), "rope_type": "default"}


def gemma3_layer_types(n_layers: int, sliding_window_pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's pattern: every ``sliding_window_pattern``-th layer global, the others local.

    transformers' rule: layer i is local iff ``(i + 1) % sliding_window_pattern`` is non-zero, so
    the default 6 gives five local layers, then one global (layers 5, 11, 17, ...).
    """
    if isinstance(sliding_window_pattern, bool) or not isinstance(sliding_window_pattern, int):
        raise ValueError(
            f"sliding_window_pattern must be a positive int, got {sliding_window_pattern!r}."
        )
    if sliding_window_pattern <= 0:
        raise ValueError(
            f"sliding_window_pattern must be a positive int, got {sliding_window_pattern!r}."
        )
    return tuple(SLIDING if (i + 1) % sliding_window_pattern else FULL for i in range(n_layers))


@dataclasses.dataclass(frozen=True)
class Gemma3Config(GemmaConfig):
    """Gemma 3 text decoder (270M, 1B, and the language model of 4B, 12B, 27B).

    The fields are ``GemmaConfig``'s with HF ``Gemma3TextConfig``'s defaults, plus:

    Attributes:
        rope_local_base_freq: RoPE base of the sliding (local) layers; ``rope_theta`` is the
            global layers' base.
        rope_scaling_factor: Linear RoPE scaling of the global layers (HF
            ``rope_scaling={"rope_type": "linear", "factor": f}``): inv_freq / f; 1.0 = none.

    ``layer_types`` defaults to ``gemma3_layer_types(num_hidden_layers)`` (5 local : 1 global).
    Attention logit softcapping does not exist in Gemma 3 (transformers ignores the key), so a
    non-None ``attn_logit_softcapping`` is refused; ``final_logit_softcapping`` is applied if set,
    as transformers does.
    """

    model_type: ClassVar[str] = "gemma3_text"
    hf_architecture: ClassVar[str] = "Gemma3ForCausalLM"
    family: ClassVar[str] = "Gemma 3"
    qk_norm: ClassVar[bool] = True
    _rope_fields: ClassVar[tuple[str, ...]] = (
        "rope_theta",
        "rope_local_base_freq",
        "rope_scaling_factor",
    )

    vocab_size: int = 262208
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 131072
    rope_local_base_freq: float = 10000.0
    rope_scaling_factor: float = 1.0

    def _validate(self) -> None:
        super()._validate()
        if self.attn_logit_softcapping is not None:
            raise ValueError(
                "Gemma 3 has no attention logit softcapping (transformers' Gemma3 ignores "
                f"attn_logit_softcapping); got {self.attn_logit_softcapping}, expected None."
            )
        if not self.rope_scaling_factor > 0:
            raise ValueError(
                f"rope_scaling_factor must be positive, got {self.rope_scaling_factor}."
            )

    @staticmethod
    def default_layer_types(n_layers: int) -> tuple[str, ...]:
        """Five local layers, then a global one (``gemma3_layer_types`` with pattern 6)."""
        return gemma3_layer_types(n_layers)

    def rope(self, layer: int) -> tuple[float, float]:
        """Global layers: (``rope_theta``, ``rope_scaling_factor``); local: (local base, 1.0)."""
        if self.layer_types[layer] == FULL:
            return self.rope_theta, self.rope_scaling_factor
        return self.rope_local_base_freq, 1.0

    @classmethod
    def _fields_from_hf(cls, hf: dict[str, Any]) -> dict[str, Any]:
        """Reads RoPE the way transformers' ``Gemma3TextConfig`` does, in 4.x and 5.x form.

        5.x: ``rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}``. 4.x:
        ``rope_theta`` (global), ``rope_local_base_freq`` (local) and ``rope_scaling`` (applied
        to the global layers). The layer pattern: ``layer_types``, else derived from
        ``sliding_window_pattern`` (default 6).
        """
        fields: dict[str, Any] = {}
        pattern = hf.pop("sliding_window_pattern", 6)
        hf.pop("_sliding_window_pattern", None)  # transformers' private copy; it ignores it too
        if hf.get("layer_types") is None:
            hf.pop("layer_types", None)
            n_layers = hf.get("num_hidden_layers", cls.num_hidden_layers)
            fields["layer_types"] = gemma3_layer_types(n_layers, pattern)
        per_type = {FULL: {}, SLIDING: {}}
        params = hf.pop("rope_parameters", None) or {}
        if params and not set(params) <= set(LAYER_TYPES):
            raise ValueError(
                f"Gemma 3 rope_parameters must be nested by layer type ({list(LAYER_TYPES)}), "
                f"got keys {sorted(params)}."
            )
        for layer_type, value in params.items():
            per_type[layer_type].update(value or {})
        per_type[FULL].update(hf.pop("rope_scaling", None) or {})
        global_theta = hf.pop("rope_theta", None)
        local_theta = hf.pop("rope_local_base_freq", None)
        full, sliding = per_type[FULL], per_type[SLIDING]
        if _rope_type(sliding) != "default":
            raise ValueError(
                f"rope_type {_rope_type(sliding)!r} on the sliding layers is not supported; "
                "only 'default'."
            )
        if _rope_type(full) not in ("default", "linear"):
            raise ValueError(
                f"rope_type {_rope_type(full)!r} on the full-attention layers is not supported; "
                "valid: 'default', 'linear'."
            )
        if full.get("rope_theta", global_theta) is not None:
            fields["rope_theta"] = full.get("rope_theta", global_theta)
        if sliding.get("rope_theta", local_theta) is not None:
            fields["rope_local_base_freq"] = sliding.get("rope_theta", local_theta)
        if _rope_type(full) == "linear":
            fields["rope_scaling_factor"] = float(full["factor"])
        return fields

    def _hf_rope_parameters(self) -> dict[str, Any]:
        full: dict[str, Any] = {"rope_type": "default", "rope_theta": float(self.rope_theta)}
        if self.rope_scaling_factor != 1.0:
            full.update(rope_type="linear", factor=float(self.rope_scaling_factor))
        return {
            SLIDING: {"rope_type": "default", "rope_theta": float(self.rope_local_base_freq)},
            FULL: full,
        }
