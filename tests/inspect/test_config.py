"""The inspect section's defaults and its validation: a bad field is named with what is valid."""

import os

import ml_collections
import numpy as np
import pytest

from gemmascope import inspect as gs_inspect
from gemmascope import study
from gemmascope.inspect import latents
from gemmascope.study import errors, stages

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_defaults_are_valid_and_in_the_study_schema():
    gs_inspect.validate(gs_inspect.default_config())
    config = study.base_config()
    assert config.inspect.to_dict() == gs_inspect.default_config().to_dict()
    assert "inspect" in study.config.NON_STUDY_SECTIONS  # a workdir accepts other values
    assert "inspect" in stages.MODES


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("top_k", 0, r"inspect.top_k must be an integer >= 1, got 0"),
        ("n_sequences", 2.5, r"inspect.n_sequences must be an integer >= 1, got 2.5"),
        ("context_before", -1, r"inspect.context_before must be an integer >= 0, got -1"),
        ("in_all", "yes", r"inspect.in_all must be True or False, got 'yes'"),
        ("quantiles", (0.5, 0.2), r"inspect.quantiles must be increasing fractions in \[0, 1\)"),
        ("quantiles", (0.0, 1.0), r"inspect.quantiles must be increasing fractions"),
        ("histogram_log10_range", (2.0, 1.0), r"histogram_log10_range must be \(low, high\)"),
        ("model_parallel", 0, r"inspect.model_parallel"),
    ],
)
def test_a_bad_field_is_named(field, value, message):
    # type_safe=False: a config built in Python (not through --config overrides) may hold anything.
    cfg = ml_collections.ConfigDict(gs_inspect.default_config().to_dict(), type_safe=False)
    cfg[field] = value
    with pytest.raises(ValueError, match=message):
        gs_inspect.validate(cfg)


def test_workdir_without_saes_is_a_clear_error(tmp_path):
    config = ml_collections.ConfigDict({"inspect": gs_inspect.default_config().to_dict()})
    with pytest.raises(FileNotFoundError, match="no SAEs under .*saes"):
        gs_inspect.inspect(config, str(tmp_path))


def test_latent_sample_is_deterministic_sorted_and_without_repeats():
    assert np.array_equal(latents.sample_latents(100, 100, 0), np.arange(100))
    sample = latents.sample_latents(262144, 16384, 0)
    assert len(sample) == 16384 and len(np.unique(sample)) == 16384
    assert (np.diff(sample) > 0).all() and sample.dtype == np.int32
    assert np.array_equal(sample, latents.sample_latents(262144, 16384, 0))
    assert not np.array_equal(sample, latents.sample_latents(262144, 16384, 1))
    # Spread over the whole width (Matryoshka-style orderings are not biased to a prefix).
    counts, _ = np.histogram(sample, bins=8, range=(0, 262144))
    assert counts.min() > 0.9 * 16384 / 8


def _runlocal():
    path = os.path.join(REPO, "experiments", "tiny_demo.py:runlocal")
    _, config = study.load_config_file(path)
    return config


def test_study_validation_runs_inspect_last_in_all_and_checks_its_section(tmp_path):
    config = _runlocal()
    checked = study.validate(config, "all", workdir=str(tmp_path), devices=(8, 8))
    assert checked.stages == ("cache", "train", "export", "eval", "inspect")
    config.inspect.in_all = False
    checked = study.validate(config, "all", workdir=str(tmp_path), devices=(8, 8))
    assert checked.stages == ("cache", "train", "export", "eval")
    assert study.validate(config, "inspect", workdir=str(tmp_path)).stages == ("inspect",)
    config.inspect.top_k = 0
    config.inspect.model_parallel = 3
    with pytest.raises(errors.ConfigError) as raised:
        study.validate(config, "inspect", workdir=str(tmp_path), devices=(8, 8))
    assert "inspect.top_k must be an integer >= 1, got 0" in str(raised.value)
    assert "inspect.model_parallel = 3: does not divide the 8 local devices" in str(raised.value)
    config.inspect.top_k, config.inspect.model_parallel = 16, 1
    with pytest.raises(errors.ConfigError, match="--jobs does not apply to --mode=inspect"):
        study.validate(config, "inspect", workdir=str(tmp_path), selectors=["resid_post-*"])


def test_mode_inspect_without_saes_says_what_to_run(tmp_path):
    with pytest.raises(errors.WorkdirError, match="no SAEs in .*saes to inspect: run the same"):
        stages.run(_runlocal(), str(tmp_path), "inspect")
