"""The forward pass against HF transformers' torch Gemma 2 (eager attention), site by site."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_oracle import CASES

from gemmascope import model

TOL = 1e-4


@pytest.fixture(scope="module")
def loaded(hf_cases):
    """Each case loaded through load_hf in fp32."""
    return {name: model.load_hf(case.path) for name, case in hf_cases.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_every_site_match_hf(hf_cases, loaded, name):
    case = hf_cases[name]
    cfg, params = loaded[name]
    run = jax.jit(lambda p, t: model.forward(cfg, p, t, capture="*/*"))
    logits, acts = run(params, case.tokens)
    assert logits.dtype == jnp.float32
    assert logits.shape == case.logits.shape
    np.testing.assert_allclose(np.asarray(logits), case.logits, atol=TOL, rtol=0)
    assert sorted(acts) == sorted(case.acts) == sorted(model.sites.all_sites(cfg))
    for site, ref in case.acts.items():
        assert acts[site].shape == (*case.tokens.shape, model.sites.dim(cfg, site)), site
        np.testing.assert_allclose(np.asarray(acts[site]), ref, atol=TOL, rtol=0, err_msg=site)
