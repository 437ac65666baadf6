"""Gemma 2 and Gemma 3 in JAX with named capture points, presets and HF checkpoint loading.

Synopsis:
    from gemmascope import model
    cfg = model.presets.gemma2_2b()                      # or gemma3_1b(), tiny(), tiny_gemma3()
    params = model.init_params(cfg, jax.random.key(0))
    cfg, params = model.load_hf(path, dtype=jnp.bfloat16, mesh=mesh)   # Gemma 2 or 3 folder
    logits, acts = model.forward(cfg, params, tokens, capture=["resid_post/3", "attn_z/0"])
    logits, _ = model.forward(cfg, params, tokens, replace={"mlp_out/1": fn})
    model.sites.resolve(cfg, ["resid_post/*"]); model.special_mask(cfg, tokens)

See docs/model.md for presets, sites, loading, precision and how capture/replace work.
"""

from gemmascope.model import presets, sites

# HF checkpoints
from gemmascope.model.checkpoint import (
    check_hf_folder,
    check_tokenizer,
    load_from_config,
    load_hf,
    load_tokenizer,
    read_config,
    resolve_path,
    save_hf,
)

# Configuration
from gemmascope.model.config import Gemma2Config, Gemma3Config, GemmaConfig
from gemmascope.model.hf_config import config_from_hf_dict

# Parameters and sharding
from gemmascope.model.params import (
    DEFAULT_RULES,
    ParamSpec,
    init_params,
    param_shardings,
    param_specs,
)

# Forward pass
from gemmascope.model.transformer import (
    cast_params,
    check_params,
    check_tokens,
    collect_sites,
    embed,
    forward,
    forward_from,
    special_mask,
    unembed,
)

__all__ = [
    "DEFAULT_RULES",
    "Gemma2Config",
    "Gemma3Config",
    "GemmaConfig",
    "ParamSpec",
    "cast_params",
    "check_hf_folder",
    "check_params",
    "check_tokenizer",
    "check_tokens",
    "collect_sites",
    "config_from_hf_dict",
    "embed",
    "forward",
    "forward_from",
    "init_params",
    "load_from_config",
    "load_hf",
    "load_tokenizer",
    "param_shardings",
    "param_specs",
    "presets",
    "read_config",
    "resolve_path",
    "save_hf",
    "sites",
    "special_mask",
    "unembed",
]
