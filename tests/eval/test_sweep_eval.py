"""The sweep evaluator on a tiny random Gemma 2: splicing oracles and shared-pass consistency.

Oracles: an identity "SAE" (W_enc = [I, −I], W_dec = [I; −I], so x̂ = relu(x) − relu(−x) = x)
must give delta LM loss and KL exactly 0; an all-zero SAE must give the zero-ablation loss; a
random SAE's delta loss and KL must match a direct ``model.forward(..., replace=...)`` with the
cross-entropy computed in numpy.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle_saes import identity_sae, zero_sae
from tiny_model import random_params

from gemmascope import eval as gs_eval
from gemmascope import model
from gemmascope.eval.sweep_eval import SaeEntry, evaluate_saes

CFG = model.presets.tiny(num_hidden_layers=2)
SITE = "resid_post/1"
D = CFG.hidden_size


@pytest.fixture(scope="module")
def setup():
    params = random_params(CFG, seed=0, std=0.1)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, CFG.vocab_size, size=(3, 10)).astype(np.int32)
    tokens[:, 0] = CFG.bos_token_id
    tokens[1, 5] = 1  # an EOS inside a sequence
    tokens[2, -2:] = CFG.pad_token_id
    return params, tokens


def _entry(name, params, site=SITE):
    width = params["W_enc"].shape[1]
    config = {
        "site": site,
        "kind": site.split("/")[0],
        "layer": int(site.split("/")[1]),
        "d_in": D,
        "width": width,
        "architecture": "test",
    }
    return SaeEntry(
        folder=f"/fake/{name}",
        config=config,
        params={k: np.asarray(v, np.float32) for k, v in params.items()},
    )


def _random(seed, d=D):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d, 2 * d)) / np.sqrt(d),
        "W_dec": rng.normal(size=(2 * d, d)) / np.sqrt(2 * d),
        "b_enc": rng.normal(size=2 * d) * 0.1,
        "b_dec": rng.normal(size=d) * 0.1,
        "threshold": np.full(2 * d, 0.5),
    }


@functools.partial(jax.jit, static_argnames="site")
def _direct_forwards(params, tokens, sae, keep, site=SITE):
    """Clean logits, the site's activations and logits with the SAE spliced at `site`'s `keep`.

    One compiled program serves every SAE of the same shapes.
    """

    def splice(a):
        pre = a @ sae["W_enc"] + sae["b_enc"]
        f = jnp.where(pre > sae["threshold"], jax.nn.relu(pre), 0.0)
        return jnp.where(keep[..., None], f @ sae["W_dec"] + sae["b_dec"], a)

    clean, acts = model.forward(CFG, params, tokens, capture=[site])
    spliced, _ = model.forward(CFG, params, tokens, replace={site: splice})
    return clean, acts[site], spliced


def _oracle(params, tokens, sae, keep=None, site=SITE):
    """Delta loss and KL by a direct spliced forward and numpy cross-entropy, over `keep`.

    `keep` defaults to every position but BOS, EOS and pad.
    """
    if keep is None:
        keep = ~np.isin(tokens, [CFG.pad_token_id, CFG.eos_token_id, CFG.bos_token_id])
    clean, acts, spliced = _direct_forwards(
        params, jnp.asarray(tokens), sae, jnp.asarray(keep), site=site
    )

    def logp(z):
        z = np.asarray(z, np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = logp(clean), logp(spliced)
    counted = keep[:, :-1] & keep[:, 1:]
    targets = tokens[:, 1:]
    ce_p = -np.take_along_axis(lp[:, :-1], targets[..., None], -1)[..., 0]
    ce_q = -np.take_along_axis(lq[:, :-1], targets[..., None], -1)[..., 0]
    kl = np.sum(np.exp(lp[:, :-1]) * (lp[:, :-1] - lq[:, :-1]), -1)
    x = np.asarray(acts, np.float64)[keep]
    return {
        "delta_loss": ce_q[counted].mean() - ce_p[counted].mean(),
        "kl_div": kl[counted].mean(),
        "clean_loss": ce_p[counted].mean(),
        "spliced_loss": ce_q[counted].mean(),
        "x": x,
    }


def _eval_cfg(**overrides):
    cfg = gs_eval.default_config()
    cfg.batch_size = 2  # 3 sequences: the second batch has a masked padding row
    cfg.splice_batch = 2  # chunks of 2 SAEs, the last one padded when the group is odd
    cfg.update(overrides)
    return cfg


def test_identity_zero_and_random_saes_against_direct_splicing(setup):
    params, tokens = setup
    saes = [
        _entry("identity", identity_sae(D)),
        _entry("zeros", zero_sae(D)),
        _entry("random", _random(1)),
        _entry("identity0", identity_sae(D), site="mlp_out/0"),
        # Chunks of 2: [references], [identity, zeros], [random, identity_late]: identities
        # at both positions of a chunk, in the first and a later chunk.
        _entry("identity_late", identity_sae(D)),
    ]
    results = evaluate_saes(CFG, params, tokens, saes, _eval_cfg())
    identity, zeros, random, identity0, identity_late = (r[0] for r in results)

    for exact in (identity, identity0, identity_late):
        # Exact: delta CE and KL are taken against the group's reference element, which runs
        # the same compiled program as the splices (the reconstruction is exact: fvu == 0).
        assert exact["delta_loss"] == 0.0 and exact["kl_div"] == 0.0
        assert exact["fvu"] == 0.0 and exact["cosine_similarity"] == pytest.approx(1.0)
        assert exact["l0"] == pytest.approx(D, rel=0.05)  # one of relu(x), relu(-x) fires
    # Zero SAE = zero ablation (special positions keep their activation in both).
    assert zeros["spliced_loss"] == pytest.approx(zeros["zero_ablation_loss"], rel=1e-6)
    assert zeros["loss_recovered"] == pytest.approx(0.0, abs=1e-3)
    assert identity["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert zeros["l0"] == 0.0 and zeros["frac_dead"] == 1.0
    oracle_zero = _oracle(
        params, tokens, {k: jnp.asarray(v, jnp.float32) for k, v in zero_sae(D).items()}
    )
    assert zeros["spliced_loss"] == pytest.approx(oracle_zero["spliced_loss"], rel=1e-5)
    assert zeros["clean_loss"] == pytest.approx(oracle_zero["clean_loss"], rel=1e-5)
    # A random SAE against the direct oracle.
    rnd = {k: jnp.asarray(v, jnp.float32) for k, v in _random(1).items()}
    oracle = _oracle(params, tokens, rnd)
    assert abs(random["delta_loss"]) > 0.01  # the splice changes the loss
    assert random["delta_loss"] == pytest.approx(oracle["delta_loss"], rel=1e-4)
    assert random["kl_div"] == pytest.approx(oracle["kl_div"], rel=1e-4)
    x = oracle["x"]
    pre = x @ np.asarray(rnd["W_enc"], np.float64) + np.asarray(rnd["b_enc"], np.float64)
    f = np.where(pre > 0.5, pre, 0.0)
    x_hat = f @ np.asarray(rnd["W_dec"], np.float64) + np.asarray(rnd["b_dec"], np.float64)
    assert random["eval_tokens"] == len(x)
    assert random["l0"] == pytest.approx(np.mean(np.sum(f > 0, -1)), rel=1e-6)
    assert random["fvu"] == pytest.approx(
        np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2), rel=1e-4
    )


def test_an_sae_on_mlp_in_against_direct_splicing(setup):
    """mlp_in (the MLP's input, what transcoders read) is evaluated like any other site."""
    params, tokens = setup
    site = "mlp_in/1"
    rnd = {k: jnp.asarray(v, jnp.float32) for k, v in _random(2).items()}
    oracle = _oracle(params, tokens, rnd, site=site)
    got, _ = evaluate_saes(CFG, params, tokens, [_entry("r", _random(2), site=site)], _eval_cfg())[
        0
    ]
    assert abs(oracle["delta_loss"]) > 0.01  # the splice changes the loss
    assert got["delta_loss"] == pytest.approx(oracle["delta_loss"], rel=1e-4)
    assert got["kl_div"] == pytest.approx(oracle["kl_div"], rel=1e-4)
    assert got["eval_tokens"] == len(oracle["x"])


def test_given_positions_are_the_only_ones_measured_and_spliced(setup):
    # As with a chat template's user prefix (data.trained_positions): positions 1-2 of every
    # row are not SAE positions, so they keep their activation and are not scored.
    params, tokens = setup
    positions = ~np.isin(tokens, [CFG.pad_token_id, CFG.eos_token_id, CFG.bos_token_id])
    positions[:, 1:3] = False
    rnd = {k: jnp.asarray(v, jnp.float32) for k, v in _random(1).items()}
    oracle = _oracle(params, tokens, rnd, keep=positions)
    default = _oracle(params, tokens, rnd)
    assert abs(oracle["delta_loss"] - default["delta_loss"]) > 1e-3  # the mask matters
    got, _ = evaluate_saes(
        CFG, params, tokens, [_entry("random", _random(1))], _eval_cfg(), positions
    )[0]
    assert got["eval_tokens"] == positions.sum() == len(oracle["x"])
    assert got["delta_loss"] == pytest.approx(oracle["delta_loss"], rel=1e-4)
    assert got["kl_div"] == pytest.approx(oracle["kl_div"], rel=1e-4)
    with pytest.raises(ValueError, match="positions has shape \\(3, 9\\) but tokens \\(3, 10\\)"):
        evaluate_saes(CFG, params, tokens, [_entry("r", _random(1))], _eval_cfg(), positions[:, 1:])


def test_batched_sweep_equals_one_by_one(setup):
    params, tokens = setup
    saes = [_entry(f"r{i}", _random(10 + i)) for i in range(3)]
    together = evaluate_saes(CFG, params, tokens, saes, _eval_cfg())
    for entry, (metrics_together, details_together) in zip(saes, together, strict=True):
        alone, details_alone = evaluate_saes(CFG, params, tokens, [entry], _eval_cfg())[0]
        for key, value in alone.items():
            assert metrics_together[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        assert details_together["firing_histogram"] == details_alone["firing_histogram"]
    # Without LM metrics no spliced pass runs: the same reconstruction metrics, NaN LM columns.
    recon_only, _ = evaluate_saes(CFG, params, tokens, saes[:1], _eval_cfg(lm_metrics=False))[0]
    assert recon_only["fvu"] == pytest.approx(together[0][0]["fvu"], rel=1e-6)
    assert np.isnan(recon_only["delta_loss"]) and np.isnan(recon_only["kl_div"])
    assert recon_only["clean_loss"] == pytest.approx(together[0][0]["clean_loss"], rel=1e-6)


def _wide_random(seed, width):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(D, width)) / np.sqrt(D),
        "W_dec": rng.normal(size=(width, D)) / np.sqrt(width),
        "b_enc": rng.normal(size=width) * 0.1,
        "b_dec": rng.normal(size=D) * 0.1,
        "threshold": np.full(width, 0.5),
    }


def test_widths_of_one_site_share_a_padded_group_and_keep_their_metrics(setup):
    """SAEs of 2D and 3D latents are spliced in one program; each still equals its lone run."""
    params, tokens = setup
    topk = {"type": "topk", "k": 3}
    saes = [
        _entry("identity", identity_sae(D)),  # width 2D, exact
        _entry("wide", _wide_random(20, 3 * D)),
        _entry("narrow", _wide_random(21, D)),
        dataclasses.replace(_entry("topk_wide", _wide_random(22, 3 * D)), encoder=topk),
        dataclasses.replace(_entry("topk_narrow", _wide_random(23, D)), encoder=topk),
    ]
    together = evaluate_saes(CFG, params, tokens, saes, _eval_cfg())
    identity = together[0][0]
    assert identity["delta_loss"] == 0.0 and identity["kl_div"] == 0.0 and identity["fvu"] == 0.0
    # The padded members (narrower than the group's 3D) against their lone runs; the 3D ones
    # are the group's own width, so padding cannot touch them (one program per lone run: the
    # suite's time).
    padded = {"/fake/narrow", "/fake/topk_narrow"}
    assert padded < {entry.folder for entry in saes}
    for entry, (metrics_together, details_together) in zip(saes, together, strict=True):
        if entry.folder not in padded:
            continue
        alone, details_alone = evaluate_saes(CFG, params, tokens, [entry], _eval_cfg())[0]
        for key, value in alone.items():
            assert metrics_together[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (
                entry.folder,
                key,
            )
        # Dead and dense fractions and the histogram count the SAE's own latents only.
        assert details_together["firing_histogram"] == details_alone["firing_histogram"]
        histogram = details_together["firing_histogram"]
        assert sum(histogram["counts"]) + histogram["dead"] == entry.width


def test_bad_inputs_are_clear_errors(setup):
    params, tokens = setup
    with pytest.raises(ValueError, match="no SAEs"):
        evaluate_saes(CFG, params, tokens, [], _eval_cfg())
    with pytest.raises(ValueError, match="does not match site"):
        evaluate_saes(CFG, params, tokens, [_entry("x", identity_sae(8))], _eval_cfg())
