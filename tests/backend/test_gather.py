"""The compiled row gather against its NumPy reference, on random inputs of every stored dtype."""

from __future__ import annotations

import numpy as np
import pytest

from scdl_gpu.backend import _gather
from scdl_gpu.errors import ArchiveError

VALUE_DTYPES = ["uint8", "uint16", "uint32", "uint64", "float32", "float64"]
COL_DTYPES = ["uint8", "uint16", "uint32", "uint64"]


def _archive(rng, value_dtype, col_dtype, n_rows=50, width=None):
    """Random rows (some empty: first, last, a middle one), unsorted columns with a duplicate, the
    largest column ``width - 1`` present, integer values up to the dtype's maximum."""
    width = width or min(np.iinfo(col_dtype).max + 1, 70_000)
    lens = rng.integers(0, 40, n_rows)
    lens[[0, n_rows - 1, n_rows // 2]] = 0
    row_ptr = np.zeros(n_rows + 1, np.uint64)
    np.cumsum(lens, out=row_ptr[1:])
    nnz = int(row_ptr[-1])
    cols = rng.integers(0, width, nnz).astype(col_dtype)
    cols[0] = width - 1
    if nnz > 2:
        cols[2] = cols[1]  # a duplicate column inside the first non-empty row (rows hold >= 3 then)
    dt = np.dtype(value_dtype)
    if dt.kind == "u":
        data = rng.integers(0, np.iinfo(dt).max, nnz, dtype=dt, endpoint=True)
        data[-1] = np.iinfo(dt).max
    else:
        data = (rng.standard_normal(nnz) * 1e3).astype(dt)
    return row_ptr, data, cols, width


def _run(row_ptr, data, cols, rows, width, value_dtype, index_dtype, sort=True):
    starts, in_ptr = _gather.plan(row_ptr, np.asarray(rows, np.int64), len(data))
    out_v, out_c = np.empty(in_ptr[-1], value_dtype), np.empty(in_ptr[-1], index_dtype)
    _gather.gather(data, cols, starts, in_ptr, width, out_v, out_c, sort=sort, rows=np.asarray(rows))
    return in_ptr, out_v, out_c


@pytest.mark.parametrize("col_dtype", COL_DTYPES)
@pytest.mark.parametrize("value_dtype", VALUE_DTYPES)
def test_gather_equals_reference(value_dtype, col_dtype):
    rng = np.random.default_rng(VALUE_DTYPES.index(value_dtype) * 7 + COL_DTYPES.index(col_dtype))
    row_ptr, data, cols, width = _archive(rng, value_dtype, col_dtype)
    n = len(row_ptr) - 1
    row_sets = [rng.integers(0, n, 30), np.array([4, 4, 4]), np.arange(n), np.arange(n)[::-1], np.array([0, n - 1]),
                np.array([1]), np.array([], np.int64)]
    outputs = [("float32", "int32"), ("float64", "int64"), (value_dtype, col_dtype)]
    for rows in row_sets:
        for value_out, index_out in outputs:
            for sort in (True, False):
                got = _run(row_ptr, data, cols, rows, width, value_out, index_out, sort)
                want = _gather.gather_reference(row_ptr, data, cols, rows, width, value_out, index_out, sort)
                for g, w in zip(got, want):
                    assert g.dtype == w.dtype
                    np.testing.assert_array_equal(g, w)


def test_sorting_is_stable_and_per_row():
    row_ptr = np.array([0, 5, 5, 9], np.uint64)
    cols = np.array([4, 1, 4, 0, 2, 3, 3, 1, 2], np.uint16)
    data = np.arange(9, dtype=np.float32)
    in_ptr, v, c = _run(row_ptr, data, cols, [0, 1, 2], 5, "float32", "int32")
    np.testing.assert_array_equal(c, [0, 1, 2, 4, 4, 1, 2, 3, 3])
    np.testing.assert_array_equal(v, [3, 1, 4, 0, 2, 7, 8, 5, 6])  # equal columns keep stored order
    np.testing.assert_array_equal(in_ptr, [0, 5, 5, 9])


def test_long_rows_sort_through_the_merge_sort():
    rng = np.random.default_rng(3)
    cols = rng.permutation(5000).astype(np.uint32)
    data = rng.random(5000).astype(np.float32)
    row_ptr = np.array([0, 5000], np.uint64)
    _, v, c = _run(row_ptr, data, cols, [0], 5000, "float32", "int32")
    np.testing.assert_array_equal(c, np.arange(5000))
    np.testing.assert_array_equal(v, data[np.argsort(cols)])


def test_casts_go_through_float64_like_the_kernels():
    big = np.array([2**64 - 1, 2**53 + 1, 16_777_217], np.uint64)  # values float32 rounds differently via double
    row_ptr = np.array([0, 3], np.uint64)
    _, v, _ = _run(row_ptr, big, np.array([0, 1, 2], np.uint8), [0], 3, "float32", "int32")
    np.testing.assert_array_equal(v, big.astype(np.float64).astype(np.float32))


def test_parallel_route_equals_serial(monkeypatch):
    rng = np.random.default_rng(9)
    row_ptr, data, cols, width = _archive(rng, "uint16", "uint16", n_rows=400)
    rows = rng.integers(0, 400, 2000)
    serial = _run(row_ptr, data, cols, rows, width, "float32", "int32")
    monkeypatch.setattr(_gather, "PARALLEL_MIN_VALUES", 0)
    parallel = _run(row_ptr, data, cols, rows, width, "float32", "int32")
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("parallel", [False, True])
def test_bad_spans_and_columns_raise(monkeypatch, parallel):
    monkeypatch.setattr(_gather, "PARALLEL_MIN_VALUES", 0 if parallel else 1 << 40)
    row_ptr = np.array([0, 3, 6, 9], np.uint64)
    data, cols = np.ones(9, np.float32), np.array([0, 1, 2] * 3, np.uint16)
    with pytest.raises(IndexError, match="row 3 out of range"):
        _gather.plan(row_ptr, np.array([0, 3]), 9)
    for bad_ptr, msg in [([0, 5, 4, 9], r"row 1 spans values \[5, 4\)"), ([0, 3, 12, 9], r"row 1 spans values \[3, 12\)"),
                         ([0, 2**63 + 5, 6, 9], "row 1 spans")]:
        with pytest.raises(ArchiveError, match=msg) as e:
            _gather.plan(np.array(bad_ptr, np.uint64), np.array([1, 2, 0]), 9, archive="arch")
        assert "row_ptr.npy" in str(e.value) and "arch" in str(e.value)
    cols_bad = cols.copy()
    cols_bad[7] = 3  # row 2 holds the gene count itself
    starts, in_ptr = _gather.plan(row_ptr, np.array([0, 2, 1]), 9)
    with pytest.raises(ArchiveError, match="row 2 holds column 3, expected < 3") as e:
        _gather.gather(data, cols_bad, starts, in_ptr, 3, np.empty(9, np.float32), np.empty(9, np.int32),
                       rows=np.array([0, 2, 1]), archive="arch")
    assert "col_ptr.npy" in str(e.value)
    huge = cols.astype(np.uint64)
    huge[4] = 2**63  # negative as int64: caught as well
    with pytest.raises(ArchiveError, match="col_ptr.npy"):
        _gather.gather(data, huge, starts, in_ptr, 3, np.empty(9, np.float32), np.empty(9, np.int32))


def test_warm_up_compiles_before_the_first_batch():
    assert _gather.warm_up(np.uint16, np.uint16, np.uint64, [("float32", "int32")]) >= 0


def test_a_forked_child_gathers_without_the_parents_thread_pool(tmp_path):
    """GNU OpenMP aborts a forked child that uses the parent's pool (DataLoader workers fork): the
    child falls back to the serial gather and gets the same rows."""
    import subprocess
    import sys

    code = """
import os, numpy as np
from scdl_gpu.backend import _gather
rng = np.random.default_rng(0)
n_rows = 3000
row_ptr = np.zeros(n_rows + 1, np.uint64); np.cumsum(rng.integers(0, 40, n_rows), out=row_ptr[1:])
nnz = int(row_ptr[-1]); data = rng.random(nnz).astype(np.float32); cols = rng.integers(0, 900, nnz).astype(np.uint16)
rows = rng.integers(0, n_rows, 2000)
def run():
    starts, in_ptr = _gather.plan(row_ptr, rows, nnz)
    v, c = np.empty(in_ptr[-1], np.float32), np.empty(in_ptr[-1], np.int32)
    _gather.gather(data, cols, starts, in_ptr, 900, v, c)
    return v, c
assert run()[0].size >= _gather.PARALLEL_MIN_VALUES  # the parent runs the parallel gather
parent = run()
pid = os.fork()
if pid == 0:
    child = run()
    os._exit(0 if all(np.array_equal(a, b) for a, b in zip(parent, child)) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", out.stderr
