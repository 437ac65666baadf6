"""Bad input through the command line: one paragraph naming the culprit, nothing written.

Each case runs the command line (`gemmascope.study.main.cli`, the function `python -m gemmascope`
runs) in this interpreter, all in one shared workdir, and checks: a non-zero exit status, no
traceback, the culprit named in a message that starts with "gemmascope: error:", and no stage
output in the workdir (no activations/, runs/, saes/, eval/; no lock left behind; no config.json
unless the config was valid). After every case a correct run in that same workdir succeeds. Two
subprocesses prove the real exit status of `python -m gemmascope` and its --help from another
folder (tests/test_main.py runs more).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gemmascope import assets
from gemmascope.study import errors, main, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=experiments/tiny_demo.py:runlocal"
JOB = "resid_post-L0-w64-jumprelu"
STAGE_OUTPUTS = ("activations", "runs", "saes", "eval")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Damaged or misplaced input files: a released npz cut short, two broken model folders."""
    root = tmp_path_factory.mktemp("inputs")
    d = 128  # the tiny model's d_model
    whole = root / "layer_0" / "width_256" / "average_l0_9" / "params.npz"
    whole.parent.mkdir(parents=True)
    eye = np.eye(d, dtype=np.float32)
    np.savez(
        whole, W_enc=np.concatenate([eye, -eye], 1), W_dec=np.concatenate([eye, -eye], 0),
        b_enc=np.zeros(2 * d, np.float32), b_dec=np.zeros(d, np.float32),
        threshold=np.zeros(2 * d, np.float32),
    )  # fmt: skip
    cut = root / "cut.npz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    bad_json = root / "model_bad_json"
    shutil.copytree(assets.TINY_MODEL_DIR, bad_json)
    (bad_json / "config.json").write_text('{"model_type": "gemma2", "hidden_size": 1')
    cut_weights = root / "model_cut_weights"
    shutil.copytree(assets.TINY_MODEL_DIR, cut_weights)
    weights = cut_weights / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 1000])
    (root / "corpus.csv").write_text("a,b\n1,2\n")
    return root


def run(capsys, *flags):
    """Runs the command line in this process; returns (status, stdout, stderr)."""
    status = main.cli(["gemmascope", *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def cases(workdir, inputs):
    """(flags, texts the message must contain, whether config.json may be written)."""
    w = f"--workdir={workdir}"
    bad_model = f"--config.model.path={inputs / 'model_bad_json'}"
    return [
        # Validation: every field before any stage works (plan mode runs the same checks).
        (["--mode=all", w, "--config.train.batch_size=-256"], ["train.batch_size = -256"]),
        (["--mode=plan", "--config.train.batch_size=0"], ["train.batch_size = 0"]),
        (
            ["--mode=plan", "--config.jobs.groups.all_sites.total_tokens=-5"],
            ["jobs.groups.all_sites.total_tokens = -5", "positive number"],
        ),
        (["--mode=plan", "--config.plan.mfu=nan"], ["plan.mfu = nan"]),
        (
            ["--mode=all", w, "--config.jobs.archs.jumprelu.sweep_values=(-1.0, 2.0)"],
            ["jobs.archs.jumprelu", "target_l0 = -1.0 must be > 0"],
        ),
        (
            ["--mode=plan", "--config.jobs.archs.topk.sweep_values=(300, 8)"],
            ["jobs.archs.topk", "k = 300", "[1, 64]"],
        ),
        (["--mode=all", w, "--config.jobs.archs.gated.sae.lr=-1.0"], ["jobs.archs.gated", "'lr'"]),
        (
            ["--mode=cache", w, "--config.data.corpus=/nonexistent/corpus.txt"],
            ["data.corpus = '/nonexistent/corpus.txt'", "does not exist"],
        ),
        (
            ["--mode=cache", w, f"--config.data.corpus={inputs / 'corpus.csv'}"],
            ["data.corpus", "unsupported type '.csv'"],
        ),
        (
            ["--mode=cache", w, "--config.data.corpus=someone/some-dataset"],
            ["data.eval_split = 'tail' needs a local corpus file"],
        ),
        (["--mode=all", w, "--config.data.eval_fraction=0.0"], ["data.eval_fraction = 0"]),
        (["--mode=plan", "--config.data.eval_fraction=1.5"], ["data.eval_fraction", "1.5"]),
        (["--mode=cache", w, "--config.data.seq_len=1"], ["data.seq_len", "got 1"]),
        (["--mode=plan", "--config.sites=('resid_post/9',)"], ["sites = ['resid_post/9']"]),
        (["--mode=all", w, "--config.mesh.model=3"], ["mesh: a (data=-1, model=3) mesh"]),
        (
            ["--mode=train", w, "--config.train.batch_size=100"],
            ["train.batch_size = 100: not divisible by the data axis", "multiple of 8"],
        ),
        (
            [
                "--mode=train", w, "--config.jobs.groups.all_sites.widths=(60,)",
                "--config.mesh.data=1", "--config.mesh.model=8",
            ],
            ["width 60 is not divisible by the model axis"],
        ),  # fmt: skip
        (["--mode=plan", "--config.model.dtype=float16"], ["model.dtype = 'float16'"]),
        (["--mode=cache", w, "--config.cache.dtype=float16"], ["cache.dtype", "float16"]),
        (["--mode=plan", "--config.source=disk"], ["source = 'disk'"]),
        (["--mode=plan", "--config.model.path=/nonexistent/model"], ["model.path", "no such"]),
        (["--mode=cache", w, bad_model], ["model_bad_json/config.json is not valid JSON"]),
        (
            ["--mode=cache", w, f"--config.model.path={inputs / 'model_cut_weights'}"],
            ["model_cut_weights/model.safetensors: truncated"],
        ),
        (["--mode=plan", "--config.model.preset=gemma2_10b"], ["model.preset", "gemma2_10b"]),
        (["--mode=cache", w, "--config.cache.model_parallel=3"], ["cache.model_parallel = 3"]),
        (["--mode=plan", "--config.eval.model_parallel=0"], ["eval.model_parallel", "got 0"]),
        (["--mode=plan", "--config.eval.batch_size=0"], ["eval.batch_size", "got 0"]),
        (["--mode=plan", "--config.plan.accelerator=tpu_v9"], ["plan.accelerator", "tpu_v9"]),
        (["--mode=train", w, "--config.train.keep_checkpoints=0"], ["train.keep_checkpoints"]),
        # Flags.
        (["--mode=plan", "--jobs=nope-*"], ["--jobs 'nope-*' matches no job"]),
        (["--mode=eval", w, f"--jobs={JOB}"], ["--jobs does not apply to --mode=eval"]),
        (["--mode=cache"], ["--workdir is required for --mode=cache"]),
        (["--mode=cache", "--workdir=s3://bucket/study"], ["unsupported URL scheme"]),
        (["--mode=eval", w, "--import_released=no-site"], ["expected PATH@SITE"]),
        (
            ["--mode=eval", w, f"--import_released={inputs}/missing.npz@resid_post/0"],
            ["missing.npz does not exist"],
        ),
        (
            ["--mode=eval", w, f"--import_released={inputs / 'cut.npz'}@resid_post/0"],
            ["cut.npz is not a complete .npz archive"],
        ),
        (
            ["--mode=eval", w, f"--import_released={inputs}/layer_0/x.npz@resid_post/99"],
            ["Unknown site 'resid_post/99'"],
        ),
        (["--mode=plan", "--config.train.batch_sz=3"], ['Did you mean "batch_size"']),
        (["--mode=plan", "--config.train.batch_size=abc"], ["--config.train.batch_size=abc"]),
        (
            ["--mode=plan", "--config.train.block_tokens=100"],
            ["train.block_tokens = 100 does not divide the batch of 256 tokens"],
        ),
        (["--mode=fly"], ["--mode=fly"]),
        (["--mode=plan", "stray"], ["unexpected arguments ['stray']"]),
        # Stage prerequisites name the command to run.
        (["--mode=train", w], ["no complete cache of", "--mode=cache"], True),
        (["--mode=eval", w], ["no SAEs", "--mode=train", "--mode=export"], True),
        (["--mode=export", w], ["none of the 6 selected jobs is trained", "--mode=train"], True),
    ]


def test_bad_inputs_fail_clearly_and_leave_the_workdir_usable(tmp_path, inputs, capsys):
    workdir = tmp_path / "study"
    failures = []
    all_cases = cases(workdir, inputs)
    assert len(all_cases) >= 25
    for case in all_cases:
        flags, culprits = case[0], case[1]
        may_write_config = len(case) > 2
        status, out, err = run(capsys, CONFIG, *flags)
        problems = []
        if status == 0:
            problems.append("exit status 0")
        if "Traceback" in out + err:
            problems.append("a traceback")
        if not err.startswith("gemmascope: error: "):
            problems.append("no one-paragraph error first")
        problems += [f"{text!r} not named" for text in culprits if text not in err]
        written = [name for name in STAGE_OUTPUTS if (workdir / name).exists()]
        if written:
            problems.append(f"wrote {written}")
        if (workdir / "config.json").exists() and not may_write_config:
            problems.append("wrote config.json")
        if list((workdir / "locks").glob("*")) if (workdir / "locks").exists() else []:
            problems.append("left a lock")
        if problems:
            failures.append(f"{flags}: {'; '.join(problems)}\n    stderr: {err.strip()[:600]}")
    assert not failures, "\n".join(failures)

    # The same workdir takes a correct run (with the corrected corpus, model, fields...).
    status, out, err = run(capsys, CONFIG, "--mode=cache", f"--workdir={workdir}", f"--jobs={JOB}")
    assert status == 0, err[-3000:]
    meta = json.loads((workdir / "activations" / "resid_post" / "0" / "meta.json").read_text())
    assert meta["complete"] and meta["n_tokens"] > 0


def test_nan_sweep_value_names_the_architecture():
    # The command line cannot spell a NaN inside a tuple override; a config file can.
    from gemmascope import study

    _, config = study.load_config_file(os.path.join(REPO, "experiments/tiny_demo.py:runlocal"))
    config.unlock()
    config.jobs.archs.gated.sweep_values = (0.1, float("nan"))
    with pytest.raises(study.ConfigError, match=r"jobs.archs.gated.sweep_values = \[0.1, nan\]"):
        study.validate(config, "plan")


def test_help_exits_0_and_lists_the_studies_arguments(capsys):
    with pytest.raises(SystemExit) as stop:
        main.parse_flags(["gemmascope", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "experiments/gemma2_9b.py:model_dir='gemma-2-9b', variant='pt'" in text
    assert "experiments/tiny_demo.py:runlocal=False" in text
    assert "--show_config" in text and "--traceback" in text and "--plan_jobs" in text
    # Every path it names is inside the repository (no site-packages, no absolute paths).
    assert "site-packages" not in text and REPO not in text and "/work/" not in text

    with pytest.raises(SystemExit):
        main.parse_flags(["gemmascope", "--config=experiments/gemma2_2b.py", "--help"])
    text = capsys.readouterr().out
    assert "experiments/gemma2_2b.py:model_dir='gemma-2-2b', arch='jumprelu'" in text
    assert "gemma2_9b" not in text.split("The config arguments of this study")[1]


def test_show_config_lists_every_field_with_overrides(capsys):
    # The backend-chosen knobs (None by default) take a value from the command line too.
    status, out, _ = run(
        capsys,
        CONFIG,
        "--show_config",
        "--config.train.batch_size=128",
        "--config.train.members_per_pass=0",
        "--config.train.block_tokens=64",
    )
    assert status == 0
    shown = json.loads(out)
    assert shown["train"]["batch_size"] == 128 and shown["name"] == "tiny_demo_runlocal"
    assert shown["train"]["members_per_pass"] == 0 and shown["train"]["block_tokens"] == 64
    assert shown["jobs"]["archs"]["topk"]["sweep_values"] == [32, 16, 8]


def test_traceback_flag_and_bugs_keep_their_traceback(capsys, monkeypatch):
    with pytest.raises(errors.ConfigError, match="train.batch_size = 0"):
        main.cli(["g", CONFIG, "--mode=plan", "--config.train.batch_size=0", "--traceback"])

    def bug(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(stages, "run", bug)
    with pytest.raises(AttributeError, match="no attribute 'shape'"):
        main.cli(["gemmascope", CONFIG, "--mode=plan"])
    assert not errors.is_expected(AttributeError("x"))


def test_the_real_command_exits_1_with_one_paragraph(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    commands = {
        "batch": [CONFIG, f"--workdir={tmp_path}", "--mode=all", "--config.train.batch_size=-256"],
        "help": ["--help"],  # from another folder: it still finds and names the studies
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "gemmascope", *argv], cwd=tmp_path if name == "help" else REPO,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for name, argv in commands.items()
    }
    results = {name: (p.communicate(timeout=300), p.returncode) for name, p in procs.items()}
    (out, err), status = results["batch"]
    assert status == 1 and "Traceback" not in err and not list(tmp_path.iterdir())
    assert err.startswith("gemmascope: error: the study config is not valid (1 problem")
    assert "train.batch_size = -256" in err and len(err.strip().splitlines()) <= 5
    (out, err), status = results["help"]
    assert status == 0 and "experiments/tiny_demo.py:runlocal=False" in out
