"""The Architecture protocol: every registered module satisfies it; others are refused by name."""

import types

import pytest

from gemmascope import sae
from gemmascope.sae import jumprelu, registry


@pytest.mark.parametrize("name", sorted(sae.ARCHITECTURES))
def test_every_registered_architecture_satisfies_the_protocol(name):
    arch = sae.ARCHITECTURES[name]
    assert isinstance(arch, sae.Architecture) and registry.check_architecture(arch) is arch
    assert arch.NAME == name and arch.SWEEP_FIELD in arch.default_config()


def test_a_module_lacking_members_is_refused_by_name():
    partial = types.ModuleType("my_arch")
    partial.NAME, partial.SWEEP_FIELD = "mine", "sparsity_coeff"
    for name in ("default_config", "validate", "init", "encode", "decode", "coeffs", "loss"):
        setattr(partial, name, getattr(jumprelu, name))
    partial.constrain = lambda params: params  # one argument short
    with pytest.raises(TypeError, match="my_arch does not satisfy") as error:
        sae.check_architecture(partial)
    message = str(error.value)
    assert "constrain() taking 2 positional arguments" in message
    assert "sweep_field()" in message and "update_buffers()" in message
    assert "to_jumprelu()" in message and "init()" not in message
