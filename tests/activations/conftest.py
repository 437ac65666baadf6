"""Fixtures for activation tests (see activation_setup.py)."""

import pytest
from activation_setup import build_model_folder


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return build_model_folder(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def reference_cache(model_path, tmp_path_factory):
    """(config, workdir) of an uninterrupted single-process build of the test study config."""
    from activation_setup import study_config

    from gemmascope import activations

    config = study_config(model_path)
    workdir = str(tmp_path_factory.mktemp("reference_cache"))
    activations.build_cache(config, workdir)
    return config, workdir
