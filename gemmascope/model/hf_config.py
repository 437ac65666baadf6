"""Which config a Hugging Face ``config.json`` is: Gemma 2, Gemma 3 text-only or multimodal.

Synopsis:
    cfg = config_from_hf_dict(json.load(open("config.json")))   # Gemma2Config or Gemma3Config
    is_multimodal(hf)          # a Gemma3ForConditionalGeneration: the LM is under text_config
    CONFIG_CLASSES             # {"gemma2": Gemma2Config, "gemma3_text": Gemma3Config}
"""

from __future__ import annotations

import logging
from typing import Any

from gemmascope.model.config import Gemma2Config, Gemma3Config, GemmaConfig

# The model_type of the multimodal Gemma 3 checkpoints (4B, 12B, 27B): a Gemma3Config whose
# text decoder is described by the nested "text_config".
MULTIMODAL_GEMMA3 = "gemma3"
# Token ids a multimodal config.json may give at its top level instead of in text_config.
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")

CONFIG_CLASSES: dict[str, type[GemmaConfig]] = {
    cls.model_type: cls for cls in (Gemma2Config, Gemma3Config)
}


def is_multimodal(hf: dict[str, Any]) -> bool:
    """Whether a config.json dict is a multimodal Gemma 3 (text decoder under text_config)."""
    return hf.get("model_type") == MULTIMODAL_GEMMA3


def config_from_hf_dict(hf: dict[str, Any]) -> GemmaConfig:
    """The config of any supported ``config.json``: gemma2, gemma3_text, or multimodal gemma3.

    A multimodal Gemma 3 (``Gemma3ForConditionalGeneration``) is read as its language model:
    ``text_config`` (with ``Gemma3TextConfig``'s defaults for missing keys, as transformers does).
    Token ids may sit at the top level instead (the instruction-tuned checkpoints list eos
    [1, 106] there, and transformers 5.x writes text_config's default eos 1 beside it): eos is the
    union of both, bos and pad come from text_config when it has them. The vision tower's config
    is ignored.

    Raises:
        ValueError: An unsupported model_type (the message lists the valid ones), or whatever
            the family's ``from_hf_dict`` refuses.
    """
    model_type = hf.get("model_type")
    if model_type == MULTIMODAL_GEMMA3:
        text = dict(hf.get("text_config") or {})
        text.setdefault("model_type", Gemma3Config.model_type)
        for key in _TOKEN_ID_KEYS:
            if hf.get(key) is not None:
                text.setdefault(key, hf[key])
        if hf.get("eos_token_id") is not None:
            ids = [text["eos_token_id"], hf["eos_token_id"]]
            eos = [i for value in ids for i in (value if isinstance(value, list) else [value])]
            eos = list(dict.fromkeys(eos))
            text["eos_token_id"] = eos[0] if len(eos) == 1 else eos
        logging.info(
            "config.json is a multimodal Gemma 3 (%s): using its text_config; the vision "
            "tower's config is ignored",
            hf.get("architectures"),
        )
        return Gemma3Config.from_hf_dict(text)
    if model_type not in CONFIG_CLASSES:
        valid = sorted([*CONFIG_CLASSES, MULTIMODAL_GEMMA3])
        raise ValueError(
            f"config.json has model_type={model_type!r}; supported model types: {valid}."
        )
    return CONFIG_CLASSES[model_type].from_hf_dict(hf)
