"""BufferPool: large outputs reuse blocks once their arrays (and the tensors over them) are gone."""

from __future__ import annotations

import gc

import numpy as np
import torch

from scdl_gpu.backend._pool import MIN_BYTES, BufferPool


def test_small_requests_are_plain_arrays():
    pool = BufferPool()
    a = pool.empty(10, np.float32)
    assert a.base is None and a.dtype == np.float32 and a.shape == (10,)


def test_block_returns_when_the_tensor_over_it_dies():
    pool = BufferPool()
    n = MIN_BYTES // 4 + 5
    a = pool.empty(n, np.float32)
    a[:] = 1.5
    t = torch.from_dlpack(a)
    address = a.ctypes.data
    del a
    gc.collect()
    assert pool.n_free == 0  # the tensor still holds the view
    assert float(t.sum()) == 1.5 * n
    del t
    gc.collect()
    assert pool.n_free == 1
    b = pool.empty(n, np.int32)  # same size class: the same memory, as another dtype
    assert b.ctypes.data == address and b.dtype == np.int32 and b.shape == (n,)
    assert pool.n_free == 0


def test_live_arrays_never_share_a_block_and_sizes_are_matched():
    pool = BufferPool(max_free=2)
    n = MIN_BYTES
    arrays = [pool.empty(n, np.uint8) for _ in range(4)]
    starts = {a.ctypes.data for a in arrays}
    assert len(starts) == 4
    for a in arrays:
        a[:] = 7
    del arrays
    gc.collect()
    assert pool.n_free == 2  # kept at most max_free
    big = pool.empty(8 * n, np.uint8)  # far larger than any free block: fresh memory
    assert big.ctypes.data not in starts and pool.n_free == 2
    tiny_but_pooled = pool.empty(n // 2 + MIN_BYTES // 2, np.uint8)
    assert tiny_but_pooled.nbytes == n // 2 + MIN_BYTES // 2


def test_a_block_freed_by_the_collector_inside_take_does_not_deadlock():
    pool = BufferPool()
    n = MIN_BYTES

    class Cycle:
        pass

    c = Cycle()
    c.me, c.arr = c, pool.empty(n, np.uint8)  # only the cyclic collector can free this array
    del c
    with pool._lock:  # as if inside _take when the collector runs
        gc.collect()
    assert pool.n_free == 1
