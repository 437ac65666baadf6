"""The tiny inspected study shared by the inspect tests (built once per test session)."""

import inspect_setup
import pytest

from gemmascope import export
from gemmascope import inspect as gs_inspect


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """(model config, study config, workdir, index page, tokens, scored positions, SAE folders)."""
    model_cfg, config, workdir = inspect_setup.build_study(tmp_path_factory.mktemp("inspect"))
    index = gs_inspect.inspect(config, workdir)
    tokens, positions = inspect_setup.eval_tokens(config)
    folders = [folder for folder, _ in export.list_saes(workdir)]
    return model_cfg, config, workdir, index, tokens, positions, folders
