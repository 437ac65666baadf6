"""The AuxK weight α means what it means in OpenAI's TopK recipe, whatever the data's scale.

Oracle: OpenAI's loss (openai/sparse_autoencoder ``train.py``), written in numpy:
``mse_scale·mse(x̂, x) + α·normalized_mse(f_aux W_dec + b_pre, x − x̂ + b_pre)`` with
``mse_scale = 1 / mean((mean(x) − x)²)`` (here from the batch itself). gemmascope keeps the
Gemma Scope reconstruction term Σ_d (x − x̂)², so its loss must be Var(x) times OpenAI's, with the
same ratio between the AuxK and reconstruction terms. And since both terms of OpenAI's loss are
normalised, that ratio cannot change when the data (with the SAE's biases) is rescaled or shifted.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import sae

D_IN, WIDTH, BATCH, K, K_AUX, ALPHA = 8, 32, 64, 3, 4, 1 / 32
DEAD = np.arange(WIDTH) % 3 == 0  # 11 dead latents >= K_AUX


def _setup(name, seed=0, k_aux=K_AUX):
    arch = sae.ARCHITECTURES[name]
    cfg = arch.default_config()
    cfg.k, cfg.k_aux, cfg.dead_tokens, cfg.auxk_alpha = K, k_aux, 100, ALPHA
    rng = np.random.default_rng(seed)
    params = dict(arch.init(jax.random.key(seed), D_IN, WIDTH, cfg))
    params["b_enc"] = jnp.asarray(rng.normal(size=WIDTH) * 0.1, jnp.float32)
    params["b_dec"] = jnp.asarray(rng.normal(size=D_IN) * 0.1, jnp.float32)
    params["tokens_since_fired"] = jnp.asarray(np.where(DEAD, 100, 0), jnp.int32)
    # Var(x) = 0.09, far from 1, and a large mean (E||x||² ≈ 8), as in LM residual streams.
    x = rng.normal(size=(BATCH, D_IN)) * 0.3 / np.sqrt(D_IN) + rng.normal(size=D_IN)
    return arch, cfg, params, x.astype(np.float32)


def _openai_loss(params, x, k_aux=K_AUX):
    """OpenAI's TopK + AuxK loss (train.py), float64; returns (main, auxk) terms."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    kth = np.sort(pre, axis=-1)[:, -K][:, None]
    latents = np.where(pre >= kth, np.maximum(pre, 0.0), 0.0)
    recons = latents @ p["W_dec"] + p["b_dec"]
    mse_scale = 1.0 / np.mean((x.mean(0) - x) ** 2)
    main = mse_scale * np.mean((recons - x) ** 2)
    masked = pre * DEAD  # OAI's auxk_mask_fn zeroes the live latents' pre-activations
    kth_aux = np.sort(masked, axis=-1)[:, -min(k_aux, WIDTH)][:, None]
    aux_latents = np.where(masked >= kth_aux, np.maximum(masked, 0.0), 0.0)
    output = aux_latents @ p["W_dec"] + p["b_dec"]
    target = x - recons + p["b_dec"]
    normalized_mse = np.mean((output - target) ** 2) / np.mean((target.mean(0) - target) ** 2)
    return main, ALPHA * normalized_mse


# k_aux >= width keeps every dead latent (no selection runs).
@pytest.mark.parametrize("k_aux", [K_AUX, WIDTH + 8])
def test_topk_loss_is_the_batch_variance_times_openais(k_aux):
    arch, cfg, params, x = _setup("topk", k_aux=k_aux)
    total, metrics = jax.jit(lambda p, v: arch.loss(p, v, {"k": K}, cfg))(params, x)
    main, aux = _openai_loss(params, x, k_aux)
    assert aux > 0.01 * main  # AuxK is really on
    variance = np.mean(np.sum((x - x.mean(0)) ** 2, -1))
    np.testing.assert_allclose(float(total), variance * (main + aux), rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["aux_loss"]) / float(metrics["recon_loss"]), aux / main, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka"])
def test_auxk_to_reconstruction_ratio_is_invariant_to_the_data_scale_and_mean(name):
    arch, cfg, params, x = _setup(name)
    loss = jax.jit(lambda p, v: arch.loss(p, v, {"k": K}, cfg)[1])
    scale, shift = 10.0, np.random.default_rng(1).normal(size=D_IN).astype(np.float32) * 3
    # The same SAE on c·x + m: biases follow, so latents scale by c and the residual by c.
    moved = {**params, "b_enc": scale * params["b_enc"], "b_dec": scale * params["b_dec"] + shift}
    ratios = []
    for p, v in ((params, x), (moved, scale * x + shift)):
        metrics = loss(p, jnp.asarray(v))
        assert float(metrics["aux_loss"]) > 0
        ratios.append(float(metrics["aux_loss"]) / float(metrics["recon_loss"]))
    np.testing.assert_allclose(ratios[1], ratios[0], rtol=1e-4)
