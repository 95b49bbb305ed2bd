"""The real kernels of ``kernels/decode.cu`` and ``scdl_gather_chunks`` (``kernels/gather.cu``), run on the
CPU through the g++ shim with the work tables of ``scdl_gpu.backend._decode_tables`` (host addresses in
place of device ones), against their NumPy twins and against what numcodecs and google_crc32c say.

Every item size, frames without items, last partial frames and segments, sums that wrap around.
"""

from __future__ import annotations

import google_crc32c
import numpy as np
import pytest
from numcodecs import Delta, Shuffle

from scdl_gpu.backend import _crc32c, _decode_tables
from scdl_gpu.backend import _decode_reference as dref
from scdl_gpu.backend import _reference as ref

from . import shim

ITEMS = [np.uint8, np.uint16, np.uint32, np.uint64]
decode_kernels = shim.fixture("decode.cu")
gather_kernels = shim.fixture("gather.cu")


def _random(rng, dtype, n):
    return rng.integers(0, np.iinfo(dtype).max, size=n, dtype=np.uint64, endpoint=True).astype(dtype)


def _frames(rng, dtype, sizes):
    return [_random(rng, dtype, n) for n in sizes]


SIZES = [0, 1, 7, 64, 0, 333, 5]  # frames without items first, inside and never last


@pytest.mark.parametrize("item", ITEMS, ids=lambda t: np.dtype(t).name)
def test_unshuffle_undoes_numcodecs_shuffle(decode_kernels, item):
    rng = np.random.default_rng(np.dtype(item).itemsize)
    originals = _frames(rng, item, SIZES)
    size = np.dtype(item).itemsize
    encoded = [np.frombuffer(Shuffle(elementsize=size).encode(x), np.uint8) if size > 1 else x.view(np.uint8)
               for x in originals]
    starts = np.cumsum([0] + [len(e) + 3 for e in encoded[:-1]]).astype(np.int64)  # gaps between frames
    src = np.full(int(starts[-1]) + len(encoded[-1]) + 3, 0xAB, np.uint8)
    for s, e in zip(starts, encoded):
        src[s : s + len(e)] = e
    outs = [np.zeros(n + 2, item) for n in SIZES]  # a sentinel tail of 2 items
    for o in outs:
        o[-2:] = 7
    views = [o[:-2] for o in outs]
    item_ptr = _decode_tables.frames(SIZES)
    decode_kernels.unshuffle(item, src, starts, shim.addresses(views), item_ptr, block=32)
    refs = [np.zeros(n, item) for n in SIZES]
    dref.unshuffle(src, starts, refs)
    for o, r, x in zip(outs, refs, originals):
        np.testing.assert_array_equal(o[:-2], x)
        np.testing.assert_array_equal(r, x)
        assert (o[-2:] == 7).all()


def test_unshuffle_of_bytes_is_a_copy(decode_kernels):
    """No shuffle filter: a wider dtype's frame travels as its bytes (item type uint8)."""
    x = np.arange(10, dtype=np.uint32) * 0x01020304
    out = np.zeros(10, np.uint32)
    decode_kernels.unshuffle(np.uint8, x.view(np.uint8), np.array([0]), shim.addresses([out]),
                             _decode_tables.frames([x.nbytes]))
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("seg", [1, 3, 64, _decode_tables.SEGMENT])
@pytest.mark.parametrize("item", ITEMS, ids=lambda t: np.dtype(t).name)
def test_delta_undoes_numcodecs_delta_per_frame(decode_kernels, item, seg):
    rng = np.random.default_rng(seg)
    originals = _frames(rng, item, SIZES)  # random values: the differences wrap in both directions
    originals[3] = np.sort(originals[3])  # and a sorted frame, the columns' usual case
    frames = [Delta(dtype=np.dtype(item).str).encode(x).astype(item) if len(x) else x.copy() for x in originals]
    expected = [f.copy() for f in frames]
    dref.delta_decode(expected)
    item_ptr = _decode_tables.frames(SIZES)
    seg_ptr = _decode_tables.segments(SIZES, seg)
    sums = np.full(int(seg_ptr[-1]) + 1, 9, item)  # one sentinel
    ptrs = shim.addresses(frames)
    decode_kernels.delta_sums(ptrs, item_ptr, seg_ptr, seg, sums[:-1], block=16)
    for f, (a, b) in zip(frames, zip(seg_ptr[:-1], seg_ptr[1:])):  # each segment's wrapping sum
        want = [f[q * seg : (q + 1) * seg].sum(dtype=item) for q in range(b - a)]
        np.testing.assert_array_equal(sums[a:b], want)
    decode_kernels.delta_scan(seg_ptr, sums[:-1], block=4)
    decode_kernels.delta_apply(ptrs, item_ptr, seg_ptr, seg, sums[:-1], block=16)
    assert sums[-1] == 9
    for f, e, x in zip(frames, expected, originals):
        np.testing.assert_array_equal(f, x)
        np.testing.assert_array_equal(e, x)


@pytest.mark.parametrize("block", [1, 5, 64, _crc32c.BLOCK])
def test_crc_blocks_chain_to_google_crc32c(decode_kernels, block):
    rng = np.random.default_rng(block)
    arrays = [rng.integers(0, 256, n, dtype=np.uint8) for n in (0, 1, 4, block, block + 1, 3 * block, 9001, 0)]
    nbytes = [len(a) for a in arrays]
    ptrs, lens, starts = _decode_tables.crc_blocks(shim.addresses(arrays), nbytes, block)
    regs = np.zeros(len(ptrs) + 1, np.uint32)
    decode_kernels.crc32c_blocks(ptrs, lens, starts, _crc32c.TABLE, regs[:-1], block=8)
    assert regs[-1] == 0
    array, offset, length, _ = _crc32c.block_layout(nbytes, block)
    blocks = [arrays[a][o : o + n] for a, o, n in zip(array, offset, length)]
    np.testing.assert_array_equal(regs[:-1], dref.crc32c_blocks(blocks, starts))
    assert _crc32c.chain(regs[:-1], nbytes, block).tolist() == [google_crc32c.value(a.tobytes()) for a in arrays]


@pytest.mark.parametrize("tc", [np.uint8, np.uint16, np.uint32, np.uint64], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("tv", [np.uint16, np.float32, np.float64, np.uint64], ids=lambda t: np.dtype(t).name)
def test_gather_chunks_matches_its_reference(gather_kernels, tv, tc):
    rng = np.random.default_rng(3)
    width = min(int(np.iinfo(tc).max), 300)
    lens = [0, 40, 17, 90]
    vals = [(rng.random(n) * 100).astype(tv) for n in lens]
    cols = [rng.integers(0, width, n).astype(tc) for n in lens]
    cols[2][5] = width  # a bad column
    # (slot, start, length) per row: valid rows of each chunk, an empty one, one crossing its chunk's end,
    # one reading a bad column, one starting before 0
    rows = [(1, 3, 10), (3, 0, 90), (0, 0, 0), (2, 0, 4), (1, 35, 10), (2, 3, 4), (3, -2, 3), (1, 39, 1)]
    for picks, err in (([0, 1, 2, 3, 7], 0), (list(range(len(rows))), 3), ([4], 1), ([5], 2)):
        sel = [rows[i] for i in picks]
        n_rows = len(sel)
        row_ptr = _decode_tables.frames([n for _, _, n in sel])
        total = int(row_ptr[-1])
        order = rng.permutation(n_rows)  # the rows land anywhere in the output
        dst = np.zeros(n_rows, np.int64)
        dst[order] = _decode_tables.frames([sel[i][2] for i in order])[:-1]
        row_chunk = np.array([s for s, _, _ in sel], np.int64)
        src = np.array([a for _, a, _ in sel], np.int64)
        out_v, out_c = np.full(total + 2, 5, tv), np.full(total + 2, 5, tc)
        e = np.zeros(1, np.int32)
        gather_kernels.gather_chunks(shim.addresses(vals), shim.addresses(cols), np.array(lens, np.int64), row_chunk,
                                     src, row_ptr, dst, width, out_v, out_c, e, block=16)
        rv, rc = np.full(total, 5, tv), np.full(total, 5, tc)
        bits = ref.gather_chunks(vals, cols, row_chunk, src, row_ptr, dst, width, rv, rc)
        assert int(e[0]) == bits == err
        np.testing.assert_array_equal(out_v[:total].view(np.uint8), rv.view(np.uint8))
        np.testing.assert_array_equal(out_c[:total], rc)
        assert (out_v[total:] == 5).all() and (out_c[total:] == 5).all()
