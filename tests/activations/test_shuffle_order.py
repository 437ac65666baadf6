"""ShuffleOrder: each epoch a permutation, deterministic, windows of whole random blocks."""

import numpy as np
import pytest

from gemmascope.activations.shuffle import ShuffleOrder


@pytest.mark.parametrize(
    "n_tokens, block_rows, window_tokens",
    [(1000, 1000, 1000), (1000, 64, 256), (1003, 64, 200), (17, 4, 1), (5, 8, 100)],
)
def test_every_epoch_is_a_permutation(n_tokens, block_rows, window_tokens):
    order = ShuffleOrder(n_tokens, seed=3, block_rows=block_rows, window_tokens=window_tokens)
    for epoch in range(3):
        rows = order.rows(epoch * n_tokens, (epoch + 1) * n_tokens)
        np.testing.assert_array_equal(np.sort(rows), np.arange(n_tokens))


def test_deterministic_and_seed_and_epoch_dependent():
    def stream(seed):
        return ShuffleOrder(1000, seed, block_rows=50, window_tokens=300).rows(0, 3000)

    a, b, c = stream(0), stream(0), stream(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:1000], a[1000:2000]), "epochs must be reshuffled"
    assert not np.array_equal(a[:1000], np.arange(1000))


def test_pieces_concatenate_to_the_whole_stream():
    order = ShuffleOrder(1003, seed=7, block_rows=64, window_tokens=200)
    whole = order.rows(0, 2500)
    fresh = ShuffleOrder(1003, seed=7, block_rows=64, window_tokens=200)
    cuts = [0, 1, 190, 191, 600, 1003, 1004, 2000, 2500]
    pieces = [fresh.rows(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    # Random access (going back to an earlier epoch) gives the same rows.
    np.testing.assert_array_equal(fresh.rows(5, 700), whole[5:700])


def test_windows_hold_whole_random_blocks():
    block_rows, k = 10, 4
    order = ShuffleOrder(1000, seed=1, block_rows=block_rows, window_tokens=k * block_rows)
    first_window = order.rows(0, k * block_rows)
    blocks = np.unique(first_window // block_rows)
    assert len(blocks) == k, "a window is exactly k whole blocks"
    assert np.ptp(blocks) > k, "its blocks come from across the array, not one contiguous slice"
    # Within the window, rows are mixed: not in block-by-block order.
    assert not np.all(np.diff(first_window // block_rows) >= 0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="seed"):
        ShuffleOrder(10, -1, 2, 2)
    with pytest.raises(ValueError, match="n_tokens"):
        ShuffleOrder(0, 0, 2, 2)
    with pytest.raises(ValueError, match="block_rows"):
        ShuffleOrder(10, 0, 0, 2)
    with pytest.raises(ValueError, match="start"):
        ShuffleOrder(10, 0, 2, 2).rows(5, 4)
