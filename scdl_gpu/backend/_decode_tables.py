"""The work tables of ``kernels/decode.cu`` and ``scdl_gather_chunks``, built on the host from device
addresses: one function each, shared by the CUDA launchers (:mod:`._cuda`) and the CPU shim tests (which
pass host addresses), so both run the same layout.

Pointers travel as int64 (the kernels read them as ``unsigned long long``; addresses are below 2**63).
"""

from __future__ import annotations

import numpy as np

from ._crc32c import BLOCK, block_layout

__all__ = ["SEGMENT", "crc_blocks", "frames", "segments"]

#: items a thread sums and rewrites in the delta decode: a 256 KiB frame of uint16 is 64 segments
SEGMENT = 2048


def frames(n_items) -> np.ndarray:
    """``item_ptr``: the frames' first items in one launch (int64, frames + 1)."""
    out = np.zeros(len(n_items) + 1, np.int64)
    np.cumsum(np.asarray(n_items, np.int64), out=out[1:])
    return out


def segments(n_items, seg: int = SEGMENT) -> np.ndarray:
    """``seg_ptr``: the frames' first segments of ``seg`` items (a frame without items has none)."""
    return frames(-(-np.asarray(n_items, np.int64) // seg))


def crc_blocks(ptrs, nbytes, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(block_ptr, block_len, block_init)`` of arrays at device addresses ``ptrs`` of ``nbytes`` each
    (see :func:`._crc32c.block_layout`); the registers then go to :func:`._crc32c.chain`."""
    array, offset, length, start = block_layout(nbytes, block)
    return np.asarray(ptrs, np.int64)[array] + offset, length, start
