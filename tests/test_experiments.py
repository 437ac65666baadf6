"""Every experiment config loads (default and runlocal) and --mode=plan runs on it."""

import glob
import os

import pytest

from gemmascope import jobs, stages, study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = sorted(
    p for p in glob.glob(os.path.join(REPO, "experiments", "*.py")) if "train_tiny_lm" not in p
)


def test_studies_found():
    names = {os.path.basename(p) for p in STUDIES}
    assert {"gemma2_2b.py", "gemma2_9b.py", "gemma2_27b.py", "tiny_demo.py"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_config_loads_and_plans(path, arg, capsys):
    module, config = study.load_config_file(f"{path}:{arg}" if arg else path)
    assert module.__doc__ and "python -m gemmascope.main" in module.__doc__
    assert config.name and config.jobs.groups and config.jobs.archs
    stages.run(config, None, "plan")
    out = capsys.readouterr().out
    assert f"Plan for study {config.name!r}" in out and "Activation cache" in out
    # The sweep emits launcher tasks whose selectors all match jobs.
    added = []
    module.sweep(lambda **kw: added.append(kw), arg or None)
    all_jobs = jobs.expand(config, study.model_config(config.model))
    assert added and jobs.select(all_jobs, [a["jobs"] for a in added]) == all_jobs


def test_gemma_arch_options():
    _, config = study.load_config_file(
        os.path.join(REPO, "experiments/gemma2_9b.py:arch=gated+topk")
    )
    assert sorted(config.jobs.archs) == ["gated", "topk"]
    _, config = study.load_config_file(os.path.join(REPO, "experiments/gemma2_9b.py:variant=it"))
    assert len(jobs.expand(config, study.model_config(config.model))) == 6
    with pytest.raises(ValueError, match="Unknown architecture 'jumprelux'; valid: jumprelu"):
        study.load_config_file(os.path.join(REPO, "experiments/gemma2_9b.py:arch=jumprelux"))
