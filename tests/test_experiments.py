"""Every experiment config loads (default and runlocal) and --mode=plan runs on it.

Also the shared recipe data of experiments/common.py, loading from any current directory, and the
Gemma studies' runlocal variants training a real job through the train stage, preempted and resumed.
"""

import glob
import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest

from gemmascope import sae, study
from gemmascope.study import jobs, stages
from gemmascope.study.validate import stages_of

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


@pytest.mark.parametrize("path", STUDIES, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_inspect_is_in_mode_all_only_for_small_studies_and_runs_on_evals_mesh(path, arg):
    _, config = study.load_config_file(f"{path}:{arg}" if arg else path)
    small = arg == "runlocal" or os.path.basename(path) == "tiny_demo.py"
    stages_of_all = stages_of("all", str(config.source), config.inspect.in_all)
    assert ("inspect" in stages_of_all) == small
    # The inspect stage runs the LM as the eval stage does (whose memory --mode=plan checks):
    # a 9B or 27B study must not inspect with the whole model on one device.
    assert config.inspect.model_parallel == config.eval.model_parallel


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


GEMMA_STUDIES = ("gemma2_2b.py", "gemma2_9b.py", "gemma2_27b.py")
LOCAL_JOB = "resid_post-L0-w64-jumprelu"


def _runlocal(name):
    """A Gemma study's runlocal config, on 8 sequences of the corpus (a cache of seconds)."""
    _, config = study.load_config_file(os.path.join(REPO, "experiments", f"{name}:runlocal"))
    with config.unlocked():
        config.data.max_sequences = 8
    return config


@pytest.fixture(scope="module")
def runlocal_cache(tmp_path_factory):
    """The runlocal cache, built once: the three studies' runlocal configs cache the same sites."""
    from gemmascope import activations

    workdir = tmp_path_factory.mktemp("runlocal_cache")
    activations.build_cache(_runlocal(GEMMA_STUDIES[0]), str(workdir))
    return workdir / "activations"


class _SigtermAfter:
    """A source that sends this process SIGTERM once `n` batches were drawn (a preemption)."""

    def __init__(self, source, n):
        self._source, self._n = source, n
        self.d_in, self.n_tokens, self.norm_scale = source.d_in, source.n_tokens, source.norm_scale
        self.hold_out, self.state, self.restore = source.hold_out, source.state, source.restore

    def iter_batches(self, batch_size, sharding):
        for i, batch in enumerate(self._source.iter_batches(batch_size, sharding)):
            if i == self._n:
                signal.raise_signal(signal.SIGTERM)
            yield batch


@pytest.mark.slow
@pytest.mark.parametrize("name", GEMMA_STUDIES)
def test_runlocal_trains_a_job_is_preempted_and_resumes(
    name, runlocal_cache, tmp_path, monkeypatch, capsys
):
    # The study's own job (its architecture, sweep and SAE overrides) through the train stage:
    # uninterrupted, and preempted by SIGTERM after 5 batches then rerun, which must end equal.
    from gemmascope import activations

    config = _runlocal(name)
    for run in ("uninterrupted", "preempted"):
        shutil.copytree(runlocal_cache, tmp_path / run / "activations")
    stages.run(config, str(tmp_path / "uninterrupted"), "train", [LOCAL_JOB])

    open_source = activations.open_source
    monkeypatch.setattr(
        activations, "open_source", lambda *a, **kw: _SigtermAfter(open_source(*a, **kw), 5)
    )
    stages.run(config, str(tmp_path / "preempted"), "train", [LOCAL_JOB])
    assert f"preempted in {LOCAL_JOB}" in capsys.readouterr().out
    run_dir = tmp_path / "preempted" / "runs" / LOCAL_JOB
    assert not (run_dir / "final_params.npz").exists()
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()] == ["6"]
    monkeypatch.undo()
    stages.run(config, str(tmp_path / "preempted"), "train", [LOCAL_JOB])

    expected = np.load(tmp_path / "uninterrupted" / "runs" / LOCAL_JOB / "final_params.npz")
    resumed = np.load(run_dir / "final_params.npz")
    assert sorted(resumed.files) == sorted(expected.files)
    for key in expected.files:  # bitwise: the same compiled step on the same device
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)
    job = json.loads((run_dir / "job.json").read_text())
    assert job["steps"] == 16 and len(job["members"]) == 3


def test_tiny_demo_transcoders_adds_every_layers_transcoders(capsys):
    # make demo-transcoders: the demo's 72 jobs plus, at each of 4 layers, plain and affine
    # transcoders x 2 widths x {jumprelu, topk}; its launcher tasks cover every job.
    module, config = study.load_config_file("experiments/tiny_demo.py:transcoders")
    all_jobs = jobs.expand(config, study.model_config(config.model))
    transcoders = [job for job in all_jobs if job.get("target_site")]
    assert len(all_jobs) == 72 + 32 and len(transcoders) == 32
    assert {(job.site, job.target_site) for job in transcoders} == {
        (f"mlp_in/{layer}", f"mlp_out/{layer}") for layer in range(4)
    }
    assert not any(job.site.startswith("mlp_in") for job in all_jobs if job not in transcoders)
    added = []
    module.sweep(lambda **kw: added.append(kw), "transcoders")
    assert jobs.select(all_jobs, [a["jobs"] for a in added]) == all_jobs
    stages.run(config, None, "plan")
    assert "mlp_in          4 sites" in capsys.readouterr().out


def test_tiny_demo_epochs_scales_tokens_and_the_recipes_warmups():
    # tiny_demo.py:epochs=4 (docs/quickstart.md#demo-science): four passes over the cache, and
    # the short-run warmups of a four-times-longer run.
    _, one = study.load_config_file("experiments/tiny_demo.py")
    _, four = study.load_config_file("experiments/tiny_demo.py:epochs=4")
    assert four.jobs.groups.all_sites.total_tokens == 4 * one.jobs.groups.all_sites.total_tokens
    steps = four.jobs.groups.all_sites.total_tokens // four.train.batch_size
    expected = sae.recipes.short_run("jumprelu", steps, sparsity_form="target_l0")
    assert four.jobs.archs.jumprelu.sae.sparsity_warmup_steps == expected["sparsity_warmup_steps"]
    assert four.jobs.archs.topk.sae.lr_warmup_steps > one.jobs.archs.topk.sae.lr_warmup_steps
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        study.load_config_file("experiments/tiny_demo.py:epochs=0")


@pytest.mark.parametrize("path", ["gemma3_270m.py", "gemma3_27b.py"])
def test_gemma3_it_fine_tunes_the_pt_study_and_plans(path, capsys):
    """variant=it,pt_workdir=...: Gemma Scope 2's IT SAEs, fine-tuned from the PT study's."""
    spec = os.path.join(REPO, "experiments", path)
    _, pt = study.load_config_file(spec)
    _, it = study.load_config_file(f"{spec}:variant=it,pt_workdir=gs://b/pt")
    assert it.data.chat_wrap and it.jobs.init_from == "gs://b/pt"
    pt_jobs = {job.name: job for job in jobs.expand(pt, study.model_config(pt.model))}
    it_jobs = jobs.expand(it, study.model_config(it.model))
    assert {job.name for job in it_jobs} == set(pt_jobs)
    for job in it_jobs[:5]:
        assert job.init_from == f"gs://b/pt/runs/{job.name}"
        assert job.total_tokens == pytest.approx(0.1 * pt_jobs[job.name].total_tokens, abs=1)
    stages.run(it, None, "plan")
    assert f"Plan for study {it.name!r}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="give variant=it too"):
        study.load_config_file(f"{spec}:pt_workdir=gs://b/pt")


def test_tiny_demo_finetune_from_wraps_the_corpus_and_plans(capsys):
    _, config = study.load_config_file(
        os.path.join(REPO, "experiments/tiny_demo.py:finetune_from=/w/demo,runlocal")
    )
    assert config.data.chat_wrap and config.jobs.init_from == "/w/demo"
    job = jobs.expand(config, study.model_config(config.model))[0]
    assert job.init_from == f"/w/demo/runs/{job.name}" and job.sae.sparsity_warmup_steps == 0
    stages.run(config, None, "plan")
    assert "tiny_demo_runlocal_it" in capsys.readouterr().out


def test_the_270m_study_takes_the_sparsity_form_and_the_frequency_penalty():
    """gemma3_270m_local.py's arguments reach the JumpReLU config they name.

    The recipe's gradient clip follows the form (docs/sae.md#clip-per-form).
    """
    _, default = study.load_config_file("experiments/gemma3_270m_local.py")
    jumprelu = default.jobs.archs.jumprelu.sae
    assert jumprelu.sparsity_form == "target_l0" and jumprelu.max_grad_norm == 1.0
    assert jumprelu.freq_penalty_scale == 0.0
    arg = "smoke,sparsity=quadratic,freq_penalty=0.05,freq_form=quadratic"
    _, gs2 = study.load_config_file(f"experiments/gemma3_270m_local.py:{arg}")
    jumprelu = gs2.jobs.archs.jumprelu.sae
    assert jumprelu.sparsity_form == "quadratic" and jumprelu.max_grad_norm == 0.0
    assert jumprelu.sparsity_coeff == 0.1 and jumprelu.freq_penalty_scale == 0.05
    assert jumprelu.freq_penalty_form == "quadratic"
    with pytest.raises(ValueError, match=r"sparsity='l1': valid forms are \('target_l0', 'quadr"):
        study.load_config_file("experiments/gemma3_270m_local.py:sparsity=l1")
