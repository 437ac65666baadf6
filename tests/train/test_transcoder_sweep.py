"""Transcoders through the unchanged trainer: a stacked sweep on a (2, 4) mesh, preemption, resume.

Oracles: an uninterrupted run (a run stopped by SIGTERM and rerun must end bitwise equal to it, on
CPU), the shapes and shardings the contract promises, and numpy for what the held-out metrics
measure (the FVU of the target, not of the input).
"""

import json
import os
import signal

import numpy as np
import pytest
from job_runner import tiny_job

import gemmascope.mesh
from gemmascope import activations, sae, train

D_IN, D_OUT, N = 16, 12, 2048


def _pairs(seed=0):
    """x: sparse codes of a random dictionary (16 wide); y: a fixed nonlinear map of x (12 wide)."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(48, D_IN))
    codes = rng.exponential(size=(N, 48)) * (rng.random((N, 48)) < 0.1)
    x = codes @ atoms
    y = np.tanh(x @ rng.normal(size=(D_IN, D_OUT)) / 4) + 0.1 * x[:, :D_OUT]
    return x.astype(np.float32), y.astype(np.float32)


def _source():
    x, y = _pairs()
    return activations.PairedSource(
        activations.ArraySource(x, seed=1), activations.ArraySource(y, seed=1)
    )


def _job(name="tc", skip=True):
    cfg = tiny_job(name)
    cfg.site, cfg.target_site = "mlp_in/0", "mlp_out/0"
    cfg.sae.update(pre_encoder_bias=False, skip_connection=skip)
    return cfg


class _SigtermAfter:
    """A paired source that sends this process SIGTERM after `n` batches (a preemption notice)."""

    def __init__(self, source, n):
        self._source, self._n = source, n
        for name in ("d_in", "d_out", "n_tokens", "norm_scale", "target_norm_scale"):
            setattr(self, name, getattr(source, name))

    def hold_out(self, n_tokens):
        return self._source.hold_out(n_tokens)

    def state(self):
        return self._source.state()

    def restore(self, state):
        self._source.restore(state)

    def iter_batches(self, batch_size, sharding):
        for i, batch in enumerate(self._source.iter_batches(batch_size, sharding)):
            if i == self._n:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return train.train_sweep(_job(), _source(), tmp_path_factory.mktemp("tc_reference"))


def test_stacked_transcoder_sweep_on_a_2x4_mesh(reference):
    params = reference.params
    assert params["W_enc"].shape == (2, D_IN, 32)
    assert params["W_dec"].shape == (2, 32, D_OUT) and params["b_dec"].shape == (2, D_OUT)
    assert params["W_skip"].shape == (2, D_IN, D_OUT)
    assert np.abs(params["W_skip"]).max() > 1e-3  # the skip term trained (it starts at 0)
    job = json.loads((reference.run_dir / "job.json").read_text())
    assert job["d_in"] == D_IN and job["d_out"] == D_OUT and job["target_site"] == "mlp_out/0"
    x, y = _pairs()
    assert job["norm_scale"] == pytest.approx(activations.estimate_norm_scale(x), rel=1e-6)
    assert job["target_norm_scale"] == pytest.approx(activations.estimate_norm_scale(y), rel=1e-6)
    assert job["sae"]["d_out"] == D_OUT
    # The held-out FVU is the target's: recompute it in numpy from member 0's params.
    cfg = sae.get("jumprelu").default_config()
    cfg.update(job["sae"])
    cfg.sparsity_coeff = job["members"][0]["sweep_value"]
    tf = sae.to_jumprelu(reference.member_params(0), "jumprelu", cfg)
    xs, ys = x[-64:] / job["norm_scale"], y[-64:] / job["target_norm_scale"]
    pre = xs @ np.asarray(tf.W_enc, np.float64) + np.asarray(tf.b_enc, np.float64)
    f = np.where(pre > np.asarray(tf.threshold), pre, 0.0)
    y_hat = f @ np.asarray(tf.W_dec) + np.asarray(tf.b_dec) + xs @ np.asarray(tf.W_skip)
    fvu = np.sum((ys - y_hat) ** 2) / np.sum((ys - ys.mean(0)) ** 2)
    logged = [h for h in reference.history if "heldout/fvu" in h][-1]["heldout/fvu"][0]
    assert logged == pytest.approx(fvu, rel=1e-3)
    assert fvu < 0.9  # it learned something of the map


def test_latent_axis_of_a_transcoder_is_sharded(tmp_path):
    from gemmascope.train import step as step_lib

    cfg = _job("shard")
    arch = train.config.get_architecture("jumprelu")
    sae_cfg = train.loop.resolve_sae_config(cfg, arch, d_out=D_OUT)
    shape = step_lib.JobShape(
        arch="jumprelu",
        sae_cfg=sae_cfg,
        d_in=D_IN,
        width=32,
        n_members=2,
        batch_size=64,
        dead_window=4,
        sweep_dtype="float32",
        mesh=gemmascope.mesh.make_mesh(cfg.mesh),
        members_per_pass=1,  # the trainer's choice on CPU: the reference's compiled functions
    )
    fns = step_lib.compiled_functions(shape)
    state = fns.init(np.arange(2, dtype=np.int32), np.asarray([1e-3, 2e-3], np.float32))
    assert {s.data.shape for s in state["params"]["W_dec"].addressable_shards} == {(2, 8, D_OUT)}
    assert {s.data.shape for s in state["params"]["W_skip"].addressable_shards} == {
        (2, D_IN, D_OUT)
    }


def test_sigterm_then_rerun_equals_uninterrupted(reference, tmp_path):
    first = train.train_sweep(_job(), _SigtermAfter(_source(), 10), tmp_path)
    assert first.preempted and 10 <= first.steps < 24
    second = train.train_sweep(_job(), _source(), tmp_path)
    assert not second.preempted and second.steps == 24
    for name, value in reference.params.items():
        np.testing.assert_array_equal(second.params[name], value, err_msg=name)  # bitwise on CPU


def test_transcoder_jobs_need_a_paired_source_and_a_transcoder_architecture(tmp_path):
    x, _ = _pairs()
    with pytest.raises(ValueError, match="is a transcoder .* give it an activations.PairedSource"):
        train.train_sweep(_job("single"), activations.ArraySource(x), tmp_path)
    gated = train.default_config("gated")
    gated.update({k: v for k, v in _job().items() if k not in ("arch", "sae", "sweep_values")})
    gated.sae.pre_encoder_bias = False
    with pytest.raises(ValueError, match="'gated' does not train transcoders"):
        train.train_sweep(gated, _source(), tmp_path)
    with pytest.raises(ValueError, match="pre_encoder_bias' is True but this is a transcoder"):
        cfg = _job("bias")
        cfg.sae.pre_encoder_bias = True
        train.train_sweep(cfg, _source(), tmp_path)
