"""The real kernels of ``kernels/csr_batch.cu``, run on the CPU through a g++ shim, against their
NumPy references in ``scdl_gpu.backend._reference`` (and the references against scipy).

Tolerances: integer outputs and plain casts or scaling (one IEEE multiply in float64 on both sides)
must match exactly. ``log1p`` comes from glibc in the shim, from NumPy's own (SIMD) code in the
reference and from CUDA's libdevice on the GPU; each is within 1 ulp of the true float64 value, so
two of them can differ by 2 ulp in float64, which moves a float32 result by at most 1 ulp. Row sums
add in entry order in the kernel but pairwise in ``np.add.reduceat``: rtol 1e-12 (at most ~2e-14 for
the short rows here). Dense outputs add duplicate columns in entry order on both sides (the shim's
threads run one after another), so they carry only the per-value log1p tolerance, doubled.

Zero-work launches (B == 0, or no stored values) are still given one block here, to show the
kernels' ``i >= n`` guard makes them no-ops; the real caller launches nothing for them.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu.backend import _reference as ref

from . import shim

TV_DTYPES = [np.dtype(dt) for _, dt in shim.TV.values()]
TC_DTYPES = [np.dtype(dt) for _, dt in shim.TC.values()]
OUT_PAIRS = [(np.dtype(v), np.dtype(i)) for v in ("float32", "float64") for i in ("int32", "int64")]
OPTIONS = list(itertools.product((False, True), repeat=3))  # (remap, row_scale, log1p)
TARGET_SUM = 1e4
REMAP_CAP = 1 << 16  # the longest remap table built: 65536 columns, the full uint16 range
DENSE_CAP = 1 << 12  # dense width for column types wider than uint16 (keeps the dense tests quick)


kernels = shim.fixture("csr_batch.cu")


@dataclass
class Staged:
    name: str
    vals: np.ndarray
    cols: np.ndarray
    in_ptr: np.ndarray
    n_src_cols: int  # archive columns the entries may use; the largest one always occurs
    block: int = 128

    @property
    def n_rows(self) -> int:
        return len(self.in_ptr) - 1


def _extremes(dtype: np.dtype, out_dtype: np.dtype) -> list:
    """Values at the edges of the archive dtype that the output dtype can still hold."""
    if dtype.kind == "u":
        return [0, int(np.iinfo(dtype).max), 1]
    # Not a subnormal: target_sum / sum would overflow to inf when a remap keeps only that value.
    tiny = max(float(np.finfo(dtype).tiny), 1e-300)
    big = min(float(np.finfo(dtype).max), float(np.finfo(out_dtype).max), 1e300)  # 1e300: row sums stay finite
    return [0.0, tiny, big]


def _values(rng, dtype: np.dtype, size: int) -> np.ndarray:
    if dtype.kind == "u":
        return rng.integers(0, min(int(np.iinfo(dtype).max), 1000), size=size, endpoint=True).astype(dtype)
    return (rng.random(size) * 10.0 ** rng.uniform(-3, 3, size)).astype(dtype)


def make_batches(rng, tv, tc, n_src_cols: int, out_dtype=np.dtype("float32"), distinct=False) -> list[Staged]:
    """Staged batches covering the edge cases; the last row of ``mixed`` holds the type extremes.

    ``distinct``: no column twice in a row (no duplicate is planted either).
    """
    tv, tc = np.dtype(tv), np.dtype(tc)
    top = n_src_cols - 1

    def cols(size):
        if distinct:
            return rng.choice(top, size=size, replace=False).astype(tc)  # `top` is placed separately
        return rng.integers(0, n_src_cols, size=size, dtype=np.uint64).astype(tc)

    # mixed: first and last row empty, empty rows inside, unsorted columns, a row repeated (the same
    # span staged twice), a column repeated inside a row, the largest column, and extreme values.
    lengths = rng.integers(0, 24, size=37)
    lengths[[0, 5, 6, 36]] = 0
    lengths[[10, 11, 20]] = [9, 9, 5]
    rows = [(_values(rng, tv, k), cols(k)) for k in lengths]
    rows[11] = rows[10]
    v, c = rows[20]
    if not distinct:
        c[3] = c[1]  # duplicate column in one row
    c[4] = top
    extremes = _extremes(tv, out_dtype)
    rows[35] = (np.array(extremes, dtype=tv), np.array([top, 0, top // 2][: len(extremes)], dtype=tc))
    mixed = _stage("mixed", rows, n_src_cols, block=32)

    single = _stage("single_row", [(_values(rng, tv, 300), cols(300))], n_src_cols, block=128)
    single.cols[7] = top
    empty_rows = _stage("all_rows_empty", [(np.empty(0, tv), np.empty(0, tc))] * 5, n_src_cols)
    no_rows = _stage("no_rows", [], n_src_cols, tv=tv, tc=tc)
    return [mixed, single, empty_rows, no_rows]


def _stage(name, rows, n_src_cols, block=128, tv=None, tc=None) -> Staged:
    lengths = [len(v) for v, _ in rows]
    in_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=in_ptr[1:])
    if rows:
        vals = np.concatenate([v for v, _ in rows])
        cols = np.concatenate([c for _, c in rows])
    else:
        vals, cols = np.empty(0, tv), np.empty(0, tc)
    return Staged(name, vals, cols, in_ptr, n_src_cols, block)


def make_remap(rng, n_src_cols: int) -> tuple[np.ndarray, int]:
    """A gene remap dropping about 30% of the columns (never the largest), permuting the rest."""
    keep = rng.random(n_src_cols) < 0.7
    keep[-1] = True
    remap = np.full(n_src_cols, -1, dtype=np.int64)
    remap[keep] = rng.permutation(int(keep.sum()))
    return remap, int(keep.sum())


def n_src_cols_for(tc, index_dtype=np.dtype("int64"), remap=False, dense=False) -> int:
    """As many archive columns as the column dtype allows, within what the test can afford: a remap
    table or a dense row is at most 65536 long, and output columns must fit the output index dtype."""
    n = int(np.iinfo(tc).max) + 1
    if remap:
        n = min(n, REMAP_CAP)
    if dense:  # uint16 still reaches its largest column; wider types cannot in a dense test anyway
        n = min(n, REMAP_CAP if np.dtype(tc).itemsize <= 2 else DENSE_CAP)
    return min(n, int(np.iinfo(index_dtype).max) + 1)


def scales_for(b: Staged, remap) -> np.ndarray:
    return ref.row_scale_from_sums(ref.row_sums(b.vals, b.cols, b.in_ptr, remap), TARGET_SUM)


def assert_values(actual, expected, log1p: bool, maxulp_factor: int = 1):
    """Exact unless log1p ran (then 1 ulp in float32, 2 in float64; see the module docstring)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if not log1p:
        np.testing.assert_array_equal(actual, expected, strict=True)
        return
    maxulp = (1 if actual.dtype == np.float32 else 2) * maxulp_factor
    np.testing.assert_array_max_ulp(actual, expected, maxulp=maxulp)


def seed_of(*parts) -> int:
    """A stable seed per test case (``hash`` of a str changes between runs)."""
    return zlib.crc32(repr(parts).encode())


# --- keep_flags -------------------------------------------------------------------------------


@pytest.mark.parametrize("tc", TC_DTYPES, ids=str)
def test_keep_flags(kernels, tc):
    rng = np.random.default_rng(seed_of("keep", tc))
    n_src = n_src_cols_for(tc, remap=True)
    remap, _ = make_remap(rng, n_src)
    for b in make_batches(rng, np.uint8, tc, n_src):
        n = int(b.in_ptr[-1])
        flags = np.full(n, -5, dtype=np.int32)
        kernels.keep_flags(b.cols, remap, flags, block=b.block)
        expected = ref.keep_flags(b.cols, remap)
        assert expected.dtype == np.int32
        np.testing.assert_array_equal(flags, expected, strict=True, err_msg=b.name)
        if n:
            assert 0 < flags.sum() < n or b.name != "mixed"
            assert flags[b.cols.astype(np.int64) == n_src - 1].all()  # the largest column is kept


# --- row_sums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("with_remap", [False, True], ids=["all", "remap"])
@pytest.mark.parametrize("tc", TC_DTYPES, ids=str)
@pytest.mark.parametrize("tv", TV_DTYPES, ids=str)
def test_row_sums(kernels, tv, tc, with_remap):
    rng = np.random.default_rng(seed_of("sums", tv, tc, with_remap))
    n_src = n_src_cols_for(tc, remap=with_remap)
    remap = make_remap(rng, n_src)[0] if with_remap else None
    for b in make_batches(rng, tv, tc, n_src, out_dtype=np.dtype("float64")):
        sums = np.full(b.n_rows, np.nan)
        kernels.row_sums(b.vals, b.cols, b.in_ptr, remap, sums, block=b.block)
        expected = ref.row_sums(b.vals, b.cols, b.in_ptr, remap)
        assert expected.dtype == np.float64 and expected.shape == (b.n_rows,)
        # Order of addition differs (sequential vs pairwise): see the module docstring.
        np.testing.assert_allclose(sums, expected, rtol=1e-12, atol=0, err_msg=b.name)
        empty = np.diff(b.in_ptr) == 0
        assert (expected[empty] == 0).all() and (sums[empty] == 0).all()
        if b.name == "mixed":
            np.testing.assert_array_equal(expected[10], expected[11])  # a repeated row sums the same


# --- emit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ov, oi", OUT_PAIRS, ids=lambda d: str(d))
@pytest.mark.parametrize("tc", TC_DTYPES, ids=str)
@pytest.mark.parametrize("tv", TV_DTYPES, ids=str)
def test_emit(kernels, tv, tc, ov, oi):
    rng = np.random.default_rng(seed_of("emit", tv, tc, ov, oi))
    for with_remap, with_scale, log1p in OPTIONS:
        n_src = n_src_cols_for(tc, oi, remap=with_remap)
        remap = make_remap(rng, n_src)[0] if with_remap else None
        for b in make_batches(rng, tv, tc, n_src, out_dtype=ov):
            what = f"{b.name} remap={with_remap} scale={with_scale} log1p={log1p}"
            n = int(b.in_ptr[-1])
            scale = scales_for(b, remap) if with_scale else None
            pos = None
            n_out = n
            if remap is not None:
                flags = np.zeros(n, dtype=np.int32)
                kernels.keep_flags(b.cols, remap, flags, block=b.block)
                pos = ref.exclusive_scan(flags)
                n_out = int(pos[-1])
            out_vals = np.full(n_out, np.nan, dtype=ov)
            out_cols = np.full(n_out, -7, dtype=oi)
            kernels.emit(b.vals, b.cols, b.in_ptr, remap, pos, scale, log1p, out_vals, out_cols, block=b.block)
            exp_vals, exp_cols = ref.emit(b.vals, b.cols, b.in_ptr, remap, pos, scale, log1p, ov, oi)
            np.testing.assert_array_equal(out_cols, exp_cols, strict=True, err_msg=what)
            assert_values(out_vals, exp_vals, log1p)
            # The reference finds the same slots on its own when not given pos.
            alone_vals, alone_cols = ref.emit(b.vals, b.cols, b.in_ptr, remap, None, scale, log1p, ov, oi)
            np.testing.assert_array_equal(alone_vals, exp_vals, strict=True, err_msg=what)
            np.testing.assert_array_equal(alone_cols, exp_cols, strict=True, err_msg=what)
            if b.name == "mixed" and remap is None:
                assert exp_cols.max() == n_src - 1  # the largest column went through unchanged


def test_emit_scattered_pos(kernels):
    """``pos`` is honoured as given (here: the entries in reverse), by the kernel and the reference."""
    rng = np.random.default_rng(7)
    b = make_batches(rng, np.float32, np.uint16, 1000)[0]
    n = int(b.in_ptr[-1])
    pos = np.arange(n, dtype=np.int64)[::-1].copy()
    out_vals, out_cols = np.full(n, np.nan, np.float64), np.full(n, -1, np.int64)
    kernels.emit(b.vals, b.cols, b.in_ptr, None, pos, None, False, out_vals, out_cols, block=b.block)
    exp_vals, exp_cols = ref.emit(b.vals, b.cols, b.in_ptr, None, pos, None, False, "float64", "int64")
    np.testing.assert_array_equal(out_vals, exp_vals, strict=True)
    np.testing.assert_array_equal(out_cols, exp_cols, strict=True)
    np.testing.assert_array_equal(exp_cols, b.cols[::-1].astype(np.int64))


# --- densify ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ov", [np.dtype("float32"), np.dtype("float64")], ids=str)
@pytest.mark.parametrize("tc", TC_DTYPES, ids=str)
@pytest.mark.parametrize("tv", TV_DTYPES, ids=str)
def test_densify(kernels, tv, tc, ov):
    rng = np.random.default_rng(seed_of("densify", tv, tc, ov))
    for with_remap, with_scale, log1p in OPTIONS:
        n_src = n_src_cols_for(tc, remap=with_remap, dense=True)
        remap, n_out_cols = make_remap(rng, n_src) if with_remap else (None, n_src)
        for b in make_batches(rng, tv, tc, n_src, out_dtype=ov):
            what = f"{b.name} remap={with_remap} scale={with_scale} log1p={log1p}"
            scale = scales_for(b, remap) if with_scale else None
            out = np.zeros((b.n_rows, n_out_cols), dtype=ov)
            kernels.densify(b.vals, b.cols, b.in_ptr, remap, scale, log1p, out, block=b.block)
            expected = ref.densify(b.vals, b.cols, b.in_ptr, remap, scale, log1p, n_out_cols, ov)
            assert expected.shape == (b.n_rows, n_out_cols), what
            assert_values(out, expected, log1p, maxulp_factor=2)
            if b.name == "mixed":
                # Row 20 holds a repeated column: its two values were added, not overwritten.
                c = remap[b.cols[b.in_ptr[20] + 1]] if remap is not None else int(b.cols[b.in_ptr[20] + 1])
                if c >= 0 and not log1p and scale is None:
                    k = slice(b.in_ptr[20], b.in_ptr[21])
                    same = (remap[b.cols[k]] if remap is not None else b.cols[k].astype(np.int64)) == c
                    assert out[20, c] == b.vals[k][same].astype(ov).sum(dtype=ov)


# --- zero-sized batches -----------------------------------------------------------------------


@pytest.mark.parametrize("with_remap", [False, True], ids=["all", "remap"])
def test_no_rows_is_a_noop(kernels, with_remap):
    """B == 0 and n == 0: a (needless) one-block launch writes nothing; the references return empties."""
    vals, cols = np.empty(0, np.float32), np.empty(0, np.uint16)
    in_ptr = np.zeros(1, np.int64)
    remap = np.arange(10, dtype=np.int64) if with_remap else None
    sentinel = np.full(4, 99.0)
    kernels.row_sums(vals, cols, in_ptr, remap, sentinel)
    out_vals, out_cols = np.full(4, 99.0, np.float32), np.full(4, 99, np.int32)
    kernels.emit(vals, cols, in_ptr, remap, None, None, True, out_vals, out_cols)
    flags = np.full(4, 99, np.int32)
    kernels.keep_flags(cols, np.arange(10, dtype=np.int64), flags)
    dense = np.full((1, 4), 99.0, np.float32)
    kernels.densify(vals, cols, in_ptr, remap, None, True, dense)
    for a in (sentinel, out_vals, out_cols, flags, dense):
        assert (a == 99).all()

    assert ref.row_sums(vals, cols, in_ptr, remap).shape == (0,)
    assert ref.keep_flags(cols, np.arange(10)).shape == (0,)
    v, c = ref.emit(vals, cols, in_ptr, remap, None, np.empty(0), True, "float64", "int64")
    assert v.shape == c.shape == (0,) and v.dtype == np.float64 and c.dtype == np.int64
    assert ref.densify(vals, cols, in_ptr, remap, np.empty(0), True, 7, "float64").shape == (0, 7)
    np.testing.assert_array_equal(ref.exclusive_scan(np.empty(0, np.int32)), [0])
    np.testing.assert_array_equal(ref.out_indptr(in_ptr, ref.exclusive_scan(np.empty(0, np.int32))), [0])


# --- the references against scipy -------------------------------------------------------------


def _scipy_batch(b: Staged, remap, n_out_cols, target_sum, log1p) -> sp.csr_matrix:
    """The batch computed independently: a scipy CSR, remapped by a selection matrix, normalised by
    a diagonal scaling, then log1p."""
    x = sp.csr_matrix((b.vals.astype(np.float64), b.cols.astype(np.int64), b.in_ptr), shape=(b.n_rows, b.n_src_cols))
    if remap is not None:
        src = np.flatnonzero(remap >= 0)
        select = sp.csr_matrix((np.ones(src.size), (src, remap[src])), shape=(b.n_src_cols, n_out_cols))
        x = sp.csr_matrix(x @ select)
    if target_sum is not None:
        sums = np.asarray(x.sum(axis=1)).ravel()
        scale = np.where(sums > 0, target_sum / np.where(sums > 0, sums, 1.0), 1.0)
        x = sp.csr_matrix(sp.diags(scale) @ x)
    if log1p:
        x = x.log1p()
    return x


@pytest.mark.parametrize("with_remap", [False, True], ids=["all", "remap"])
@pytest.mark.parametrize("log1p", [False, True], ids=["raw", "log1p"])
def test_reference_matches_scipy(with_remap, log1p):
    rng = np.random.default_rng(seed_of("scipy", with_remap, log1p))
    n_src = 500
    remap, n_out = make_remap(rng, n_src) if with_remap else (None, n_src)
    # Distinct columns per row: scipy sums a row's duplicates before log1p, the kernels after it.
    for b in make_batches(rng, np.uint16, np.uint16, n_src, distinct=True)[:3]:
        expected = _scipy_batch(b, remap, n_out, TARGET_SUM, log1p).toarray()
        sums = ref.row_sums(b.vals, b.cols, b.in_ptr, remap)
        scale = ref.row_scale_from_sums(sums, TARGET_SUM)
        dense = ref.densify(b.vals, b.cols, b.in_ptr, remap, scale, log1p, n_out, "float64")
        np.testing.assert_allclose(dense, expected, rtol=1e-12, atol=0, err_msg=b.name)

        pos = ref.exclusive_scan(ref.keep_flags(b.cols, remap)) if remap is not None else None
        vals, cols = ref.emit(b.vals, b.cols, b.in_ptr, remap, pos, scale, log1p, "float64", "int64")
        crow = ref.out_indptr(b.in_ptr, pos)
        got = sp.csr_matrix((vals, cols, crow), shape=(b.n_rows, n_out)).toarray()
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0, err_msg=b.name)
        nonzero_rows = np.asarray(expected.sum(axis=1)).ravel() > 0
        if not log1p:
            np.testing.assert_allclose(dense.sum(axis=1)[nonzero_rows], TARGET_SUM, rtol=1e-12)


def test_row_scale_from_sums():
    np.testing.assert_array_equal(ref.row_scale_from_sums(np.array([0.0, 4.0, -1.0, 0.5]), 2.0), [1.0, 0.5, 1.0, 4.0])


def test_row_of_entries():
    np.testing.assert_array_equal(ref.row_of_entries(np.array([0, 0, 2, 2, 3, 3])), [1, 1, 3])
    assert ref.row_of_entries(np.array([0])).shape == (0,)


def test_densify_rejects_columns_outside_the_output():
    with pytest.raises(IndexError, match="n_out_cols=3"):
        ref.densify(np.ones(2, np.float32), np.array([0, 3], np.uint8), np.array([0, 2]), n_out_cols=3)
