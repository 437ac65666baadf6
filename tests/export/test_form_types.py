"""The training form and the released form cannot be mixed up: each reader refuses the other.

Both forms hold the same five arrays (W_enc, W_dec, b_enc, b_dec, threshold) but encode
differently: the training form subtracts b_dec before encoding and works in units of x / C, the
released form (a params.npz) has b_dec and C folded in (docs/recipe.md#folding). Fed to the wrong
encoder they give wrong latents without any error, so the forms are told apart by type.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import export, sae
from gemmascope.eval import metrics

D, WIDTH, C = 6, 10, 3.0


@pytest.fixture
def forms(tmp_path):
    """(training form, the released dict read back from its params.npz, raw inputs)."""
    cfg = sae.ARCHITECTURES["jumprelu"].default_config()
    params = sae.ARCHITECTURES["jumprelu"].init(jax.random.key(0), D, WIDTH, cfg)
    rng = np.random.default_rng(0)
    params["b_dec"] = jnp.asarray(rng.normal(size=D) * 0.3, jnp.float32)
    params["log_threshold"] = jnp.full((WIDTH,), np.log(0.05), jnp.float32)
    form = sae.to_jumprelu(params, "jumprelu", cfg)
    path = os.path.join(tmp_path, "params.npz")
    export.save_npz(path, export.fold(form, C))
    released = {k: jnp.asarray(v) for k, v in export.load_npz(path).items()}
    x_raw = jnp.asarray(rng.normal(size=(32, D)) * C / np.sqrt(D), jnp.float32)
    return form, released, x_raw


def test_each_form_through_its_own_reader_gives_the_same_latents(forms):
    form, released, x_raw = forms
    f_train = sae.encode_training_form(form, x_raw / C)
    f_raw = metrics.encode_released(released, x_raw)
    assert 0 < float(jnp.mean(f_train > 0)) < 1
    np.testing.assert_allclose(f_raw, C * f_train, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        metrics.decode_released(released, f_raw),
        C * sae.decode_training_form(form, f_train),
        rtol=1e-4,
        atol=1e-4,
    )
    # The same arrays read by the other rule are different latents: why the types must differ.
    plain = {k: form[k] for k in form}
    assert not np.allclose(metrics.encode_released(plain, x_raw / C), f_train, atol=1e-3)


def test_a_released_params_npz_is_refused_by_the_training_form_readers(forms):
    _, released, x_raw = forms
    with pytest.raises(TypeError, match="encode_training_form takes the TrainingForm .* dict"):
        sae.encode_training_form(released, x_raw)
    with pytest.raises(TypeError, match="decode_training_form takes the TrainingForm"):
        sae.decode_training_form(released, jnp.ones((2, WIDTH)))
    with pytest.raises(TypeError, match="export.fold takes the TrainingForm"):  # a double fold
        export.fold(released, C)


def test_the_training_form_is_refused_by_the_released_readers_and_writer(forms, tmp_path):
    form, _, x_raw = forms
    with pytest.raises(TypeError, match="encode_released takes released .* TrainingForm"):
        metrics.encode_released(form, x_raw)
    with pytest.raises(TypeError, match="topk_encode_released takes released"):
        metrics.topk_encode_released(form, x_raw, 2, 2)
    with pytest.raises(TypeError, match="decode_released takes released"):
        metrics.decode_released(form, jnp.ones((2, WIDTH)))
    path = os.path.join(tmp_path, "unfolded", "params.npz")
    with pytest.raises(TypeError, match="fold"):
        export.save_npz(path, form)
    assert not os.path.exists(path)


def test_the_training_form_is_a_mapping_and_a_pytree(forms):
    form, _, x_raw = forms
    assert list(form) == list(export.NPZ_KEYS) and form["threshold"] is form.threshold
    with pytest.raises(KeyError, match="no 'W_gate'"):
        form["W_gate"]
    as_numpy = jax.tree.map(np.asarray, form)
    assert isinstance(as_numpy, sae.TrainingForm) and isinstance(as_numpy.W_enc, np.ndarray)
    # It goes through jit and vmap as itself (the readers still accept it inside).
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), form)
    got = jax.jit(jax.vmap(sae.encode_training_form, in_axes=(0, None)))(stacked, x_raw)
    np.testing.assert_allclose(got[1], sae.encode_training_form(form, x_raw), rtol=1e-6)
