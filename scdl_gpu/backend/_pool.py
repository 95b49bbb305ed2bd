"""Host output buffers that are used again once torch lets go of the batch that held them.

A large batch written into fresh memory pays a page fault per 4 KiB touched (the kernel zeroes
each page first): on a 2-core VM that was a third of the CPU time of block-order batches of 4,096
cells. Here each large output array is a view of a pooled block; the view is what the torch tensor
keeps alive (DLPack holds a reference to it), and when the view is collected the block returns to
the pool with its pages still mapped. Small arrays come from ``np.empty`` (malloc reuses those).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

MIN_BYTES = 1 << 20  #: smaller outputs are plain ``np.empty`` arrays
ROUND = 1 << 20  #: blocks are whole MiB, so batches of similar size share them


class BufferPool:
    """Keeps up to ``max_free`` released blocks; a request takes the smallest that fits (at most
    twice its size, so a small batch does not pin a huge block)."""

    def __init__(self, max_free: int = 8, min_bytes: int = MIN_BYTES) -> None:
        self.max_free, self.min_bytes = max_free, min_bytes
        self._free: list[np.ndarray] = []
        # Reentrant: a garbage collection inside _take can free a pooled array of this thread,
        # whose finalizer then gives its block back while the lock is held (appends only).
        self._lock = threading.RLock()

    def empty(self, n: int, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(n) * dtype.itemsize
        if nbytes < self.min_bytes:
            return np.empty(n, dtype)
        block = self._take(nbytes)
        if block is None:
            block = np.empty(-(-nbytes // ROUND) * ROUND, np.uint8)
        out = block[:nbytes].view(dtype)
        weakref.finalize(out, self._give_back, block)
        return out

    def _take(self, nbytes: int) -> np.ndarray | None:
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if nbytes <= b.nbytes <= 2 * nbytes]
            if not fits:
                return None
            return self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))

    def _give_back(self, block: np.ndarray) -> None:
        with self._lock:
            if len(self._free) < self.max_free:
                self._free.append(block)

    @property
    def n_free(self) -> int:
        return len(self._free)
