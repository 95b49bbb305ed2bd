"""Pinned host memory that CUDA kernels read directly (mapped, zero-copy), as CuPy arrays.

With unified addressing (every 64-bit CUDA platform) page-locked memory from ``cudaHostAlloc`` is
mapped into the device's address space at the same address, so a CuPy array over that pointer is
read by kernels over the bus, with no staging copy.
"""

from __future__ import annotations

import numpy as np


def mapped_empty(n: int, dtype) -> tuple[np.ndarray, object]:
    """``(host, device)``: one pinned, mapped allocation of ``n`` items seen as a NumPy array (to
    fill) and as a CuPy array (for kernels); the device view keeps the allocation alive."""
    import cupy as cp

    dtype, n = np.dtype(dtype), int(n)
    nbytes = max(n * dtype.itemsize, 1)
    mem = cp.cuda.PinnedMemory(nbytes, cp.cuda.runtime.hostAllocMapped | cp.cuda.runtime.hostAllocPortable)
    host = np.ndarray((n,), dtype=dtype, buffer=cp.cuda.PinnedMemoryPointer(mem, 0))  # as cupyx.empty_pinned
    # Unified addressing: the device sees the allocation at the host address.
    unowned = cp.cuda.UnownedMemory(mem.ptr, nbytes, mem, cp.cuda.runtime.getDevice())
    device = cp.ndarray((n,), dtype, cp.cuda.MemoryPointer(unowned, 0))
    return host, device
