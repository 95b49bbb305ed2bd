"""NumPy twins of ``kernels/decode.cu``: numcodecs' Shuffle and Delta decodes per frame, and the CRC-32C
register of blocks; the oracle of the kernel tests and of the fake GPU.

Frames are described as in the kernels: ``src`` (uint8) holds frame ``f``'s shuffled bytes from
``frame_src[f]`` on; ``outs[f]`` is the frame's output, an unsigned array of its items (the kernels get
its address instead).
"""

from __future__ import annotations

import numpy as np

from ._crc32c import TABLE

__all__ = ["crc32c_blocks", "delta_decode", "unshuffle"]


def unshuffle(src: np.ndarray, frame_src, outs: list[np.ndarray]) -> None:
    """``scdl_unshuffle``: byte ``j`` of item ``i`` of frame ``f`` is ``src[frame_src[f] + j * n_f + i]``."""
    for start, out in zip(np.asarray(frame_src, np.int64).tolist(), outs):
        n, size = len(out), out.dtype.itemsize
        planes = np.asarray(src[start : start + n * size]).reshape(size, n)
        out.view(np.uint8).reshape(n, size)[...] = planes.T


def delta_decode(frames: list[np.ndarray]) -> None:
    """``scdl_delta_sums`` + ``scdl_delta_scan`` + ``scdl_delta_apply``: each frame replaced in place by
    its running sum, wrapping in its unsigned dtype (NumPy's integer cumsum wraps the same way)."""
    for x in frames:
        np.cumsum(x, dtype=x.dtype, out=x)


def crc32c_blocks(blocks: list[np.ndarray], start) -> np.ndarray:
    """``scdl_crc32c_blocks``: the register after each block of bytes from its ``start`` (no final xor),
    all blocks at once, one byte position per step."""
    start = np.asarray(start, dtype=np.uint32)
    regs = start.copy()
    lengths = np.array([len(b) for b in blocks], dtype=np.int64)
    if not len(blocks):
        return regs
    padded = np.zeros((len(blocks), int(lengths.max(initial=0))), np.uint8)
    for i, b in enumerate(blocks):
        padded[i, : len(b)] = b
    for k in range(padded.shape[1]):
        live = lengths > k
        c = regs[live]
        regs[live] = TABLE[(c ^ padded[live, k]) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
    return regs
