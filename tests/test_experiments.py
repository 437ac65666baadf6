"""Every experiment config loads (default and runlocal) and --mode=plan runs on it.

Also the shared recipe data of experiments/common.py, and loading from any current directory.
"""

import glob
import os
import sys

import pytest

from gemmascope import study
from gemmascope.study import jobs, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_STUDIES = ("train_tiny_lm.py", "common.py")  # a script and the shared recipe data
STUDIES = sorted(
    p
    for p in glob.glob(os.path.join(REPO, "experiments", "*.py"))
    if os.path.basename(p) not in NOT_STUDIES
)


def test_studies_found():
    names = {os.path.basename(p) for p in STUDIES}
    assert {"gemma2_2b.py", "gemma2_9b.py", "gemma2_27b.py", "tiny_demo.py"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_config_loads_and_plans(path, arg, capsys):
    module, config = study.load_config_file(f"{path}:{arg}" if arg else path)
    assert module.__doc__ and "python -m gemmascope --config=" in module.__doc__
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


def _common():
    """experiments/common.py as the Gemma studies import it."""
    module, _ = study.load_config_file(os.path.join(REPO, "experiments", "gemma2_2b.py"))
    return module.common


def test_token_budget_rule():
    common = _common()
    # Gemma Scope: 4B tokens for 16k-wide SAEs, 16B for 1M-wide, 8B for every other width.
    assert [common.gemma_scope_token_budget(2**p) for p in (14, 15, 17, 19, 20)] == [
        4e9, 8e9, 8e9, 8e9, 16e9,
    ]  # fmt: skip
    assert common.gemma_scope_group(["*/*"], [2**17]).total_tokens == 8e9
    with pytest.raises(ValueError, match="different Gemma Scope budgets"):
        common.gemma_scope_group(["*/*"], [2**14, 2**16])


def test_loads_from_another_directory(tmp_path, monkeypatch):
    # `import common` inside the experiment file must not depend on the current directory, and
    # loading leaves neither the folder on sys.path nor its modules in sys.modules.
    monkeypatch.chdir(tmp_path)
    path = os.path.join(REPO, "experiments", "gemma2_2b.py")
    sys_path = list(sys.path)
    module, config = study.load_config_file(f"{path}:runlocal")
    assert config.name == "gemma2_2b_pt_runlocal" and config.model.path == "embedded"
    assert module.common.__file__ == os.path.join(REPO, "experiments", "common.py")
    assert sys.path == sys_path and "common" not in sys.modules


def test_sibling_modules_of_two_folders_stay_apart(tmp_path):
    # Two config folders, each with its own common.py: each config gets its own sibling.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "common.py").write_text("NAME = 'mine'\n")
    (mine / "study.py").write_text(
        "import common\n\n\ndef get_config(arg=None):\n    return dict(name=common.NAME)\n"
    )
    ours = os.path.join(REPO, "experiments", "gemma2_27b.py")
    assert hasattr(study.load_config_file(ours)[0].common, "GEMMA_SCOPE_SWEEPS")
    assert study.load_config_file(str(mine / "study.py"))[1] == {"name": "mine"}
    assert hasattr(study.load_config_file(ours)[0].common, "GEMMA_SCOPE_SWEEPS")
