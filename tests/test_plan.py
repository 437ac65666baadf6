"""Plan mode: the figures of docs/recipe.md#throughput and #storage; the Gemma studies."""

import types

import pytest

from gemmascope import model, plan, study
from gemmascope.plan import accelerators, lm_memory
from gemmascope.study import jobs

TiB = 2**40


def test_spec7_step_time_example():
    # docs/recipe.md#throughput: one 4,096-token step of a 9B (d = 3584) 131k SAE takes 45 ms on 8
    # TPU v3 chips at 50.8% MFU. 6 x 2 x 3584 x 131072 x 4096 FLOPs / (8 x 123e12 x 0.508) = 46.2
    # ms.
    seconds = plan.sae_step_seconds(
        d_in=3584, width=2**17, batch_size=4096, n_saes=1, accelerator="tpu_v3", n_chips=8,
        mfu=0.508,
    )  # fmt: skip
    assert seconds == pytest.approx(0.045, rel=0.05)
    assert seconds == pytest.approx(6 * 2 * 3584 * 2**17 * 4096 / (8 * 123e12 * 0.508))


def test_spec7_storage_example():
    # docs/recipe.md#storage: 8B tokens of one 9B site in fp32 is "about 100 TiB" (3584 x 4 B x 8e9
    # = 104 TiB).
    n_bytes = plan.activation_storage_bytes(8e9, 3584, "float32")
    assert n_bytes == 3584 * 4 * 8e9
    assert 95 < n_bytes / TiB < 110
    assert plan.activation_storage_bytes(8e9, 3584, "bfloat16") == n_bytes / 2
    with pytest.raises(ValueError, match="Unknown storage dtype 'int4'; valid: float32"):
        plan.activation_storage_bytes(1, 1, "int4")


def test_gemma2_9b_study_plan():
    _, config = study.load_config_file("experiments/gemma2_9b.py")
    model_cfg = study.model_config(config.model)
    study_plan = plan.make_plan(config, model_cfg)
    # 42 layers x 3 kinds at 16k and 131k, + 4 ladder widths at L20, + 3 1m residual SAEs.
    assert len(study_plan.jobs) == 42 * 3 * 2 + 4 + 3
    assert study_plan.n_saes == 6 * len(study_plan.jobs)
    by_name = {job.name: job for job in study_plan.jobs}
    job = by_name["resid_post-L20-w131072-jumprelu"]
    # The docs/recipe.md#throughput example, for each of the 6 stacked SAEs, latent-sharded over
    # the 8 chips, i.e. the 16 JAX devices (TensorCores) of 8 TPU v3 chips.
    assert job.step_seconds / job.n_saes == pytest.approx(0.045, rel=0.05)
    assert job.mesh == (1, 16) and job.total_tokens == 8e9 and job.steps == 1_953_125
    assert by_name["attn_z-L3-w16384-jumprelu"].mesh == (16, 1)
    assert by_name["attn_z-L3-w16384-jumprelu"].d_in == 4096
    assert by_name["mlp_out-L3-w16384-jumprelu"].total_tokens == 4e9
    assert by_name["resid_post-L31-w1048576-jumprelu"].total_tokens == 16e9
    # The cache of resid_post/20 holds the 16B tokens of its largest job; resid_post/3 holds 8B.
    assert study_plan.storage_bytes["resid_post/3"] / TiB == pytest.approx(104.3, rel=0.01)
    assert study_plan.cache_tokens["resid_post/20"] == 16e9
    # GS: all sites of 2B + 9B ~ 17 PiB; the 9B part alone is most of it.
    assert 10 < study_plan.total_storage_bytes / 2**50 < 17
    # Memory: params + Adam moments of 6 SAEs of 9B 16k, replicated on each device; a 131k job's
    # are split over the 16 devices of its model axis.
    mlp16k = by_name["mlp_out-L3-w16384-jumprelu"]
    assert mlp16k.params_bytes_per_device == 6 * plan.sae_param_count(3584, 2**14) * 4
    assert mlp16k.optimizer_bytes_per_device == 2 * mlp16k.params_bytes_per_device
    assert job.params_bytes_per_device == 6 * plan.sae_param_count(3584, 2**17) * 4 / 16
    # Gemma 2 9B has 9.24B parameters; caching 16B tokens is one forward pass over them.
    assert study_plan.lm_params == pytest.approx(9.24e9, rel=0.01)
    assert study_plan.cache_flops == pytest.approx(2 * study_plan.lm_params * 16e9)
    text = plan.format_plan(study_plan)
    assert "259 jobs, 1554 SAEs" in text and "Cloud TPU v3" in text and "PiB over 126 sites" in text
    assert "one forward pass of the 9.24B-parameter model over 1.6e+10 tokens" in text


def test_plan_other_studies_and_accelerators():
    _, config = study.load_config_file("experiments/gemma2_2b.py")
    model_cfg = study.model_config(config.model)
    assert len(jobs.expand(config, model_cfg)) == 26 * 3 * 2 + 4 + 3
    _, config = study.load_config_file("experiments/gemma2_27b.py:arch=jumprelu+gated")
    config.unlock()
    config.plan.accelerator = "h100"
    study_plan = plan.make_plan(config, study.model_config(config.model))
    assert [j.name for j in study_plan.jobs][:2] == [
        "resid_post-L10-w131072-gated",
        "resid_post-L10-w131072-jumprelu",
    ]
    gated, jumprelu = study_plan.jobs[:2]
    # The decoder runs twice (docs/recipe.md#gated).
    assert gated.flops == pytest.approx(1.5 * jumprelu.flops)
    assert jumprelu.d_in == 4608
    h100 = accelerators.get("h100")
    assert jumprelu.step_seconds == pytest.approx(
        6 * 2 * 4608 * 2**17 * 4096 * 6 / (8 * h100.peak_flops * 0.508)
    )
    config.plan.accelerator = "tpu_v9"
    with pytest.raises(ValueError, match="Unknown accelerator 'tpu_v9'; valid accelerators: a100"):
        plan.make_plan(config, study.model_config(config.model))


def test_every_accelerator_has_a_source():
    assert set(accelerators.ACCELERATORS) >= {"tpu_v3", "tpu_v4", "tpu_v5p", "a100", "h100"}
    for chip in accelerators.ACCELERATORS.values():
        assert chip.peak_flops > 1e14 and chip.memory_bytes > 1e10 and chip.source


def test_resolve_mesh():
    # A job's mesh is resolved by gemmascope.mesh.axis_sizes over n_chips x devices_per_chip JAX
    # devices: 4 TPU v3 chips are 8 devices (TensorCores).
    _, config = study.load_config_file("experiments/gemma2_9b.py")
    model_cfg = study.model_config(config.model)
    job = jobs.expand(config, model_cfg)[0]
    tpu_v3 = accelerators.get("tpu_v3")
    job.mesh = [("data", -1), ("model", 1)]
    assert plan.plan_job(job, 3584, tpu_v3, 4, 0.5).mesh == (8, 1)
    job.mesh = [("data", 2), ("model", -1)]
    assert plan.plan_job(job, 3584, tpu_v3, 4, 0.5).mesh == (2, 4)
    job.mesh = [("data", 3), ("model", 1)]
    with pytest.raises(ValueError, match="does not divide the 8 available devices"):
        plan.plan_job(job, 3584, tpu_v3, 4, 0.5)


def _lm_plan(experiment, accelerator, dtype, cache_mp, eval_mp=1):
    _, config = study.load_config_file(experiment)
    config.unlock()
    config.plan.accelerator = accelerator
    config.model.dtype = dtype
    config.cache.model_parallel = cache_mp
    config.eval.model_parallel = eval_mp
    config.cache.batch_size, config.eval.batch_size = 8, 4  # the defaults, whatever the study sets
    study_plan = plan.make_plan(config, study.model_config(config.model))
    return study_plan, {lm.stage: lm for lm in study_plan.lm}


def _gemma2_27b_sharded_and_whole(model_parallel):
    """Hand count of Gemma 2 27B's parameters (docs/recipe.md#gemma-2-sizes).

    Split over the model axis, and replicated (the RMSNorm gains).
    """
    d, v, m, layers, heads, kv_heads, head_dim = 4608, 256000, 36864, 46, 32, 16, 128
    attention = d * head_dim * (heads + 2 * kv_heads + heads)  # q, k, v, o
    sharded = v * d + layers * (attention + 3 * d * m)
    whole = layers * 4 * d + d
    return sharded / model_parallel, whole


def test_lm_memory_per_device_gemma2_27b():
    # bf16 27B over a model axis of 4 on a TPU v4 host (4 chips of 32 GiB): 13.6 GB per chip.
    study_plan, lms = _lm_plan("experiments/gemma2_27b.py", "tpu_v4", "bfloat16", 4)
    sharded, whole = _gemma2_27b_sharded_and_whole(4)
    capture = lms["capture"]
    assert capture.params_bytes_per_device == 2 * (sharded + whole)
    assert capture.params_bytes_per_device / 1e9 == pytest.approx(13.6, rel=0.01)
    assert capture.local_devices == 4 and capture.valid and capture.fits
    assert capture.replicated == []
    assert 0 < capture.activation_bytes_per_device < capture.params_bytes_per_device
    # eval.model_parallel=1 replicates 54 GB on each 32 GiB chip: flagged, with the fix.
    evaluation = lms["eval"]
    assert evaluation.params_bytes_per_device == 2 * (4 * sharded + whole)
    assert not evaluation.fits and evaluation.fitting == [4]
    text = plan.format_plan(study_plan)
    assert "capture  cache.model_parallel=4 (x 1 data): params 12.7 GiB" in text
    assert "! exceeds the 32.0 GiB of one device: set eval.model_parallel to 4" in text
    # A v4 host has 4 chips, so a model axis of 8 cannot be built inside one process.
    study_plan, lms = _lm_plan("experiments/gemma2_27b.py", "tpu_v4", "bfloat16", 8)
    assert not lms["capture"].valid
    assert "! cache.model_parallel=8 does not divide the 4 devices of one process" in (
        plan.format_plan(study_plan)
    )
    # On a TPU v3 host (8 TensorCores of 16 GiB) a model axis of 8: 6.8 GB per device.
    _, lms = _lm_plan("experiments/gemma2_27b.py", "tpu_v3", "bfloat16", 8)
    sharded, whole = _gemma2_27b_sharded_and_whole(8)
    assert lms["capture"].params_bytes_per_device == 2 * (sharded + whole)
    assert lms["capture"].device_memory_bytes == 16 * 2**30


def test_lm_memory_gemma2_9b_on_tpu_v3_needs_model_parallel():
    # 9.24B bf16 parameters = 18.5 GB > the 16 GiB of one v3 TensorCore.
    study_plan, lms = _lm_plan("experiments/gemma2_9b.py", "tpu_v3", "bfloat16", 1)
    capture = lms["capture"]
    assert capture.params_bytes_per_device == 2 * study_plan.lm_params
    assert not capture.fits and capture.fitting[0] > 1
    assert "! exceeds the 16.0 GiB of one device" in plan.format_plan(study_plan)


def test_lm_memory_counts_replicated_kv_heads():
    # Gemma 2 2B has 4 KV heads: on a model axis of 8 its k and v projections stay whole.
    _, lms = _lm_plan("experiments/gemma2_2b.py", "a100", "float32", 8)
    d, v, m, layers, heads, kv_heads, head_dim = 2304, 256000, 9216, 26, 8, 4, 256
    sharded = v * d + layers * (d * head_dim * 2 * heads + 3 * d * m)
    whole = layers * (4 * d + 2 * d * kv_heads * head_dim) + d
    assert lms["capture"].params_bytes_per_device == 4 * (sharded / 8 + whole)
    assert lms["capture"].replicated == ["kv_heads (4)"]


def test_lm_activation_estimate_by_hand():
    cfg = model.presets.gemma2_2b()
    got = lm_memory.activation_bytes(
        cfg, stage="eval", sequences=2, seq_len=1024, model_parallel=4, compute_bytes=2,
        site_dims=[2304], site_bytes=2, splice_batch=4,
    )  # fmt: skip
    tokens = 2 * 1024
    layer = tokens * (4 * 2304 + 3 * 9216 // 4) * 2 + 2 * (8 // 4) * 1024 * 1024 * 4 * 2
    logits = tokens * (256000 // 4) * 4 * (1 + 3 * 4)
    assert got == layer + tokens * 2304 * 2 + logits
    with pytest.raises(ValueError, match="stage must be 'capture' or 'eval', got 'train'"):
        lm_memory.activation_bytes(
            cfg, stage="train", sequences=1, seq_len=1, model_parallel=1, compute_bytes=2,
            site_dims=[], site_bytes=2,
        )  # fmt: skip


def test_plan_refuses_a_bad_model_parallel():
    with pytest.raises(ValueError, match="eval.model_parallel must be a positive integer, got 0"):
        _lm_plan("experiments/gemma2_2b.py", "a100", "float32", 1, eval_mp=0)


@pytest.mark.parametrize(
    "experiment",
    ["gemma2_2b.py", "gemma2_9b.py", "gemma2_9b.py:variant=it", "gemma2_27b.py"]
    + [f"gemma3_{size}.py" for size in ("270m", "1b", "4b", "12b", "27b")]
    + ["gemma3_270m_local.py"],
)
def test_gemma_studies_fit_their_planned_accelerator(experiment):
    # Each study's model_parallel and forward batch sizes are chosen so that capture and eval
    # fit one device of the accelerator its plan names (16 GiB TPU v3 devices; the real-model
    # study: one H100).
    _, config = study.load_config_file(f"experiments/{experiment}")
    study_plan = plan.make_plan(config, study.model_config(config.model))
    assert [lm.stage for lm in study_plan.lm] == ["capture", "eval"]
    for lm in study_plan.lm:
        assert lm.valid and lm.fits, (lm.stage, lm)
    assert "! exceeds" not in plan.format_plan(study_plan)


def test_plan_text_groups_sorts_layers_and_lists_every_misfit():
    _, config = study.load_config_file("experiments/gemma2_9b.py")
    study_plan = plan.make_plan(config, study.model_config(config.model))
    by_name = {job.name: job for job in study_plan.jobs}
    # By hand: 6 SAEs of 1M latents on d = 3584, latent-sharded over the 16 devices (TensorCores)
    # of 8 TPU v3 chips: params + 2 Adam moments, plus 4 fp32 (4096, 2^20 / 16, 6) arrays.
    million = by_name["resid_post-L20-w1048576-jumprelu"]
    params = 6 * (2 * 3584 * 2**20 + 2 * 2**20 + 3584) * 4 / 16
    assert million.mesh == (1, 16)
    assert million.memory_bytes_per_device == pytest.approx(3 * params + 4 * 4 * 4096 * 2**16 * 6)
    assert million.memory_bytes_per_device > 16 * 2**30 and not study_plan.fits(million)
    misfits = sorted(job.name for job in study_plan.jobs if not study_plan.fits(job))
    assert len(misfits) == 4  # the three 1M SAEs and the 524k ladder width

    text = plan.format_plan(study_plan)
    # One row per group x architecture, every misfit named with the advice for sharded jobs.
    assert len([line for line in text.splitlines() if " jumprelu " in line]) == 4
    rows = [line.split() for line in text.splitlines()]
    assert ["all_16k", "jumprelu", "126", "756", "16k"] in [row[:5] for row in rows]
    assert all(name in text for name in misfits)
    words = " ".join(text.split())  # the warnings are wrapped at 100 columns
    assert "already sharded over all 16 devices: use more chips" in words
    assert "shard their latents" not in words

    # Every job with --plan_jobs, layers in numeric order (L2 before L10).
    job_rows = plan.format_plan(study_plan, all_jobs=True).split("\n")
    names = [row.split()[0] for row in job_rows if row]
    resid16k = [name for name in names if name.startswith("resid_post-") and "-w16384-" in name]
    assert resid16k[:3] == [f"resid_post-L{n}-w16384-jumprelu" for n in (0, 1, 2)]
    assert len(resid16k) == 42 and resid16k[-1] == "resid_post-L41-w16384-jumprelu"

    # Not latent-sharded, the same jobs get the advice to shard their latents.
    config.unlock()
    config.mesh.shard_latents_from = 0
    text = plan.format_plan(plan.make_plan(config, study.model_config(config.model)))
    assert "shard their latents over every device" in " ".join(text.split())


# Gemma 3 sizes: layers, and Gemma Scope 2's 25/50/65/85% depths. 270M from the Gemma Scope 2
# announcement; 1B, 4B, 27B (and 24/31/41 of the 12B) the layers of its released residual SAEs in
# SAELens's registry.
GEMMA3_LAYERS = {
    "270m": (18, (5, 9, 12, 15)),
    "1b": (26, (7, 13, 17, 22)),
    "4b": (34, (9, 17, 22, 29)),
    "12b": (48, (12, 24, 31, 41)),
    "27b": (62, (16, 31, 40, 53)),
}


@pytest.mark.parametrize("size", GEMMA3_LAYERS)
def test_gemma3_studies_lay_out_gemma_scope_2(size):
    n_layers, depths = GEMMA3_LAYERS[size]
    _, config = study.load_config_file(f"experiments/gemma3_{size}.py")
    model_cfg = study.model_config(config.model)
    assert model_cfg.num_hidden_layers == n_layers
    by_name = {job.name: job for job in jobs.expand(config, model_cfg)}
    # Every layer x 3 kinds x {16k, 262k}; the 4 depths x 3 kinds also at 65k; their residual
    # stream at 1m. Two target L0s per SAE at every layer, three at the depths. Transcoders
    # (transcoder_all): every layer x {plain, affine} x {16k, 262k}, two target L0s.
    n_jobs = n_layers * 3 * 2 + 4 * 3 + 4 + n_layers * 2 * 2
    n_saes = (n_layers - 4) * 3 * 2 * 2 + (4 * 3 * 3 + 4) * 3 + n_layers * 2 * 2 * 2
    assert len(by_name) == n_jobs
    small_big, all_three = [128.0, 16.0], [128.0, 48.0, 16.0]
    other = next(layer for layer in range(n_layers) if layer not in depths)
    for kind in ("attn_z", "mlp_out", "resid_post"):
        for width in (2**14, 2**18):
            assert by_name[f"{kind}-L{other}-w{width}-jumprelu"].sweep_values == small_big
        assert f"{kind}-L{other}-w65536-jumprelu" not in by_name
        for layer in depths:
            for width in (2**14, 2**16, 2**18):
                assert by_name[f"{kind}-L{layer}-w{width}-jumprelu"].sweep_values == all_three
    for layer in depths:
        job = by_name[f"resid_post-L{layer}-w1048576-jumprelu"]
        assert job.total_tokens == 16e9 and job.sweep_values == all_three
        assert f"mlp_out-L{layer}-w1048576-jumprelu" not in by_name
    job = by_name[f"mlp_out-L{other}-w16384-jumprelu"]
    assert job.total_tokens == 4e9 and job.sae.sparsity_form == "target_l0"
    for layer in (0, depths[0], n_layers - 1):
        for width in (2**14, 2**18):
            for kind, skip in (("transcoder", False), ("transcoder_affine", True)):
                tc = by_name[f"{kind}-L{layer}-w{width}-jumprelu"]
                assert (tc.site, tc.target_site) == (f"mlp_in/{layer}", f"mlp_out/{layer}")
                assert tc.sae.skip_connection == skip and not tc.sae.pre_encoder_bias
                assert tc.sae.d_out == model_cfg.hidden_size and tc.sweep_values == small_big
    assert by_name[f"attn_z-L{other}-w262144-jumprelu"].total_tokens == 8e9
    study_plan = plan.make_plan(config, model_cfg)
    text = plan.format_plan(study_plan)
    assert f"{n_jobs} jobs, {n_saes} SAEs" in text
    # The cache holds mlp_in of every layer (the transcoders' input; no mlp_in SAE) for the
    # largest transcoder budget, the 262k group's 8B tokens.
    d = model_cfg.hidden_size
    mlp_in = [site for site in study_plan.storage_bytes if site.startswith("mlp_in/")]
    assert len(mlp_in) == n_layers
    assert study_plan.storage_bytes["mlp_in/0"] == 8e9 * d * 4
    # IT: the same jobs on chat-wrapped text.
    _, it = study.load_config_file(f"experiments/gemma3_{size}.py:variant=it")
    assert it.name == f"gemma3_{size}_it" and it.data.chat_wrap and not config.data.chat_wrap
    assert (config.model.path, it.model.path) == (f"gemma-3-{size}-pt", f"gemma-3-{size}-it")
    assert len(jobs.expand(it, model_cfg)) == n_jobs


def test_gemma3_270m_local_plan():
    # The real-model study: 4 depths x 3 kinds x 1 width, 3 target L0s each; no weights needed.
    _, config = study.load_config_file("experiments/gemma3_270m_local.py")
    model_cfg = study.model_config(config.model)
    study_plan = plan.make_plan(config, model_cfg)
    assert len(study_plan.jobs) == 12 and study_plan.n_saes == 36
    kinds = ("attn_z", "mlp_out", "resid_post")
    expected = [f"{kind}/{layer}" for layer in (5, 9, 12, 15) for kind in kinds]
    assert sorted(study_plan.cache_tokens) == sorted(expected)
    assert config.model.path == "gguf-package:gemma3_270m"


def test_gemma3_27b_plan_names_its_1m_misfits():
    # The 27B's 1m residual SAEs exceed a v3 device even latent-sharded over all 16; the plan must
    # name each. By hand: 3 SAEs x (2 x 5376 x 2^20 + 2 x 2^20 + 5376) fp32 params, x 3 with Adam's
    # moments, over 16 latent shards, + 4 fp32 (4096 x 2^20 / 16) x 3 step arrays = 35.6 GiB.
    _, config = study.load_config_file("experiments/gemma3_27b.py")
    study_plan = plan.make_plan(config, study.model_config(config.model))
    by_hand = 3 * (2 * 5376 * 2**20 + 2 * 2**20 + 5376) * 4 * 3 / 16 + 4 * 4 * 4096 * 2**16 * 3
    misfits = [job for job in study_plan.jobs if not study_plan.fits(job)]
    assert sorted(job.name for job in misfits) == [
        f"resid_post-L{layer}-w1048576-jumprelu" for layer in (16, 31, 40, 53)
    ]
    assert misfits[0].memory_bytes_per_device == pytest.approx(by_hand)
    words = " ".join(plan.format_plan(study_plan).split())
    assert "! 4 job(s) need more than the 16.0 GiB of one device" in words
    assert "resid_post-L53-w1048576-jumprelu" in words and "35.6 GiB !" in words
    _, config = study.load_config_file("experiments/gemma3_270m.py")
    small = plan.make_plan(config, study.model_config(config.model))
    assert all(small.fits(job) for job in small.jobs)
    assert "job(s) need" not in plan.format_plan(small)


def test_transcoder_flops_and_memory_count_d_out_and_w_skip():
    # By hand: a skip-transcoder's matrices are W_enc (d_in x M), W_dec (M x d_out) and W_skip
    # (d_in x d_out); 6 FLOPs per matrix parameter per token. The trainer's MFU uses the same.
    from gemmascope.train import throughput

    d_in, width, d_out = 40, 256, 24
    assert plan.sae_step_flops(d_in, width, 512, 3, "jumprelu", d_out=d_out, skip=True) == (
        6 * (d_in * width + width * d_out + d_in * d_out) * 512 * 3
    )
    assert plan.sae_param_count(d_in, width, d_out, skip=True) == (
        d_in * width + width * d_out + d_in * d_out + 2 * width + d_out
    )
    assert plan.sae_step_flops(d_in, width, 512, 3, "jumprelu") == 6 * 2 * d_in * width * 512 * 3
    _, config = study.load_config_file("experiments/gemma3_270m.py")
    model_cfg = study.model_config(config.model)
    selected = jobs.select(jobs.expand(config, model_cfg), ["transcoder_affine-L3-w16384-*"])
    (job,) = plan.make_plan(config, model_cfg, selected).jobs
    d = model_cfg.hidden_size
    per_step = 6 * (2 * d * 2**14 + d * d) * 4096 * 2
    assert job.flops == per_step * job.steps and job.n_saes == 2
    assert job.params_bytes_per_device == 2 * (2 * d * 2**14 + d * d + 2 * 2**14 + d) * 4
    # The fields of a step.JobShape that the trainer's FLOPs read.
    shape = types.SimpleNamespace(arch="jumprelu", sae_cfg=selected[0].sae, d_in=d, width=2**14,
                                  n_members=2, batch_size=4096)  # fmt: skip
    assert throughput.step_flops(shape) == per_step
