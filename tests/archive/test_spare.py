"""Blocks of evicted decoded chunks, reused only when no array refers to them any more."""

from __future__ import annotations

import numpy as np

from scdl_gpu.archive._spare import ROUND, SpareBlocks


def test_a_block_is_reused_only_when_nothing_refers_to_it():
    s = SpareBlocks()
    a = s.empty(1000, np.float32)
    a[:] = 7
    s.give([a])
    view = a[10:20]  # a caller still holds part of the chunk
    del a
    b = s.empty(1000, np.float32)
    assert s.reused == 0 and b.base is not view.base
    b[:] = 0
    assert (view == 7).all()  # untouched
    del view
    c = s.empty(900, np.float32)  # nothing refers to the first block now
    assert s.reused == 1 and c.nbytes == 3600


def test_sizes_dtypes_and_what_is_not_taken_back():
    s = SpareBlocks(max_blocks=2)
    assert s.empty(0, np.uint16).shape == (0,)
    blocks = [s.empty(100, np.uint8) for _ in range(3)]
    assert all(b.base.nbytes == ROUND for b in blocks)
    s.give(blocks + [np.empty(100)])  # an array not made here is ignored
    del blocks
    assert len(s._free) == 2  # the oldest dropped past max_blocks
    assert s.empty(3 * ROUND, np.uint8).base.nbytes == 3 * ROUND and s.reused == 0  # too small to reuse
    big = s.empty(10 * ROUND, np.uint8)
    s.give([big])
    del big
    small = s.empty(ROUND // 2, np.uint16)  # the smallest block that fits; never one over twice the request
    assert small.base.nbytes == ROUND and s.reused == 1
    assert small.dtype == np.uint16 and small.size == ROUND // 2
