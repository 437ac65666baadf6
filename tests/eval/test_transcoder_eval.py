"""Transcoders in the sweep evaluator: their output spliced in place of the MLP's, on a tiny model.

Oracles:
- exact: no JumpReLU transcoder reproduces a GeGLU MLP and its RMSNorm bitwise, so the exact case
  is a model whose layer-1 MLP output is identically 0 (post-norm scale 1 + w = 0), which a
  transcoder with a zero decoder reproduces exactly: delta loss and KL must be exactly 0 (the
  splice runs in the same compiled program as the reference elements, as for SAEs);
- a skip-transcoder whose skip term is the MLP's best affine fit (numpy lstsq of mlp_out on
  mlp_in over the evaluated tokens): its FVU must be numpy's lstsq residual fraction;
- a random JumpReLU transcoder: delta loss and KL against a direct spliced forward whose MLP
  output is replaced by the transcoder of the *clean* pass's mlp_in (a separate pass), with the
  cross-entropy in numpy; L0 and FVU in numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sweep_eval import CFG, D, _eval_cfg, _oracle
from tiny_model import random_params

from gemmascope import model
from gemmascope.eval.sweep_eval import SaeEntry, evaluate_saes

IN, OUT = "mlp_in/1", "mlp_out/1"


@pytest.fixture(scope="module")
def setup():
    """The tiny model and token batch of test_sweep_eval (with an EOS inside and padding)."""
    params = random_params(CFG, seed=0, std=0.1)
    tokens = np.random.default_rng(0).integers(3, CFG.vocab_size, size=(3, 10)).astype(np.int32)
    tokens[:, 0] = CFG.bos_token_id
    tokens[1, 5] = 1
    tokens[2, -2:] = CFG.pad_token_id
    return params, tokens


def _entry(name, params, site=IN, target=OUT):
    config = {
        "site": site,
        "target_site": target,
        "kind": "transcoder",
        "layer": 1,
        "d_in": D,
        "d_out": D,
        "width": params["W_enc"].shape[1],
        "architecture": "test",
    }
    return SaeEntry(
        folder=f"/fake/{name}",
        config=config,
        params={k: np.asarray(v, np.float32) for k, v in params.items()},
    )


def _random(seed, skip=False):
    rng = np.random.default_rng(seed)
    params = {
        "W_enc": rng.normal(size=(D, 2 * D)) / np.sqrt(D),
        "W_dec": rng.normal(size=(2 * D, D)) / np.sqrt(2 * D),
        "b_enc": rng.normal(size=2 * D) * 0.1,
        "b_dec": rng.normal(size=D) * 0.1,
        "threshold": np.full(2 * D, 0.5),
    }
    if skip:
        params["W_skip"] = rng.normal(size=(D, D)) / np.sqrt(D)
    return params


def _clean_sites(params, tokens):
    keep = ~np.isin(tokens, CFG.special_token_ids)
    _, acts = jax.jit(lambda p, t: model.forward(CFG, p, t, capture=[IN, OUT]))(params, tokens)
    return keep, np.asarray(acts[IN]), np.asarray(acts[OUT])


def _transcoder_oracle(params, tokens, tc):
    """The kept-token mask and the transcoder's output of the clean pass's mlp_in, in numpy."""
    keep, x_in, _ = _clean_sites(params, tokens)
    pre = x_in.astype(np.float64) @ tc["W_enc"] + tc["b_enc"]
    y = np.where(pre > tc["threshold"], pre, 0.0) @ tc["W_dec"] + tc["b_dec"]
    if "W_skip" in tc:
        y = y + x_in @ tc["W_skip"]
    return keep, jnp.asarray(np.where(keep[..., None], y, 0.0), jnp.float32)


def _direct(params, tokens, spliced_out, keep):
    """Delta loss and KL with mlp_out/1 replaced by ``spliced_out`` at kept tokens (numpy CE)."""
    run = jax.jit(
        lambda p, t, y, k: (
            model.forward(CFG, p, t)[0],
            model.forward(CFG, p, t, replace={OUT: lambda a: jnp.where(k[..., None], y, a)})[0],
        )
    )
    clean, spliced = (np.asarray(v, np.float64) for v in run(params, tokens, spliced_out, keep))

    def logp(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = logp(clean), logp(spliced)
    counted = keep[:, :-1] & keep[:, 1:]
    target = tokens[:, 1:, None]
    ce_p = -np.take_along_axis(lp[:, :-1], target, -1)[..., 0]
    ce_q = -np.take_along_axis(lq[:, :-1], target, -1)[..., 0]
    kl = np.sum(np.exp(lp[:, :-1]) * (lp[:, :-1] - lq[:, :-1]), -1)
    return (ce_q - ce_p)[counted].mean(), kl[counted].mean()


def test_an_exact_transcoder_gives_exactly_zero_delta_loss(setup):
    params, tokens = setup
    layers = list(params["layers"])
    layers[1] = {**layers[1], "post_ffw_norm": -jnp.ones_like(layers[1]["post_ffw_norm"])}
    params = {**params, "layers": layers}
    _, _, y = _clean_sites(params, tokens)
    assert not np.any(y)  # the MLP's output is identically 0
    exact = {**_random(0, skip=True), "b_enc": np.full(2 * D, 1.0)}  # latents fire: L0 > 0
    exact.update(W_dec=np.zeros((2 * D, D)), b_dec=np.zeros(D), W_skip=np.zeros((D, D)))
    got = evaluate_saes(CFG, params, tokens, [_entry("exact", exact)], _eval_cfg())[0][0]
    assert got["delta_loss"] == 0.0 and got["kl_div"] == 0.0 and got["l0"] > 1
    assert got["recon_loss"] == 0.0


def test_skip_transcoder_with_the_best_affine_fit_against_numpy_lstsq(setup):
    params, _ = setup
    # More tokens (about 200) than the fit's D + 1 = 65 unknowns per output.
    tokens = np.random.default_rng(1).integers(3, CFG.vocab_size, size=(16, 14)).astype(np.int32)
    tokens[:, 0] = CFG.bos_token_id
    keep, x_in, y_out = _clean_sites(params, tokens)
    x, y = x_in[keep].astype(np.float64), y_out[keep].astype(np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    fvu = np.sum((y - design @ solution) ** 2) / np.sum((y - y.mean(0)) ** 2)
    assert 0.05 < fvu < 0.95  # the MLP is neither linear nor unrelated to its input
    linear = {
        "W_enc": np.zeros((D, 4)),
        "b_enc": np.zeros(4),
        "threshold": np.ones(4),  # no latent ever fires: the output is the affine part only
        "W_dec": np.zeros((4, D)),
        "b_dec": solution[-1],
        "W_skip": solution[:-1],
    }
    got = evaluate_saes(CFG, params, tokens, [_entry("linear", linear)], _eval_cfg())[0][0]
    assert got["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert got["l0"] == 0.0 and got["frac_dead"] == 1.0
    affine = np.where(keep[..., None], x_in @ solution[:-1] + solution[-1], 0.0)
    delta, kl = _direct(params, tokens, jnp.asarray(affine, jnp.float32), jnp.asarray(keep))
    assert got["delta_loss"] == pytest.approx(delta, rel=1e-3, abs=1e-6)
    assert got["kl_div"] == pytest.approx(kl, rel=1e-3, abs=1e-7)


def test_a_random_transcoder_and_an_sae_in_one_evaluation(setup):
    # (Skip terms are covered by the exact and the lstsq tests.)
    params, tokens = setup
    tc = _random(3)
    keep, spliced = _transcoder_oracle(params, tokens, tc)
    delta, kl = _direct(params, tokens, spliced, jnp.asarray(keep))
    sae = _random(4)
    sae_entry = SaeEntry(
        folder="/fake/sae",
        config={"site": OUT, "kind": "mlp_out", "layer": 1, "d_in": D, "width": 2 * D},
        params={k: np.asarray(v, np.float32) for k, v in sae.items()},
    )
    results = evaluate_saes(CFG, params, tokens, [_entry("tc", tc), sae_entry], _eval_cfg())
    got, sae_got = results[0][0], results[1][0]
    assert abs(delta) > 0.01  # the splice changes the loss
    assert got["delta_loss"] == pytest.approx(delta, rel=1e-4)
    assert got["kl_div"] == pytest.approx(kl, rel=1e-4)
    _, x_in, y_out = _clean_sites(params, tokens)
    x, y = x_in[keep].astype(np.float64), y_out[keep].astype(np.float64)
    pre = x @ tc["W_enc"] + tc["b_enc"]
    f = np.where(pre > 0.5, pre, 0.0)
    y_hat = f @ tc["W_dec"] + tc["b_dec"]
    assert got["l0"] == pytest.approx(np.mean(np.sum(f > 0, -1)), rel=1e-6)
    fvu = np.sum((y - y_hat) ** 2) / np.sum((y - y.mean(0)) ** 2)
    assert got["fvu"] == pytest.approx(fvu, rel=1e-4)
    # Both write mlp_out/1: one zero-ablation, one clean loss, their own splices.
    assert got["zero_ablation_loss"] == sae_got["zero_ablation_loss"]
    as_jax = {k: jnp.asarray(v, jnp.float32) for k, v in sae.items()}
    sae_oracle = _oracle(params, tokens, as_jax, site=OUT)
    assert sae_got["delta_loss"] == pytest.approx(sae_oracle["delta_loss"], rel=1e-4)


def test_transcoders_of_other_site_pairs_are_refused(setup):
    params, tokens = setup
    bad = _entry("bad", _random(0), site="resid_post/0", target=OUT)
    with pytest.raises(ValueError, match="splices transcoders of mlp_in/L -> mlp_out/L"):
        evaluate_saes(CFG, params, tokens, [bad], _eval_cfg())
