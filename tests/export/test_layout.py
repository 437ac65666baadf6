"""Folder naming of exported SAEs (the workdir layout of docs/concepts.md)."""

import pytest

from gemmascope.export import layout


@pytest.mark.parametrize(
    "width,label",
    [
        (4096, "4k"),
        (16384, "16k"),
        (32768, "32k"),
        (65536, "65k"),
        (131072, "131k"),
        (262144, "262k"),
        (524288, "524k"),
        (2**20, "1m"),
        (256, "256"),
    ],
)
def test_width_labels_follow_gemma_scope(width, label):
    assert layout.width_label(width) == label


@pytest.mark.parametrize(
    "field,value,tag",
    [
        ("sparsity_coeff", 6e-4, "lambda_6e-04"),
        ("sparsity_coeff", 6.5e-4, "lambda_6.5e-04"),
        ("k", 32, "k_32"),
        ("target_l0", 50.0, "l0_50"),
        ("other", 0.5, "other_5e-01"),
    ],
)
def test_sweep_tags(field, value, tag):
    assert layout.sweep_tag(field, value) == tag


def test_sae_dir_and_bad_names():
    path = layout.sae_dir("/w", "resid_post/12", 16384, "jumprelu", "lambda_6e-04")
    assert path == "/w/saes/resid_post/layer_12/width_16k/jumprelu_lambda_6e-04"
    with pytest.raises(ValueError, match="not a valid folder name"):
        layout.sae_dir("/w", "resid_post/12", 16384, "../evil", "x")
    with pytest.raises(ValueError, match="must look like '<kind>/<layer>'"):
        layout.sae_dir("/w", "resid_post", 16384, "jumprelu", "x")
    with pytest.raises(ValueError, match="positive integer"):
        layout.width_label(0)
