"""prefetch: same items in order, producer errors reach the consumer, closing stops the thread."""

import threading

import pytest

from gemmascope.activations.global_batch import prefetch


def test_items_in_order_and_errors_propagate():
    assert list(prefetch(iter(range(50)), 3)) == list(range(50))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield 1
        raise RuntimeError("disk gone")

    it = prefetch(failing(), 2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="disk gone"):
        next(it)


def test_closing_stops_the_producer():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    it = prefetch(endless(), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert threading.active_count() == before
    count = len(produced)
    assert count <= 3 + 2 + 1  # consumed + queue + the one in hand when stopped
