"""Fixtures for the model tests: the HF oracle models, built once per test session."""

import pytest
from model_oracle import HFCase, build_cases


@pytest.fixture(scope="session")
def hf_cases(tmp_path_factory) -> dict[str, HFCase]:
    """The oracle models (torch + saved folders + reference values), keyed by case name."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_cases(tmp_path_factory.mktemp("hf_models"))
