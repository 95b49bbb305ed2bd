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

    dtype = np.dtype(dtype)
    nbytes = max(int(n) * dtype.itemsize, 1)
    flags = cp.cuda.runtime.hostAllocMapped | cp.cuda.runtime.hostAllocPortable
    mem = cp.cuda.PinnedMemory(nbytes, flags)
    host = np.frombuffer(cp.cuda.PinnedMemoryPointer(mem, 0), dtype=np.uint8, count=nbytes)[: int(n) * dtype.itemsize].view(dtype)
    device_ptr = cp.cuda.runtime.hostGetDevicePointer(mem.ptr, 0)
    unowned = cp.cuda.UnownedMemory(device_ptr, nbytes, mem, cp.cuda.runtime.getDevice())
    device = cp.ndarray((int(n),), dtype, cp.cuda.MemoryPointer(unowned, 0))
    return host, device
