"""Site names: parse, resolve globs, dims, and errors that list the valid sites."""

import pytest

from gemmascope import model
from gemmascope.model import sites

CFG = model.presets.tiny()  # 4 layers, d_model 64, 4 heads of 16


def test_parse_and_name_are_inverse():
    assert sites.parse("mlp_out/3") == ("mlp_out", 3)
    assert sites.parse("mlp_in/0") == ("mlp_in", 0)
    assert sites.name("attn_z", 12) == "attn_z/12"


@pytest.mark.parametrize("bad", ["mlp_out", "mlp/3", "mlp_out/x", "mlp_out/-1", "a/b/c", 3])
def test_parse_rejects_malformed_names(bad):
    with pytest.raises(ValueError, match="valid sites"):
        sites.parse(bad)


def test_resolve_globs_in_forward_order():
    assert sites.resolve(CFG, "resid_post/*") == [f"resid_post/{i}" for i in range(4)]
    assert sites.resolve(CFG, ["*/3", "resid_post/3"]) == [
        "attn_z/3",
        "mlp_in/3",
        "mlp_out/3",
        "resid_post/3",
    ]
    assert sites.resolve(CFG, "*/*") == sites.all_sites(CFG)
    assert len(sites.all_sites(CFG)) == 16
    assert sites.resolve(CFG, "mlp_*/0") == ["mlp_in/0", "mlp_out/0"]
    assert sites.resolve(CFG, ["mlp_out/1", "attn_z/0"]) == ["attn_z/0", "mlp_out/1"]


@pytest.mark.parametrize("pattern", ["resid_post/7", "nothing/*", "resid_post"])
def test_resolve_errors_list_valid_sites(pattern):
    with pytest.raises(ValueError) as error:
        sites.resolve(CFG, [pattern])
    assert repr(pattern) in str(error.value)
    assert "resid_post/0" in str(error.value) and "attn_z/3" in str(error.value)


def test_dim_per_kind():
    assert sites.dim(CFG, "attn_z/0") == 64  # 4 heads * 16
    wide_heads = model.presets.tiny(head_dim=32)
    assert sites.dim(wide_heads, "attn_z/2") == 128
    assert sites.dim(wide_heads, "mlp_out/2") == sites.dim(wide_heads, "resid_post/0") == 64
    assert sites.dim(wide_heads, "mlp_in/3") == 64
    with pytest.raises(ValueError, match="has 4 layers"):
        sites.dim(CFG, "attn_z/4")
