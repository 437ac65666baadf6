"""Launchers: the commands they generate (dry runs), including quoting of odd paths."""

import shlex
import subprocess
import sys

import pytest

from launch import local, slurm, tasks, tpu_vm

ODD_WORKDIR = '/tmp/my work/it\'s "$HOME" `x`'

# A stand-in experiment file: the launchers only need get_config and sweep.
EXPERIMENT = """
import ml_collections

def get_config(arg=None):
    return ml_collections.ConfigDict(dict(name="fake"))

def sweep(add, arg=None):
    add(jobs="resid_post-*-jumprelu")
    overrides = {"train.batch_size": 128, "jobs.archs.topk.sweep_values": (8, 16)}
    add(jobs="mlp_out-L1-w64-gated,attn_z-*", **overrides)
"""


@pytest.fixture
def config_spec(tmp_path):
    folder = tmp_path / "odd dir $x"
    folder.mkdir()
    path = folder / "study.py"
    path.write_text(EXPERIMENT)
    return f"{path}:runlocal"


def test_load_tasks_reads_sweep(config_spec):
    study_tasks = tasks.load_tasks(config_spec)
    assert [t.jobs for t in study_tasks] == [
        "resid_post-*-jumprelu",
        "mlp_out-L1-w64-gated,attn_z-*",
    ]
    assert study_tasks[1].overrides == (
        ("jobs.archs.topk.sweep_values", "(8,16)"),
        ("train.batch_size", "128"),
    )


def test_local_dry_run_round_trips_quoting(config_spec, capsys):
    assert local.main(["--config", config_spec, "--workdir", ODD_WORKDIR, "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    argvs = [shlex.split(line) for line in lines]
    modes = [next(a for a in argv if a.startswith("--mode=")) for argv in argvs]
    assert modes == ["--mode=cache", "--mode=train", "--mode=export"] * 1 + [
        "--mode=train",
        "--mode=export",
        "--mode=eval",
    ]
    for argv in argvs:
        assert argv[:3] == [sys.executable, "-m", "gemmascope"]
        assert f"--workdir={ODD_WORKDIR}" in argv
        assert f"--config={config_spec}" in argv
    assert "--jobs=mlp_out-L1-w64-gated,attn_z-*" in argvs[3]
    assert "--config.train.batch_size=128" in argvs[3]
    assert "--config.jobs.archs.topk.sweep_values=(8,16)" in argvs[3]


def test_local_multiprocess_dry_run(config_spec, capsys):
    local.main(["--config", config_spec, "--workdir", "/w", "--num_processes", "2", "--dry_run"])
    argvs = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(argvs) == 2 * 6
    assert argvs[0][-3:] == [
        "--coordinator_address=localhost:12345",
        "--num_processes=2",
        "--process_id=0",
    ]
    assert argvs[1][-1] == "--process_id=1"


def test_local_runs_commands_and_stops_on_failure(tmp_path):
    ok = [sys.executable, "-c", "open(r'%s', 'a').write('x')" % (tmp_path / "ran")]
    assert local.run_step([ok, ok], 2, None) == 0
    assert (tmp_path / "ran").read_text() == "xxxx"  # 2 commands x 2 processes
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    assert local.run_step([fail, ok], 1, None) == 3
    assert (tmp_path / "ran").read_text() == "xxxx"  # the step stopped at the failure


def test_slurm_scripts(config_spec, tmp_path):
    args = slurm.main.__globals__["argparse"].Namespace(
        config=config_spec, workdir=ODD_WORKDIR, out_dir=str(tmp_path / "out dir"), repo="/src/gs",
        python="python", name="demo", nodes=2, gpus_per_node=8, cpus_per_task=0, partition="gpu",
        time="2:00:00", max_parallel=1, setup="source /venv/bin/activate",
    )  # fmt: skip
    scripts = slurm.build_scripts(args)
    for name, content in scripts.items():
        script = tmp_path / name
        script.write_text(content)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, name
    train = scripts["train.sbatch"]
    assert "#SBATCH --array=0-1%1" in train and "#SBATCH --nodes=2" in train
    line = next(l for l in train.splitlines() if l.strip().startswith("1)"))
    train_cmd, export_cmd = line.strip()[3:].removesuffix(" ;;").split(" && ")
    train_argv = shlex.split(train_cmd)
    assert train_argv[0] == "srun" and train_argv[-1] == "--multihost"
    assert f"--workdir={ODD_WORKDIR}" in train_argv and "--mode=train" in train_argv
    assert "--jobs=mlp_out-L1-w64-gated,attn_z-*" in train_argv
    assert shlex.split(export_cmd)[0] == "python" and "--mode=export" in shlex.split(export_cmd)
    assert "afterok:$cache" in scripts["submit.sh"]


def test_slurm_dry_run_prints_scripts(config_spec, tmp_path, capsys):
    out_dir = tmp_path / "scripts"
    code = slurm.main(
        ["--config", config_spec, "--workdir", "/w", "--out_dir", str(out_dir), "--dry_run"]
    )
    out = capsys.readouterr().out
    assert code == 0 and 'case "$SLURM_ARRAY_TASK_ID" in' in out and "srun" not in out
    assert not out_dir.exists()  # a dry run writes nothing


def test_tpu_vm_dry_run_double_quoting(config_spec, capsys):
    code = tpu_vm.main(
        ["--config", config_spec, "--workdir", ODD_WORKDIR, "--name", "v4 vm", "--zone", "z1",
         "--queued", "--spot", "--setup", "pip install -e ~/gemmascope", "--dry_run"]
    )  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    create = shlex.split(lines[1].split(": ", 1)[1])
    assert create[3:6] == ["queued-resources", "create", "v4 vm-qr"] and "--node-id=v4 vm" in create
    ssh = [shlex.split(line) for line in lines[2:]]
    assert all(argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] for argv in ssh)
    assert ssh[0][-1] == "--command=pip install -e ~/gemmascope"
    remote = ssh[2][-1].removeprefix("--command=")
    cd, _, main_cmd = remote.partition(" && ")
    assert cd == "cd ~/gemmascope"
    remote_argv = shlex.split(main_cmd)
    assert f"--workdir={ODD_WORKDIR}" in remote_argv and remote_argv[-1] == "--multihost"
    assert "--mode=train" in remote_argv and "--jobs=resid_post-*-jumprelu" in remote_argv
