"""The background prefetch: order, bounded look-ahead, errors after the items before them, early exit."""

from __future__ import annotations

import threading
import time

import pytest

from scdl_gpu.loader._prefetch import prefetch


def test_items_in_order_for_every_depth():
    for depth in (0, 1, 2, 5):
        assert list(prefetch(iter(range(23)), depth)) == list(range(23))
    assert list(prefetch(iter([]), 2)) == []


def test_look_ahead_is_bounded_by_depth():
    produced = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    it = prefetch(source(), 3)
    for consumed in range(1, 8):
        next(it)
        time.sleep(0.05)  # give the thread every chance to run ahead
        assert len(produced) <= consumed + 3
    it.close()


def test_error_arrives_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise KeyError("broken row")

    got = []
    with pytest.raises(KeyError, match="broken row"):
        for x in prefetch(source(), 4):
            got.append(x)
    assert got == [1, 2]


def test_closing_early_stops_the_thread():
    before = {t.ident for t in threading.enumerate() if t.name == "scdl-prefetch"}
    it = prefetch(iter(range(1000)), 2)
    next(it)
    it.close()
    alive = [t for t in threading.enumerate() if t.name == "scdl-prefetch" and t.ident not in before and t.is_alive()]
    assert alive == []
