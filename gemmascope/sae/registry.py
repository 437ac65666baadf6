"""The architecture registry: name -> module with the architecture interface.

Each architecture module exposes NAME, SWEEP_FIELD, ``default_config()``, ``validate(cfg)``,
``sweep_field(cfg)``, ``init``, ``encode``, ``decode``, ``coeffs``, ``loss``, ``constrain``,
``update_buffers`` and ``to_jumprelu`` (which raises for TopK, the one architecture without a
JumpReLU form). See docs/sae.md.

Synopsis::

    arch = ARCHITECTURES["gated"]      # an unknown name raises KeyError listing the valid ones
    arch = get("gated")                # the same, as a function
"""

import types

from gemmascope.sae import batchtopk, gated, jumprelu, matryoshka, relu, topk


class _Registry(dict):
    """A dict whose missing-key error lists the valid architecture names."""

    def __missing__(self, name):
        raise KeyError(f"Unknown SAE architecture {name!r}; valid architectures: {sorted(self)}.")


ARCHITECTURES: dict[str, types.ModuleType] = _Registry(
    {module.NAME: module for module in (jumprelu, gated, topk, batchtopk, relu, matryoshka)}
)


def get(name: str) -> types.ModuleType:
    """The architecture module registered under ``name`` (KeyError listing valid names)."""
    return ARCHITECTURES[name]
