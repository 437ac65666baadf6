"""The traced-k selections equal a numpy sort: per row (TopK, AuxK) and over the batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.sae import selection


def _numpy_row_mask(values, k):
    kth = -np.sort(-values, axis=-1)[..., k - 1 : k]
    return values >= kth


# Rows shorter than TOP_K_MIN_WIDTH take the bisection, longer ones lax.top_k: test both paths.
WIDTHS = [40, selection.TOP_K_MIN_WIDTH + 76]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_row_top_k_mask_equals_a_sort_with_a_traced_k(k, width):
    values = np.random.default_rng(k).normal(size=(16, width)).astype(np.float32)
    mask = jax.jit(lambda v, k: selection.row_top_k_mask(v, k, k_max=7))(values, k)
    np.testing.assert_array_equal(mask, _numpy_row_mask(values, k))
    np.testing.assert_array_equal(np.sum(mask, -1), k)


@pytest.mark.parametrize("width", WIDTHS)
def test_row_top_k_mask_under_vmap_keeps_each_members_k(width):
    values = np.random.default_rng(0).normal(size=(3, 8, width)).astype(np.float32)
    ks = jnp.array([1, 4, 6], jnp.int32)
    masks = jax.vmap(lambda v, k: selection.row_top_k_mask(v, k, k_max=6))(values, ks)
    for member, k in enumerate([1, 4, 6]):
        np.testing.assert_array_equal(masks[member], _numpy_row_mask(values[member], k))


def test_row_top_k_mask_keeps_ties_and_minus_infinity_rows_like_the_bisection():
    head = np.array(
        [[1.0, 3.0, 3.0, 0.5], [-np.inf, 2.0, -np.inf, -np.inf], [-np.inf] * 4], np.float32
    )
    fill = np.array([[-5.0], [-np.inf], [-np.inf]], np.float32)
    values = np.concatenate([head, np.repeat(fill, selection.TOP_K_MIN_WIDTH, axis=1)], axis=1)
    for k in (1, 2, 3):
        top_k = selection.row_top_k_mask(values, k, k_max=3)
        bisection = selection.bisection_mask(values, k, per_row=True)
        np.testing.assert_array_equal(top_k, bisection)
    # k = 1 keeps both tied 3.0s; the row of -inf keeps everything (the AuxK case: too few dead
    # latents), and relu(-inf) = 0 makes those zeros.
    mask = np.asarray(selection.row_top_k_mask(values, 1, k_max=3))
    np.testing.assert_array_equal(mask[0, :4], [False, True, True, False])
    assert not mask[0, 4:].any() and mask[2].all()


def test_bisection_over_the_whole_batch_equals_a_sort():
    values = np.random.default_rng(1).normal(size=(12, 30)).astype(np.float32)
    for k in (1, 17, 90):
        mask = selection.bisection_mask(values, k)
        kth = -np.sort(-values.ravel())[k - 1]
        np.testing.assert_array_equal(mask, values >= kth)
