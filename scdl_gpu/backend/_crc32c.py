"""CRC-32C of arrays whose bytes were summed block by block on the device (``scdl_crc32c_blocks`` in
``kernels/decode.cu``), put together on the host.

The CRC register after a message is linear in its start value over GF(2): feeding ``B`` after a
register ``s`` gives ``Z_|B|(s) ^ R(0, B)``, where ``Z_n`` feeds ``n`` zero bytes. So an array is cut
into blocks *aligned to its end*: the first (``1..BLOCK`` bytes) is summed from CRC-32C's start value
``0xFFFFFFFF``, every later one (exactly ``BLOCK`` bytes) from 0, all in parallel; the host then chains
``s = Z_BLOCK(s) ^ r_b`` with one fixed operator and flips the bits at the end. An empty array has no
block and the CRC 0, as ``google_crc32c.value(b"")``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["BLOCK", "TABLE", "block_layout", "chain", "crc32c_hex"]

POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
BLOCK = 4096  #: bytes a device thread sums: many threads per 256 KiB frame, few blocks to chain on the host
_START = 0xFFFFFFFF


def _table() -> np.ndarray:
    c = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        c = np.where(c & 1, (c >> np.uint32(1)) ^ np.uint32(POLY), c >> np.uint32(1)).astype(np.uint32)
    return c


TABLE = _table()  #: the reflected byte table the kernel reads


def _zeros_operator(nbytes: int) -> np.ndarray:
    """``Z_nbytes`` as four byte-sliced tables: ``Z(x) = T[0][x & 255] ^ T[1][x >> 8 & 255] ^ ...``."""
    basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)  # Z of each single bit
    for _ in range(nbytes):
        basis = TABLE[basis & np.uint32(0xFF)] ^ (basis >> np.uint32(8))
    out = np.zeros((4, 256), np.uint32)
    v = np.arange(256)
    for bit in range(8):
        has = (v >> bit) & 1 == 1
        for k in range(4):
            out[k, has] ^= basis[8 * k + bit]
    return out


_Z_BLOCK = _zeros_operator(BLOCK)


def block_layout(nbytes: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The blocks of arrays of ``nbytes`` bytes each: ``(array, offset, length, start)`` per block
    (int64, int64, int64, uint32), each array's blocks in order, its first one the short one."""
    nbytes = np.asarray(nbytes, dtype=np.int64)
    count = -(-nbytes // block)
    array = np.repeat(np.arange(len(nbytes)), count)
    first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    q = np.arange(len(array), dtype=np.int64) - first[array]  # block index inside its array
    head = nbytes[array] - (count[array] - 1) * block  # the first block's length: 1..block
    offset = np.where(q == 0, 0, head + (q - 1) * block)
    length = np.where(q == 0, head, block)
    start = np.where(q == 0, _START, 0).astype(np.uint32)
    return array, offset, length, start


@numba.njit(nogil=True, cache=True)
def _chain(regs, counts, z, out):  # pragma: no cover - compiled
    b = 0
    for a in range(counts.size):
        if counts[a] == 0:
            out[a] = 0
            continue
        s = regs[b]
        for _ in range(1, counts[a]):
            b += 1
            s = z[0, s & 0xFF] ^ z[1, (s >> 8) & 0xFF] ^ z[2, (s >> 16) & 0xFF] ^ z[3, s >> 24] ^ regs[b]
        b += 1
        out[a] = s ^ np.uint32(0xFFFFFFFF)


def chain(regs: np.ndarray, nbytes: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """The CRC-32C (uint32) of each array from its blocks' registers, laid out by :func:`block_layout`."""
    nbytes = np.asarray(nbytes, dtype=np.int64)
    z = _Z_BLOCK if block == BLOCK else _zeros_operator(block)
    out = np.empty(len(nbytes), np.uint32)
    _chain(np.asarray(regs, np.uint32), -(-nbytes // block), z, out)
    return out


def crc32c_hex(value: int) -> str:
    """As the frame index writes checksums: 8 hex digits."""
    return f"{int(value):08x}"
