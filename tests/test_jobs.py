"""Job expansion: stable names, budgets, overrides, selection and bad input."""

import pytest

from gemmascope import study
from gemmascope.study import jobs


def tiny_study():
    config = study.base_config()
    config.model.preset = "tiny"  # 4 layers, d_model 64, 4 heads x 16
    config.sites = ("resid_post/*", "attn_z/1")
    config.jobs.groups.small = dict(sites=("*/*",), widths=(32,), total_tokens=1000)
    config.jobs.groups.wide = dict(sites=("resid_post/2",), widths=(64, 128), total_tokens=5000)
    config.jobs.archs.jumprelu = dict(sweep_values=(1e-3, 2e-3), sae=dict(lr=1e-3))
    config.jobs.archs.topk = dict(sweep_values=(4, 8), sae=dict())
    config.train.batch_size = 100
    config.mesh.shard_latents_from = 128
    return config


def expand(config):
    return jobs.expand(config, study.model_config(config.model))


def test_expansion_names_budgets_and_overrides():
    all_jobs = expand(tiny_study())
    names = [job.name for job in all_jobs]
    # "*/*" in a group means every *cached* site: 4 resid_post + attn_z/1.
    assert len(names) == (5 * 1 + 1 * 2) * 2 and names == sorted(names)
    assert "attn_z-L1-w32-topk" in names and "resid_post-L2-w128-jumprelu" in names
    job = next(j for j in all_jobs if j.name == "resid_post-L2-w128-jumprelu")
    assert (job.site, job.arch, job.width, job.total_tokens) == (
        "resid_post/2",
        "jumprelu",
        128,
        5000,
    )
    assert job.sweep_values == [1e-3, 2e-3] and job.sae.lr == 1e-3 and job.batch_size == 100
    assert job.d_in == 64 and job.model == "tiny"
    assert dict(job.mesh) == {"data": 1, "model": -1}  # width >= shard_latents_from
    topk = next(j for j in all_jobs if j.name == "attn_z-L1-w32-topk")
    assert topk.sae.k_max == 8  # the static top-k bound covers the largest swept k
    assert topk.d_in == 64 and topk.sae.lr != 1e-3 and dict(topk.mesh) == {"data": -1, "model": 1}
    assert jobs.job_name("mlp_out/12", 16384, "gated") == "mlp_out-L12-w16384-gated"


def test_select():
    all_jobs = expand(tiny_study())
    chosen = jobs.select(all_jobs, ["resid_post-L2-*-jumprelu", "attn_z-L1-w32-topk,attn_z-*"])
    assert [j.name for j in chosen] == [
        "attn_z-L1-w32-jumprelu",
        "attn_z-L1-w32-topk",
        "resid_post-L2-w128-jumprelu",
        "resid_post-L2-w32-jumprelu",
        "resid_post-L2-w64-jumprelu",
    ]
    assert jobs.sites_of(chosen) == ["attn_z/1", "resid_post/2"]
    assert jobs.select(all_jobs, None) == all_jobs
    with pytest.raises(ValueError, match="--jobs 'mlp_out-\\*' matches no job; valid jobs: attn_z"):
        jobs.select(all_jobs, ["mlp_out-*"])


def test_bad_job_configs():
    config = tiny_study()
    config.jobs.groups.small.sites = ("resid_post/*", "mlp_out/0")
    with pytest.raises(ValueError, match=r"groups.small trains on \['mlp_out/0'\], which config"):
        expand(config)
    config = tiny_study()
    config.jobs.archs.nope = dict(sweep_values=(1.0,))
    with pytest.raises(ValueError, match="archs.nope: unknown architecture; valid: .*jumprelu"):
        expand(config)
    config = tiny_study()
    config.jobs.groups.other = dict(sites=("resid_post/2",), widths=(64,), total_tokens=7)
    with pytest.raises(ValueError, match="resid_post-L2-w64-jumprelu appears in two groups"):
        expand(config)
    config = tiny_study()
    config.jobs.archs.topk.sweep_values = ()
    with pytest.raises(ValueError, match="archs.topk.sweep_values is empty"):
        expand(config)
    config = tiny_study()
    config.jobs.groups.small.widths = (0,)
    with pytest.raises(ValueError, match="width 0 <= 0"):
        expand(config)


def test_a_group_may_sweep_its_own_values():
    # Gemma Scope 2's layout: two L0s at every layer, three at a few layers (the group "wide").
    config = tiny_study()
    config.jobs.groups.small.sweep_values = dict(jumprelu=(5e-3,))
    by_name = {job.name: job for job in expand(config)}
    assert by_name["resid_post-L0-w32-jumprelu"].sweep_values == [5e-3]
    assert by_name["attn_z-L1-w32-jumprelu"].sweep_values == [5e-3]
    assert by_name["resid_post-L2-w64-jumprelu"].sweep_values == [1e-3, 2e-3]  # the arch's
    assert by_name["resid_post-L0-w32-topk"].sweep_values == [4, 8]  # only jumprelu overridden
    # The same job from two groups must get the same values, as it must the same budget.
    config.jobs.groups.again = dict(sites=("resid_post/0",), widths=(32,), total_tokens=1000)
    with pytest.raises(ValueError, match=r"resid_post-L0-w32-jumprelu appears in two groups "
                       r"with sweep values \[0.001, 0.002\] and \[0.005\]"):  # fmt: skip
        expand(config)
    config = tiny_study()
    config.jobs.groups.small.sweep_values = dict(gated=(1.0,))
    with pytest.raises(ValueError, match="small.sweep_values.gated: not an architecture of "
                       "config.jobs.archs \\(jumprelu, topk\\)"):  # fmt: skip
        expand(config)
    config.jobs.groups.small.sweep_values = dict(topk=())
    with pytest.raises(ValueError, match="groups.small.sweep_values.topk is empty"):
        expand(config)


def test_parse_arg():
    arg = study.parse_arg("runlocal,layer=3,arch=gated", runlocal=False, layer=12, arch="jumprelu")
    assert (arg.runlocal, arg.layer, arg.arch) == (True, 3, "gated")
    assert study.parse_arg(None, layer=12).layer == 12
    with pytest.raises(ValueError, match="Unknown config argument 'lyer'.*valid arguments: layer"):
        study.parse_arg("lyer=3", layer=12)
    with pytest.raises(ValueError, match="layer='x' is not a int"):
        study.parse_arg("layer=x", layer=12)


def transcoder_study():
    config = tiny_study()
    config.sites = ("resid_post/*", "mlp_in/*", "mlp_out/1", "mlp_out/2")
    config.jobs.groups.small.sites = ("resid_post/*",)
    config.jobs.groups.wide.sites = ("resid_post/2",)
    config.jobs.groups.tc = dict(
        sites=("mlp_in/1", "mlp_in/2"), widths=(32,), total_tokens=2000,
        transcoders=("plain", "affine"),
    )  # fmt: skip
    config.jobs.archs.gated = dict(sweep_values=(0.1,), sae=dict())
    config.jobs.groups.small.archs = ("jumprelu", "topk", "gated")
    config.jobs.groups.wide.archs = ("jumprelu",)
    config.jobs.groups.tc.archs = ("jumprelu", "topk")
    return config


def test_transcoder_groups_expand_into_site_pair_jobs():
    config = transcoder_study()
    by_name = {job.name: job for job in expand(config)}
    tc_names = sorted(name for name in by_name if name.startswith("transcoder"))
    assert tc_names == [
        f"{kind}-L{layer}-w32-{arch}"
        for kind in ("transcoder", "transcoder_affine")
        for layer in (1, 2)
        for arch in ("jumprelu", "topk")
    ]
    job = by_name["transcoder_affine-L2-w32-jumprelu"]
    assert (job.site, job.target_site, job.d_in, job.total_tokens) == ("mlp_in/2", "mlp_out/2",
                                                                       64, 2000)  # fmt: skip
    assert job.sae.skip_connection and not job.sae.pre_encoder_bias and job.sae.d_out == 64
    plain = by_name["transcoder-L1-w32-topk"]
    assert plain.target_site == "mlp_out/1" and not plain.sae.skip_connection
    assert by_name["resid_post-L2-w64-jumprelu"].target_site == ""  # an SAE
    # A group's archs restrict it: the wide group trains JumpReLU only.
    assert "resid_post-L2-w64-topk" not in by_name and "resid_post-L0-w32-gated" in by_name
    # The cache stage caches a transcoder's input and target; job_groups names its group.
    selected = jobs.select(list(by_name.values()), ["transcoder-L1-*"])
    assert jobs.sites_of(selected) == ["mlp_in/1", "mlp_out/1"]
    groups = jobs.job_groups(config, study.model_config(config.model))
    assert groups["transcoder_affine-L2-w32-topk"] == "tc"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.jobs.groups.tc.update(transcoders=("skip",)),
         r"transcoders = \['skip'\]: \['skip'\] unknown; valid: \['affine', 'plain'\]"),
        (lambda c: c.jobs.groups.tc.update(sites=("mlp_out/1",)),
         r"tc is a transcoder group, whose sites are the transcoders' inputs mlp_in/L .*not "
         r"\['mlp_out/1'\]"),
        (lambda c: c.jobs.groups.tc.update(sites=("mlp_in/3",)),
         r"its transcoders write \['mlp_out/3'\], which config.sites .* does not cache"),
        (lambda c: c.jobs.groups.tc.update(archs=("jumprelu", "gated")),
         r"tc trains transcoders, which \['gated'\] cannot train \(architectures that do: "
         r"\['batchtopk', 'jumprelu', 'topk'\]\)"),
        (lambda c: c.jobs.groups.tc.update(archs=("relu",)),
         r"groups.tc.archs: \['relu'\] are not architectures of config.jobs.archs"),
    ],
)  # fmt: skip
def test_bad_transcoder_groups_are_refused(change, message):
    config = transcoder_study()
    change(config)
    with pytest.raises(ValueError, match=message):
        expand(config)


def test_init_from_makes_every_job_a_fine_tuning_of_its_namesake():
    """Gemma Scope 2's IT SAEs: jobs start from the PT study's jobs of the same name."""
    config = tiny_study()
    config.train.sparsity_warmup_tokens = 500  # would otherwise override the dropped warmup
    config.jobs.archs.batchtopk = dict(sweep_values=(4,), sae=dict(threshold_start_step=50))
    config.jobs.init_from = "gs://bucket/pt"
    config.jobs.init_token_fraction = 0.15
    by_name = {job.name: job for job in expand(config)}
    job = by_name["resid_post-L2-w128-jumprelu"]
    assert job.init_from == "gs://bucket/pt/runs/resid_post-L2-w128-jumprelu"
    assert job.total_tokens == 750  # 0.15 x 5000
    assert by_name["attn_z-L1-w32-topk"].total_tokens == 150  # 0.15 x 1000
    assert job.sae.sparsity_warmup_steps == 0 and job.sparsity_warmup_tokens is None
    assert by_name["resid_post-L2-w64-batchtopk"].sae.threshold_start_step == 0
    assert job.sae.lr == 1e-3 and job.sweep_values == [1e-3, 2e-3]  # the rest as the PT job's
    assert "init_from" not in tiny_study().train  # set per job only
    assert all(not j.init_from for j in expand(tiny_study()))


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_init_token_fraction_outside_0_1_is_refused(fraction):
    config = tiny_study()
    config.jobs.init_from = "/pt"
    config.jobs.init_token_fraction = fraction
    with pytest.raises(ValueError, match="init_token_fraction = .* must be in \\(0, 1\\]"):
        expand(config)


def test_training_a_fine_tuning_study_whose_pt_jobs_are_missing_is_refused_first(tmp_path):
    config = tiny_study()
    config.model.preset = ""
    config.model.path = "embedded"
    config.sites = ("resid_post/0",)
    config.jobs.groups = dict(g=dict(sites=("resid_post/0",), widths=(32,), total_tokens=1000))
    del config.jobs.archs["topk"]
    config.train.batch_size = 64
    config.jobs.init_from = str(tmp_path / "pt")
    config.data.corpus = "embedded"
    with pytest.raises(study.ConfigError, match="final_params.npz and job.json missing under "
                       ".*pt/runs/<job>: those jobs must be trained first"):  # fmt: skip
        study.validate(config, "train", workdir=str(tmp_path / "it"), devices=(1, 1))
    study.validate(config, "plan")  # planning needs no PT study
