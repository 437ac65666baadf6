"""The step's gradient over blocks of tokens against the whole batch's (sae.token_blocks).

The oracle is `jax.value_and_grad` of the same loss over the whole batch (the loss and its custom
VJPs are tested against hand computations elsewhere): blocked, every gradient and metric must
match it to fp32 rounding where the loss is a mean of per-token terms, and the step must not
split a loss that is not (a batch-wide selection, the frequency penalty, AuxK with dead latents),
where splitting gives a visibly different gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import sae
from gemmascope.sae import token_blocks

D_IN, WIDTH, BATCH, BLOCK = 24, 96, 256, 64


def _batch(seed=0, d=D_IN):
    key = jax.random.key(seed)
    # A mean and unequal scales, so per-block statistics differ from the batch's.
    scales = jnp.linspace(0.2, 1.5, d)
    return jax.random.normal(key, (BATCH, d)) * scales / np.sqrt(d) + 0.05


def _cfg(name, **fields):
    cfg = sae.ARCHITECTURES[name].default_config()
    if "bandwidth" in cfg:
        cfg.bandwidth = 0.05  # wide enough that many pre-activations are in the STE window
        cfg.threshold_init = 0.05
    cfg.update(fields)
    return cfg


def _setup(name, cfg, batch=None, d_out=None):
    arch = sae.ARCHITECTURES[name]
    params = arch.init(jax.random.key(1), D_IN, WIDTH, cfg)
    batch = _batch() if batch is None else batch
    coeffs = arch.coeffs(cfg, 10_000, cfg[arch.sweep_field(cfg)])
    trainable, buffers = sae.train_step.split_buffers(params)

    def loss_fn(trainable, block):
        return sae.batch_loss(arch, {**trainable, **buffers}, block, coeffs, cfg)

    return arch, params, trainable, batch, loss_fn


def _assert_close(blocked, whole):
    (loss_b, metrics_b), grads_b = blocked
    (loss_w, metrics_w), grads_w = whole
    np.testing.assert_allclose(loss_b, loss_w, rtol=2e-5)
    for name, grad in grads_w.items():
        scale = float(jnp.max(jnp.abs(grad))) + 1e-12
        np.testing.assert_allclose(grads_b[name], grad, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    assert set(metrics_b) == set(metrics_w)
    np.testing.assert_array_equal(metrics_b["fired"], metrics_w["fired"])
    for name in metrics_w:
        np.testing.assert_allclose(metrics_b[name], metrics_w[name], rtol=2e-5, err_msg=name)


SEPARABLE = [
    ("jumprelu", {}),
    ("jumprelu", {"threshold_param": "raw", "sparsity_form": "target_l0", "target_l0": 8.0}),
    ("jumprelu", {"sparsity_form": "quadratic", "target_l0": 8.0}),
    ("jumprelu", {"sparse_capacity": 64}),
    ("jumprelu", {"auxk_alpha": 1 / 32, "dead_tokens": 100}),  # nothing dead yet
    ("matryoshka_jumprelu", {}),
    ("gated", {}),
    ("gated", {"unit_norm_decoder": False}),
    ("relu", {}),
    ("topk", {"k": 8}),
]


@pytest.mark.parametrize("name,fields", SEPARABLE, ids=[f"{n}-{sorted(f)}" for n, f in SEPARABLE])
def test_blocked_gradient_and_metrics_equal_the_whole_batch(name, fields):
    arch, params, trainable, batch, loss_fn = _setup(name, _cfg(name, **fields))
    assert bool(arch.token_separable(params, _cfg(name, **fields)))
    whole = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(trainable, batch)
    blocked = jax.jit(lambda t, b: token_blocks.value_and_grad(loss_fn, t, b, BLOCK))(
        trainable, batch
    )
    assert float(whole[0][1]["l0"]) > 0  # the SAE fires: the check is not of zeros
    _assert_close(blocked, whole)


@pytest.mark.parametrize("skip", [False, True])
def test_a_transcoders_pair_is_split_together(skip):
    cfg = _cfg("jumprelu", d_out=D_IN + 8, pre_encoder_bias=False, skip_connection=skip)
    target = _batch(seed=5, d=D_IN + 8)
    _, _, trainable, batch, loss_fn = _setup("jumprelu", cfg, batch=(_batch(), target))
    whole = jax.value_and_grad(loss_fn, has_aux=True)(trainable, batch)
    blocked = token_blocks.value_and_grad(loss_fn, trainable, batch, BLOCK)
    _assert_close(blocked, whole)


def _dead_auxk(name, **fields):
    cfg = _cfg(name, auxk_alpha=1 / 32, dead_tokens=100, **fields)
    arch, params, trainable, batch, loss_fn = _setup(name, cfg)
    params["tokens_since_fired"] = jnp.where(jnp.arange(WIDTH) % 2 == 0, 1000, 0).astype(jnp.int32)
    _, buffers = sae.train_step.split_buffers(params)
    coeffs = arch.coeffs(cfg, 10_000, cfg[arch.sweep_field(cfg)])

    def dead_loss(trainable, block):
        return sae.batch_loss(arch, {**trainable, **buffers}, block, coeffs, cfg)

    return cfg, arch, params, trainable, batch, dead_loss


NOT_SEPARABLE = [
    ("batchtopk", {}),
    ("matryoshka", {}),
    ("jumprelu", {"freq_penalty_scale": 0.05}),
]


@pytest.mark.parametrize("name,fields", NOT_SEPARABLE, ids=[n for n, _ in NOT_SEPARABLE])
def test_losses_of_the_whole_batch_are_not_split(name, fields):
    cfg = _cfg(name, **fields)
    if name in ("batchtopk", "matryoshka"):
        cfg.threshold_start_step = 10  # the threshold's EMA differs per block as well
    arch, params, trainable, batch, loss_fn = _setup(name, cfg)
    assert arch.token_separable(params, cfg) is False
    # Splitting them would change the gradient: the refusal matters.
    whole = jax.value_and_grad(loss_fn, has_aux=True)(trainable, batch)
    blocked = token_blocks.value_and_grad(loss_fn, trainable, batch, BLOCK)
    assert not all(np.allclose(blocked[1][k], whole[1][k], rtol=1e-3, atol=0) for k in whole[1])
    # ... and the step does not: blocked or not, the same program's numbers.
    opt = sae.optimizer(cfg).init(params)
    value = cfg[arch.sweep_field(cfg)]
    plain = sae.make_train_step(name, cfg)(params, opt, batch, 10_000, value)
    asked = sae.make_train_step(name, cfg, block_tokens=BLOCK)(params, opt, batch, 10_000, value)
    jax.tree.map(np.testing.assert_array_equal, asked, plain)


@pytest.mark.parametrize("name", ["jumprelu", "topk"])
def test_auxk_splits_only_while_no_latent_is_dead(name):
    fields = {"k": 8} if name == "topk" else {}
    cfg, arch, params, trainable, batch, dead_loss = _dead_auxk(name, **fields)
    assert not bool(arch.token_separable(params, cfg))
    whole = jax.value_and_grad(dead_loss, has_aux=True)(trainable, batch)
    assert float(whole[0][1]["aux_loss"]) > 0
    # Blocks would normalise AuxK by each block's residual variance, not the batch's.
    blocked = token_blocks.value_and_grad(dead_loss, trainable, batch, BLOCK)
    assert abs(float(blocked[0][1]["aux_loss"]) / float(whole[0][1]["aux_loss"]) - 1) > 1e-3
    # The step sees the dead latents and takes the whole batch: the plain step's update.
    opt = sae.optimizer(cfg).init(params)
    value = cfg[arch.sweep_field(cfg)]
    plain = jax.jit(sae.make_train_step(name, cfg))(params, opt, batch, 10_000, value)
    asked = jax.jit(sae.make_train_step(name, cfg, block_tokens=BLOCK))(
        params, opt, batch, 10_000, value
    )
    for got, want in zip(jax.tree.leaves(asked), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_the_step_in_blocks_matches_the_plain_step():
    cfg = _cfg("jumprelu", lr=1e-3)
    arch = sae.ARCHITECTURES["jumprelu"]
    params = arch.init(jax.random.key(1), D_IN, WIDTH, cfg)
    opt = sae.optimizer(cfg).init(params)
    plain = jax.jit(sae.make_train_step("jumprelu", cfg))
    blocked = jax.jit(sae.make_train_step("jumprelu", cfg, block_tokens=BLOCK))
    p_plain = p_blocked = params
    o_plain = o_blocked = opt
    for step in range(5):
        batch = _batch(seed=step)
        p_plain, o_plain, m_plain = plain(p_plain, o_plain, batch, step, cfg.sparsity_coeff)
        p_blocked, o_blocked, m_blocked = blocked(
            p_blocked, o_blocked, batch, step, cfg.sparsity_coeff
        )
        np.testing.assert_array_equal(m_blocked["fired"], m_plain["fired"])
        np.testing.assert_allclose(m_blocked["fvu"], m_plain["fvu"], rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(p_blocked[name], p_plain[name], rtol=1e-4, atol=1e-6)


def test_block_tokens_must_divide_the_batch():
    with pytest.raises(ValueError, match="does not divide the batch of 4096"):
        token_blocks.check_block_tokens(100, 4096)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="must be an int >= 0"):
            token_blocks.check_block_tokens(bad, 4096)
    with pytest.raises(ValueError, match="does not divide"):
        sae.make_train_step("jumprelu", _cfg("jumprelu"), block_tokens=100)(
            *_plain_args("jumprelu")
        )


def _plain_args(name):
    cfg = _cfg(name)
    arch = sae.ARCHITECTURES[name]
    params = arch.init(jax.random.key(1), D_IN, WIDTH, cfg)
    return params, sae.optimizer(cfg).init(params), _batch(), 0, cfg[arch.sweep_field(cfg)]


@pytest.mark.parametrize(
    "batch,width,requested,platform,shards,expected",
    [
        (4096, 4096, None, "cpu", 1, token_blocks.DEFAULT_BLOCK_TOKENS),
        (4096, 256, None, "cpu", 1, token_blocks.DEFAULT_BLOCK_TOKENS),  # 2^20 elements
        (512, 256, None, "cpu", 1, 0),  # small arrays stay in cache: no blocks (the demo's)
        (4096, 4096, None, "gpu", 1, 0),
        (4096, 4096, None, "tpu", 1, 0),
        (4096, 4096, None, "cpu", 2, 0),  # a batch split over devices keeps the whole batch
        (256, 2**16, None, "cpu", 1, 0),  # a single block: nothing to split
        (1000, 4096, None, "cpu", 1, 0),  # 256 does not divide it
        (4096, 128, 512, "gpu", 4, 512),
        (4096, 4096, 4096, "cpu", 1, 0),
        (4096, 4096, 0, "cpu", 1, 0),
    ],
)
def test_block_tokens_for(batch, width, requested, platform, shards, expected):
    assert token_blocks.block_tokens_for(batch, width, requested, platform, shards) == expected
