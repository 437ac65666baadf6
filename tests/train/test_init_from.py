"""A job started from another job's final params (`job_cfg.init_from`: IT fine-tuning of PT SAEs).

Oracles: the PT job's final_params.npz read with numpy (the fine-tuning job must start from
exactly those arrays), and hand-made mismatches (each must be refused, naming the field).
"""

import json

import numpy as np
import pytest
from job_runner import tiny_activations, tiny_job

from gemmascope import activations, train

# A free decoder: a unit-norm one is renormalised after every update, which may move a row by an
# ulp even when the update is zero, and the test below wants bit equality.
FREE_DECODER = dict(unit_norm_decoder=False)


def _source(seed=1):
    return activations.ArraySource(tiny_activations(), seed=seed)


def _load_npz(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def pt_run(tmp_path_factory):
    """The 'PT' job: the tiny job, trained from scratch."""
    job = tiny_job(name="pt")  # on the (2, 4) mesh of 8 CPU devices: latents sharded
    job.sae.update(FREE_DECODER)
    return train.train_sweep(job, _source(), tmp_path_factory.mktemp("pt"))


def _fine_tune_job(pt_run, **changes):
    job = tiny_job(name="it", total_steps=changes.pop("total_steps", 4))
    job.update(init_from=str(pt_run.run_dir))
    job.sae.update(FREE_DECODER)
    job.sae.update(changes.pop("sae", {}))
    job.update(changes)
    return job


def test_starts_from_exactly_the_pt_params_then_trains(pt_run, tmp_path):
    pt_params = _load_npz(pt_run.run_dir / "final_params.npz")
    # lr 1e-30: every Adam update (~lr per coordinate) is far below float32's resolution of the
    # trained values, so after one step the params are still the ones the job started from.
    still = _fine_tune_job(pt_run, total_steps=1, sae=dict(lr=1e-30))
    started = train.train_sweep(still, _source(seed=7), tmp_path / "still")
    assert set(started.params) == set(pt_params)
    for name, value in pt_params.items():
        np.testing.assert_array_equal(started.params[name], value, err_msg=name)
    # With the recipe's lr the same job trains away from them, with a fresh step counter.
    trained = train.train_sweep(_fine_tune_job(pt_run), _source(seed=7), tmp_path / "trained")
    assert trained.steps == 4
    assert not np.array_equal(trained.params["W_enc"], pt_params["W_enc"])
    assert np.all(np.isfinite(trained.params["W_enc"]))
    job = json.loads((trained.run_dir / "job.json").read_text())
    assert job["init_from"] == str(pt_run.run_dir) and job["steps"] == 4


def test_a_fresh_init_differs(pt_run, tmp_path):
    """The oracle above can fail: without init_from one step does not land on the PT params."""
    job = _fine_tune_job(pt_run, total_steps=1, sae=dict(lr=1e-30), init_from="")
    fresh = train.train_sweep(job, _source(seed=7), tmp_path)
    pt_params = _load_npz(pt_run.run_dir / "final_params.npz")
    assert not np.array_equal(fresh.params["W_enc"], pt_params["W_enc"])


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(width=64), "its width is 32, this job's is 64"),
        (dict(sweep_values=[1e-4]), "its sweep"),
        (dict(site="mlp_out/0"), "its site is 'resid_post/0'"),
        (dict(sae=dict(threshold_param="log")), "sae.threshold_param"),
    ],
)
def test_a_mismatch_is_refused_naming_the_field(pt_run, tmp_path, changes, message):
    with pytest.raises(ValueError, match="cannot start from") as error:
        train.train_sweep(_fine_tune_job(pt_run, **changes), _source(), tmp_path)
    assert message in str(error.value)


def test_a_folder_without_a_finished_job_is_refused(pt_run, tmp_path):
    job = _fine_tune_job(pt_run, init_from=str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="holds no finished job"):
        train.train_sweep(job, _source(), tmp_path / "work")
