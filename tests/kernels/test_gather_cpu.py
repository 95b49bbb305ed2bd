"""The real ``scdl_gather`` of ``kernels/gather.cu``, run on the CPU through the g++ shim, against its NumPy
reference ``scdl_gpu.backend._reference.gather`` (and the reference against a plain Python loop).

A gather only copies, so outputs must match exactly: values are compared as bits (NaN, -0.0), and the
error word must be the expected bits on all three sides. Output arrays carry a sentinel tail to show
nothing is written past ``out_ptr[-1]``; zero-work cases still get one block (see ``shim.Kernels``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from scdl_gpu.backend import _reference as ref

from . import shim

TV_DTYPES = [np.dtype(dt) for _, dt in shim.TV.values()]
TC_DTYPES = [np.dtype(dt) for _, dt in shim.TC.values()]
OUT, BAD_COL = ref.GATHER_OUT_OF_RANGE, ref.GATHER_BAD_COLUMN
N_DATA = 500
I64_MAX = int(np.iinfo(np.int64).max)
TAIL = 3  # sentinel entries after the output


kernels = shim.fixture("gather.cu")


@dataclass
class Case:
    name: str
    data: np.ndarray
    cols: np.ndarray
    src_start: np.ndarray
    out_ptr: np.ndarray
    width: int
    err: int  # the bits the case must raise


def _case(name, data, cols, rows: list[tuple[int, int]], width: int, err: int) -> Case:
    """``rows``: (src_start, length) per output row, in output order."""
    out_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([n for _, n in rows], out=out_ptr[1:])
    return Case(name, data, cols, np.array([s for s, _ in rows], dtype=np.int64), out_ptr, width, err)


def _values(rng, tv: np.dtype, size: int) -> np.ndarray:
    if tv.kind == "u":
        v = rng.integers(0, int(np.iinfo(tv).max), size=size, endpoint=True, dtype=np.uint64).astype(tv)
        v[:2] = [0, np.iinfo(tv).max]
        return v
    v = rng.standard_normal(size).astype(tv)
    v[:6] = [np.nan, -0.0, np.inf, np.finfo(tv).max, np.finfo(tv).smallest_subnormal, -np.inf]
    return v


def widths(tc: np.dtype) -> tuple[int, int]:
    """(full, narrow): ``full`` lets the column dtype's largest value be valid (as far as a long long
    width reaches); ``narrow`` is itself a storable column, so a column == width can be planted."""
    top = int(np.iinfo(tc).max)
    return min(top + 1, I64_MAX), min(top, 1000)


def make_cases(rng, tv, tc) -> list[Case]:
    tv, tc = np.dtype(tv), np.dtype(tc)
    full, narrow = widths(tc)
    data = _values(rng, tv, N_DATA)

    def cols(width):
        c = rng.integers(0, width, size=N_DATA, dtype=np.uint64).astype(tc)
        c[[0, 7, N_DATA - 1]] = width - 1  # the largest valid column, at both ends of the data
        return c

    # Every row valid: empty rows first, last and inside (two with starts outside the data, which an
    # empty row never reads), rows in any order, one repeated, one ending exactly at n_data.
    valid = [(0, 0), (300, 40), (0, 12), (-100, 0), (120, 33), (300, 40), (N_DATA - 9, 9), (N_DATA + 5, 0),
             (450, 1), (37, 0), (5, 60), (0, 0)]  # fmt: skip
    c_full = cols(full)
    cases = [_case("valid", data, c_full, valid, full, 0)]

    c_bad = cols(narrow)
    bad_at = [3, 130, 131, 499]
    c_bad[bad_at] = narrow  # a column == width
    if tc == np.uint64:  # beyond any signed width: only an unsigned compare flags these
        c_bad[[140, 141]] = [np.iinfo(np.uint64).max, 1 << 63]
    bad_rows = [(120, 30), (0, 8), (490, 10), (200, 5)]
    cases.append(_case("bad_columns", data, c_bad, bad_rows, narrow, BAD_COL))

    # Starting at n_data, beyond it, negative (partly: k turns valid after 3 entries), crossing the
    # end, far below 0, and near 2**63 (k wraps negative in the kernel's unsigned addition).
    out_rows = [(10, 5), (N_DATA, 3), (N_DATA + 100, 2), (-3, 6), (N_DATA - 2, 5), (-(10**6), 4),
                (I64_MAX - 1, 4), (0, 0)]  # fmt: skip
    cases.append(_case("out_of_range", data, c_full, out_rows, full, OUT))
    cases.append(_case("both", data, c_bad, [(125, 10), (-1, 2)], narrow, OUT | BAD_COL))

    cases.append(_case("single_row", data, c_full, [(97, 300)], full, 0))
    cases.append(_case("single_bad_row", data, c_full, [(N_DATA - 1, 2)], full, OUT))
    cases.append(_case("no_resident_data", data[:0], c_full[:0], [(0, 3), (0, 0), (-1, 1)], full, OUT))
    cases.append(_case("all_rows_empty", data, c_full, [(0, 0), (-5, 0), (N_DATA * 2, 0)], full, 0))
    cases.append(_case("no_rows", data, c_full, [], full, 0))
    return cases


def naive_gather(c: Case) -> tuple[np.ndarray, np.ndarray, int]:
    """The contract entry by entry, with Python ints (no wraparound needed for these cases)."""
    vals, cols, err = [], [], 0
    for r in range(len(c.out_ptr) - 1):
        for j in range(int(c.out_ptr[r + 1] - c.out_ptr[r])):
            k = int(c.src_start[r]) + j
            if not 0 <= k < len(c.data):
                err |= OUT
                vals.append(c.data.dtype.type(0))
                cols.append(0)
            elif int(c.cols[k]) >= c.width:
                err |= BAD_COL
                vals.append(c.data.dtype.type(0))
                cols.append(0)
            else:
                vals.append(c.data[k])
                cols.append(c.cols[k])
    return np.array(vals, dtype=c.data.dtype), np.array(cols, dtype=c.cols.dtype), err


def reference(c: Case) -> tuple[np.ndarray, np.ndarray, int]:
    return ref.gather(c.data, c.cols, c.src_start, c.out_ptr, c.width)


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}")


def _filled(n: int, dtype: np.dtype) -> np.ndarray:
    return np.full(n * dtype.itemsize, 0xAB, dtype=np.uint8).view(dtype)


def run_kernel(kernels, c: Case, err0=0, **launch):
    n = int(c.out_ptr[-1])
    out_vals, out_cols = _filled(n + TAIL, c.data.dtype), _filled(n + TAIL, c.cols.dtype)
    err = np.array([err0], dtype=np.int32)
    kernels.gather(c.data, c.cols, c.src_start, c.out_ptr, c.width, out_vals, out_cols, err, **launch)
    for out in (out_vals, out_cols):
        assert (out[n:].view(np.uint8) == 0xAB).all(), f"{c.name}: written past out_ptr[-1]"
    return out_vals[:n], out_cols[:n], int(err[0])


def assert_same(actual, expected, what):
    (av, ac, ae), (ev, ec, ee) = actual, expected
    assert av.dtype == ev.dtype and ac.dtype == ec.dtype, what
    np.testing.assert_array_equal(bits(av), bits(ev), strict=True, err_msg=what)
    np.testing.assert_array_equal(ac, ec, strict=True, err_msg=what)
    assert ae == ee, f"{what}: err {ae} != {ee}"


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


# Launch shapes: one thread per block, a warp, and a grid with spare blocks (the i >= n guard).
LAUNCHES = [{"block": 1}, {"block": 32}, {"block": 64, "grid": 40}]


@pytest.mark.parametrize("tc", TC_DTYPES, ids=str)
@pytest.mark.parametrize("tv", TV_DTYPES, ids=str)
def test_gather_matches_reference(kernels, tv, tc):
    rng = np.random.default_rng(seed_of("gather", tv, tc))
    for c in make_cases(rng, tv, tc):
        expected = reference(c)
        assert expected[2] == c.err, c.name
        assert_same(expected, naive_gather(c), f"{c.name}: reference vs loop")
        for launch in LAUNCHES:
            assert_same(run_kernel(kernels, c, **launch), expected, f"{c.name} {launch}")


def test_cases_reach_their_edges():
    """The cases hold what the tests claim: the largest valid column gathered, columns == width and
    (uint64) >= 2**63 flagged, a partly negative row read from k == 0 on."""
    rng = np.random.default_rng(0)
    for tc in TC_DTYPES:
        cases = {c.name: c for c in make_cases(rng, np.float32, tc)}
        full, narrow = widths(tc)
        _, col, _ = reference(cases["valid"])
        assert int(col.max()) == full - 1
        if full == int(np.iinfo(tc).max) + 1:
            assert int(col.max()) == int(np.iinfo(tc).max)
        bad = cases["bad_columns"]
        assert (bad.cols == narrow).sum() == 4
        assert (bad.cols.astype(np.uint64) >= np.uint64(1 << 63)).sum() == (2 if tc == np.uint64 else 0)
        o = cases["out_of_range"]
        _, col, _ = reference(o)
        row = slice(o.out_ptr[3], o.out_ptr[4])  # src_start -3, six entries: k = -3 .. 2
        np.testing.assert_array_equal(col[row], np.concatenate([np.zeros(3, tc), o.cols[:3]]), strict=True)


def test_err_is_only_ored(kernels):
    """The kernel never clears bits the caller's word already holds (the caller zeroes it per batch)."""
    rng = np.random.default_rng(1)
    cases = {c.name: c for c in make_cases(rng, np.uint16, np.uint32)}
    for name, expected in (("valid", 4), ("out_of_range", 4 | OUT), ("both", 4 | OUT | BAD_COL)):
        assert run_kernel(kernels, cases[name], err0=4)[2] == expected, name


def test_reference_empty_shapes():
    """n_rows == 0 (out_ptr == [0]) and an all-empty batch: empty outputs in the input dtypes, no error."""
    data, cols = np.arange(5, dtype=np.float64), np.arange(5, dtype=np.uint8)
    no_rows = (np.empty(0, np.int64), np.zeros(1, np.int64))
    all_empty = (np.array([-9, 99]), np.zeros(3, np.int64))  # starts an empty row never reads
    for src_start, out_ptr in (no_rows, all_empty):
        v, c, err = ref.gather(data, cols, src_start, out_ptr, 5)
        assert v.shape == c.shape == (0,) and v.dtype == np.float64 and c.dtype == np.uint8 and err == 0
