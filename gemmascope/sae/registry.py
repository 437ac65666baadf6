"""The architecture registry: name -> module, each checked against the `Architecture` protocol.

An architecture is a module (jumprelu.py, gated.py, ...) with the members of `Architecture`: two
constants and pure, traceable functions over a flat dict of params (docs/internals.md, "sae").
Registering one checks at import that the module has every member, each callable with the
protocol's positional arguments, so a missing or misnamed function fails here, not mid-training.

Synopsis::

    arch = ARCHITECTURES["gated"]      # an unknown name raises KeyError listing the valid ones
    arch = get("gated")                # the same, as a function
    check_architecture(my_module)      # TypeError naming what a new architecture lacks
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections

from gemmascope.sae import batchtopk, gated, jumprelu, matryoshka, matryoshka_jumprelu, relu, topk


@runtime_checkable
class Architecture(Protocol):
    """What the trainer, the exporter and the train step use of an SAE architecture module.

    Attributes:
        NAME: the registry key, e.g. "jumprelu".
        SWEEP_FIELD: the config field a sweep varies in the default form (e.g. "sparsity_coeff").
    """

    NAME: str
    SWEEP_FIELD: str

    def default_config(self) -> ml_collections.ConfigDict:
        """The architecture's config with Gemma Scope's defaults (lr, schedules, ...)."""

    def validate(self, cfg: ml_collections.ConfigDict) -> None:
        """Raises ValueError naming the first bad field of `cfg`."""

    def sweep_field(self, cfg: ml_collections.ConfigDict) -> str:
        """The field a sweep varies under `cfg` (JumpReLU's target-L0 form sweeps "target_l0")."""

    def init(self, key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
        """Fresh params of one SAE (fp32 arrays; may include the buffers of `BUFFER_KEYS`)."""

    def encode(self, params: dict, x: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
        """Latent activations f (B, M) of inputs x (B, d_in)."""

    def decode(self, params: dict, f: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
        """The reconstruction (B, d_in) of latents f."""

    def coeffs(self, cfg: ml_collections.ConfigDict, step_index: Any, sweep_value: Any = None):
        """The traced loss coefficients of a step; `sweep_value` overrides the swept field."""

    def loss(self, params: dict, x: jax.Array, coeffs: dict, cfg: ml_collections.ConfigDict):
        """(loss, metrics) of a batch; metrics as `losses.batch_metrics` (with `fired`).

        An architecture that trains transcoders also takes the keyword ``target`` (B, d_out),
        the site its decoder reconstructs instead of x (`supports_transcoders`).
        """

    def token_separable(self, params: dict, cfg: ml_collections.ConfigDict) -> Any:
        """Whether `loss` is a mean over tokens of terms that each depend on one token only.

        True, False, or a traced bool (AuxK: true while no latent is dead). When it holds,
        the step may take the gradient over blocks of the batch (`gemmascope.sae.token_blocks`;
        the metrics' ``recon_loss`` must then be the mean squared error ``fvu`` is taken from).
        """

    def constrain(self, params: dict, cfg: ml_collections.ConfigDict) -> dict:
        """The params after an update, projected back to their constraints (unit decoder rows)."""

    def update_buffers(self, params: dict, x: jax.Array, metrics: dict, step_index, cfg) -> dict:
        """The params with their non-trained buffers advanced by one step."""

    def to_jumprelu(self, params: dict, cfg: ml_collections.ConfigDict) -> dict:
        """The JumpReLU inference form (W_enc, W_dec, b_enc, b_dec, threshold; training units).

        Raises ValueError for an architecture without one (TopK).
        """


# The protocol's functions and how many positional arguments each must accept.
_FUNCTIONS = {
    name: len(inspect.signature(member).parameters) - 1  # without `self`
    for name, member in vars(Architecture).items()
    if inspect.isfunction(member) and not name.startswith("_")
}
_CONSTANTS = ("NAME", "SWEEP_FIELD")


def check_architecture(module: Any) -> Architecture:
    """Returns `module` if it satisfies `Architecture`; else raises TypeError naming what is wrong.

    Checks that the constants are strings and that each function exists and accepts the
    protocol's positional arguments (extra optional parameters are allowed).
    """
    label = getattr(module, "__name__", repr(module))
    problems = [
        f"{name} (a str)" for name in _CONSTANTS if not isinstance(getattr(module, name, None), str)
    ]
    for name, n_args in _FUNCTIONS.items():
        function = getattr(module, name, None)
        if not callable(function):
            problems.append(f"{name}()")
            continue
        try:
            inspect.signature(function).bind(*range(n_args))
        except TypeError:
            problems.append(f"{name}() taking {n_args} positional arguments")
    if problems:
        raise TypeError(
            f"SAE architecture {label} does not satisfy gemmascope.sae.registry.Architecture: "
            f"missing or wrong {', '.join(problems)}"
        )
    return module


class _Registry(dict):
    """A dict whose missing-key error lists the valid architecture names."""

    def __missing__(self, name):
        raise KeyError(f"Unknown SAE architecture {name!r}; valid architectures: {sorted(self)}.")


ARCHITECTURES: dict[str, Architecture] = _Registry(
    {
        module.NAME: check_architecture(module)
        for module in (jumprelu, gated, topk, batchtopk, relu, matryoshka, matryoshka_jumprelu)
    }
)


def supports_transcoders(arch: Architecture) -> bool:
    """Whether ``arch`` trains transcoders: its ``loss`` takes the keyword ``target``.

    docs/transcoders.md: JumpReLU, TopK and BatchTopK do.
    """
    return "target" in inspect.signature(arch.loss).parameters


def check_transcoder_support(name: str, cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError when ``cfg`` asks for a transcoder (``d_out``) ``name`` cannot train."""
    if cfg.get("d_out") is None or supports_transcoders(get(name)):
        return
    valid = sorted(n for n, arch in ARCHITECTURES.items() if supports_transcoders(arch))
    raise ValueError(
        f"SAE architecture {name!r} does not train transcoders (its loss takes no target); "
        f"architectures that do: {valid}."
    )


def get(name: str) -> Architecture:
    """The architecture module registered under ``name`` (KeyError listing valid names)."""
    return ARCHITECTURES[name]
