"""Unit tests of the job config, the token->step budget and the sweep state's logical axes."""

import pytest

import gemmascope.mesh
from gemmascope import train
from gemmascope.train import config, sharding


def test_default_config_documents_gemma_scope_defaults():
    cfg = train.default_config("jumprelu")
    assert cfg.batch_size == 4096
    assert cfg.sae.lr == 7e-5
    assert cfg.sweep_values == [cfg.sae.sparsity_coeff]
    assert cfg.mesh == [("data", -1), ("model", 1)]


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown SAE architecture 'nope'.*jumprelu"):
        train.default_config("nope")


def test_budget_rounds_tokens_up_to_whole_steps():
    cfg = train.default_config()
    cfg.update(batch_size=100, total_tokens=1001, log_every_tokens=250, ckpt_every_tokens=100)
    budget = train.resolve_budget(cfg)
    assert (budget.total_steps, budget.log_every, budget.ckpt_every) == (11, 3, 1)
    cfg.total_tokens = 0
    with pytest.raises(ValueError, match="total_tokens must be a positive"):
        train.resolve_budget(cfg)


def test_itstime_fires_on_multiples_and_at_the_end():
    assert [s for s in range(1, 11) if train.itstime(s, 4, 10)] == [4, 8, 10]


def test_members_are_values_times_seeds_values_major():
    cfg = train.default_config()
    cfg.update(sweep_values=[1.0, 2.0], seeds=[0, 7])
    assert train.sweep_members(cfg) == [(1.0, 0), (1.0, 7), (2.0, 0), (2.0, 7)]
    cfg.sweep_values = []
    with pytest.raises(ValueError, match="sweep_values is empty"):
        train.sweep_members(cfg)


@pytest.mark.parametrize(
    "name, shape, axes",
    [
        ("W_enc", (3, 8, 8), ("sweep", "d_in", "d_sae")),  # d_in == width: the name decides
        ("W_dec", (3, 8, 8), ("sweep", "d_sae", "d_in")),
        ("b_dec", (3, 8), ("sweep", "d_in")),
        ("tokens_since_fired", (3, 32), ("sweep", "d_sae")),  # unknown name: by shape
        ("running_threshold", (3,), ("sweep",)),
        (None, (), ()),
    ],
)
def test_param_axes_by_name_then_shape(name, shape, axes):
    width = 32 if name == "tokens_since_fired" else 8
    assert sharding.param_logical_axes(name, shape, width=width, d_in=8) == axes


def test_divisibility_errors_name_the_field_and_the_axis():
    mesh = gemmascope.mesh.make_mesh([("data", 2), ("model", 4)])
    with pytest.raises(ValueError, match=r"width=30 is not divisible by the mesh's model axis \(4"):
        sharding.check_divisible(mesh, 30, 64)
    with pytest.raises(ValueError, match=r"batch_size=63 is not divisible .* data axis"):
        sharding.check_divisible(mesh, 32, 63)


def test_members_per_pass_defaults_by_backend_and_rejects_bad_values():
    cfg = train.default_config()
    assert config.members_per_pass(cfg, "cpu") == 1  # XLA:CPU batched matmuls are slow
    assert config.members_per_pass(cfg, "gpu") == 0  # one vmapped pass
    cfg.members_per_pass = 4
    assert config.members_per_pass(cfg, "cpu") == 4
    cfg.members_per_pass = -1
    with pytest.raises(ValueError, match="members_per_pass must be None or an int >= 0"):
        config.members_per_pass(cfg, "cpu")


def test_block_tokens_default_by_backend_and_reject_a_non_divisor():
    cfg = train.default_config()  # batch 4096, width 16384
    assert config.block_tokens(cfg, "cpu", data_shards=1) == 256  # blocks stay in cache
    assert config.block_tokens(cfg, "gpu", data_shards=1) == 0
    assert config.block_tokens(cfg, "cpu", data_shards=2) == 0
    cfg.sae.sparse_capacity = 256  # the sparse path lists the whole batch at once
    assert config.block_tokens(cfg, "cpu", data_shards=1) == 0
    cfg.sae.sparse_capacity = 0
    cfg.members_per_pass = 0  # vmapped members: AuxK's per-step choice would compute both
    assert config.block_tokens(cfg, "cpu", data_shards=1) == 0
    cfg.block_tokens = 512  # asked for: honoured anywhere
    assert config.block_tokens(cfg, "gpu", data_shards=4) == 512
    cfg.block_tokens = 100
    with pytest.raises(ValueError, match=r"block_tokens: .*100 does not divide the batch of 4096"):
        config.block_tokens(cfg, "cpu", data_shards=1)


def _resolved(arch, **fields):
    job = train.default_config(arch)
    job.update(name="j", batch_size=100, total_tokens=100 * 300, **fields)
    return train.loop.resolve_sae_config(job, config.get_architecture(arch))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_auxk_dead_window_is_the_jobs_unless_set_and_then_must_agree(arch):
    start = {} if arch == "topk" else {"threshold_start_step": 100}
    job = train.default_config(arch)
    job.update(name="j", batch_size=100, total_tokens=100 * 300, dead_window_tokens=25_000)
    job.sae.update(start)
    sae_cfg = train.loop.resolve_sae_config(job, config.get_architecture(arch))
    assert sae_cfg.dead_tokens == 25_000  # AuxK and frac_dead: one definition of a dead latent
    job.sae.dead_tokens = 25_000
    assert train.loop.resolve_sae_config(job, config.get_architecture(arch)).dead_tokens == 25_000
    job.sae.dead_tokens = 10_000_000
    with pytest.raises(ValueError, match=r"job 'j': sae.dead_tokens \(10000000\) and "):
        train.loop.resolve_sae_config(job, config.get_architecture(arch))


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_a_job_shorter_than_threshold_start_step_is_refused_before_training(arch):
    with pytest.raises(
        ValueError, match=r"job 'j' trains 300 steps, .*threshold_start_step = 1000 on"
    ):
        _resolved(arch)  # the default start, 1,000 steps (dictionary_learning)
    job = train.default_config(arch)
    job.update(name="j", batch_size=100, total_tokens=100 * 300)
    job.sae.threshold_start_step = 299  # the last step (index 299) still estimates it
    assert train.loop.resolve_sae_config(job, config.get_architecture(arch)).dead_tokens
    job.sae.threshold_start_step = 300
    with pytest.raises(ValueError, match="Set sae.threshold_start_step below 300"):
        train.loop.resolve_sae_config(job, config.get_architecture(arch))
