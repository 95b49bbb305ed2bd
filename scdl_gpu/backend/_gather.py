"""The compiled, bounds-checked row gather: archive rows in, one batch's values and columns out.

Every batch of every CPU read path goes through two numba functions (compiled once per dtype
combination, cached on disk, GIL released):

- :func:`plan` — for each requested row, its span in the value file from ``row_ptr``, checked:
  ``0 <= row_ptr[r] <= row_ptr[r + 1] <= len(data)``. A span that fails names ``row_ptr.npy``.
- :func:`gather` — copies each row's values (cast as the CUDA kernels round them) and
  columns into the output, checking every column against the archive's width, and sorts the
  columns inside a row (values follow, stable) when asked. In parallel over rows for large
  batches. A column that fails names ``col_ptr.npy``.
- :func:`gather_chunked` — the same copy for a chunked archive (``chunk_NNNNN/``): the rows
  grouped by chunk (stably), each run of one chunk copied from that chunk's arrays into the rows'
  places in the output; planned against the global row pointers the archive layer builds.

Nothing outside the maps is ever read and no invalid CSR is ever returned: the first violation
raises :class:`~scdl_gpu.errors.ArchiveError` (rows out of the archive's range are the caller's
error: ``IndexError``). The NumPy reference of both is :func:`gather_reference`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..archive._bounds import column_error, span_error
from ..archive._chunked import ChunkedStorage
from ..archive._constants import FileNames
from ..errors import ArchiveError

log = logging.getLogger(__name__)

# Below this many values a batch is copied on the calling thread. Random rows are bound by memory
# latency, which threads overlap: on 2 cores, 64 rows of ~1,450 values went from 0.66M to 1.3M
# cells/s in parallel (numba's OpenMP layer), so the threshold is low.
PARALLEL_MIN_VALUES = 1 << 13
_parallel = threading.Lock()
_forked = [False]  # set in a forked child: GNU OpenMP (numba's usual layer) aborts a child that uses it


def _after_fork() -> None:
    _forked[0] = True


os.register_at_fork(after_in_child=_after_fork)
_SMALL_SORT = 24  # rows shorter than this are insertion-sorted in place (no allocation)

_JIT = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)


@numba.njit(**_JIT)
def _plan(row_ptr, rows, n_data, starts, in_ptr):  # pragma: no cover - compiled
    """Fill ``starts``/``in_ptr``; return (status, index): 0 ok, 1 row out of range, 2 bad span."""
    n_rows = row_ptr.shape[0] - 1
    total = 0
    in_ptr[0] = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0 or r >= n_rows:
            return 1, i
        lo = np.int64(row_ptr[r])
        hi = np.int64(row_ptr[r + 1])
        # int64 views of uint64 pointers: a value >= 2**63 shows as negative and fails here too
        if lo < 0 or hi < lo or hi > n_data:
            return 2, i
        starts[i] = lo
        total += hi - lo
        in_ptr[i + 1] = total
    return 0, -1


@numba.njit(**_JIT)
def _sort_row(cols, vals, o, n):  # pragma: no cover - compiled
    """Sort ``cols[o:o+n]`` ascending, ``vals`` following; stable, so duplicates keep their order."""
    if n <= _SMALL_SORT:
        for j in range(o + 1, o + n):
            c, v = cols[j], vals[j]
            k = j - 1
            while k >= o and cols[k] > c:
                cols[k + 1] = cols[k]
                vals[k + 1] = vals[k]
                k -= 1
            cols[k + 1] = c
            vals[k + 1] = v
        return
    order = np.argsort(cols[o : o + n], kind="mergesort")
    c = cols[o : o + n][order]
    v = vals[o : o + n][order]
    cols[o : o + n] = c
    vals[o : o + n] = v


@numba.njit(**_JIT)
def _copy_row(data, cols, s, o, n, width, out_vals, out_cols, via_double, sort):  # pragma: no cover - compiled
    """One row; returns False when a column is out of range (the row is then left zeroed). Sorts
    the row when ``sort`` and its columns are not non-decreasing.

    The loops run over local views with no early exit (the largest column is checked after the
    copy): that is what lets LLVM vectorise them. Indexing the whole arrays with an early exit
    measured 2-3x slower (block rows 0.7M against 2.0M cells/s on one core)."""
    src, dst, src_v, dst_v = cols[s : s + n], out_cols[o : o + n], data[s : s + n], out_vals[o : o + n]
    top = src.dtype.type(0)  # columns are unsigned, so uint64 columns >= 2**63 stay huge here
    unsorted = False
    if n:
        top = src[0]
        dst[0] = src[0]
        if via_double:  # two statements: a conditional expression would unify the types (int64 rounded twice)
            dst_v[0] = np.float64(src_v[0])
        else:
            dst_v[0] = src_v[0]
    # The order check rides along in the copy loop (a second loop over the row measured 10% slower
    # at random rows of 4,096); each loop is branch-free, so LLVM vectorises it.
    if via_double:
        for j in range(1, n):
            x = src[j]
            top = max(top, x)
            unsorted |= x < src[j - 1]
            dst[j] = x
            dst_v[j] = np.float64(src_v[j])  # uint64 -> float32 rounds through double, as the kernels do
    elif sort:
        for j in range(1, n):
            x = src[j]
            top = max(top, x)
            unsorted |= x < src[j - 1]
            dst[j] = x
            dst_v[j] = src_v[j]
    else:
        for j in range(1, n):
            x = src[j]
            top = max(top, x)
            dst[j] = x
            dst_v[j] = src_v[j]
    if n and np.uint64(top) >= np.uint64(width):
        dst[:] = 0
        dst_v[:] = 0
        return False
    if sort and unsorted:
        _sort_row(out_cols, out_vals, o, n)
    return True


# Random rows wait on memory at every row start (two new streams, a TLB miss each): the first
# PREFETCH_LINES cache lines of both spans of the row PREFETCH_AHEAD places on are asked for while
# this row copies. Measured on 2 cores, the parallel gather alone, random uint16 rows into float32:
# +11% at 64 rows a batch, +13% at 4,096 (medians of 5 interleaved repeats); 8 lines, or all rows
# prefetched up front, gained less.
PREFETCH_LINES = 16
PREFETCH_AHEAD = 4


@intrinsic
def _prefetch(typingctx, arr, idx):  # pragma: no cover - compiled
    """``llvm.prefetch`` of ``arr[idx]`` for reading, into every cache level: a hint, never a fault."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, cgutils.voidptr_t), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@numba.njit(inline="always", **_JIT)
def _prefetch_row(data, cols, starts, in_ptr, j):  # pragma: no cover - compiled
    """Ask for the first lines of row ``j``'s values and columns (none past the batch)."""
    if j < starts.shape[0]:
        prefetch_span(data, cols, starts[j], in_ptr[j + 1] - in_ptr[j])


@numba.njit(inline="always", **_JIT)
def prefetch_span(data, cols, s, n):  # pragma: no cover - compiled
    """Ask for the first PREFETCH_LINES lines of ``data[s:s+n]`` and ``cols[s:s+n]`` (inside the span)."""
    dstep, cstep = 64 // data.itemsize, 64 // cols.itemsize
    for k in range(PREFETCH_LINES):
        if k * dstep < n:
            _prefetch(data, s + k * dstep)
        if k * cstep < n:
            _prefetch(cols, s + k * cstep)


@numba.njit(**_JIT)
def _gather_serial(data, cols, starts, in_ptr, width, out_vals, out_cols, via_double, sort):  # pragma: no cover
    for i in range(starts.shape[0]):
        _prefetch_row(data, cols, starts, in_ptr, i + PREFETCH_AHEAD)
        o = in_ptr[i]
        if not _copy_row(data, cols, starts[i], o, in_ptr[i + 1] - o, width, out_vals, out_cols, via_double, sort):
            return i
    return -1


@numba.njit(parallel=True, **_JIT)
def _gather_parallel(data, cols, starts, in_ptr, width, out_vals, out_cols, via_double, sort):  # pragma: no cover
    bad = 0
    for i in numba.prange(starts.shape[0]):
        _prefetch_row(data, cols, starts, in_ptr, i + PREFETCH_AHEAD)
        o = in_ptr[i]
        if not _copy_row(data, cols, starts[i], o, in_ptr[i + 1] - o, width, out_vals, out_cols, via_double, sort):
            bad += 1
    if bad == 0:
        return -1
    for i in range(starts.shape[0]):  # the error path only: find the first bad row
        o = in_ptr[i]
        for j in range(in_ptr[i + 1] - o):
            if np.uint64(cols[starts[i] + j]) >= np.uint64(width):
                return i
    return -1


# A chunk's arrays reach the compiled gather as addresses (see chunk_pointers) and become arrays
# there with no reference count: arrays taken from a numba list carry one, which every row's slices
# bumped from every thread at once (measured 5-10x slower than the flat gather on rows of one chunk).
_copy_row_inline = numba.njit(inline="always", **_JIT)(_copy_row.py_func)


@intrinsic
def _voidptr(typingctx, addr):  # pragma: no cover - compiled
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(addr), codegen


@numba.njit(inline="always", **_JIT)
def _gather_chunked_range(chunks, k, order, lo, hi, starts, in_ptr, width, out_vals, out_cols, via_double,
                          sort):  # pragma: no cover - compiled
    """Batch rows ``order[lo:hi]``, all of chunk ``k`` (``chunks``: see :func:`chunk_pointers`).
    Returns the first bad batch position, or -1 (no early exit: see ``_copy_row``)."""
    data_at, cols_at, lens, data_ex, cols_ex, offsets = chunks
    data = numba.carray(_voidptr(data_at[k]), lens[k], data_ex.dtype)
    cols = numba.carray(_voidptr(cols_at[k]), lens[k], cols_ex.dtype)
    base = offsets[k]
    first = -1
    for j in range(lo, hi):
        i = order[j]
        o = in_ptr[i]
        ok = _copy_row_inline(data, cols, starts[i] - base, o, in_ptr[i + 1] - o, width, out_vals, out_cols,
                              via_double, sort)
        if not ok and first < 0:
            first = i
    return first


@numba.njit(**_JIT)
def _gather_chunked_serial(chunks, chunk_size, rows, order, bounds, starts, in_ptr, width, out_vals, out_cols,
                           via_double, sort):  # pragma: no cover - compiled
    """As :func:`_gather_serial` over a chunked archive: ``order`` lists the batch positions grouped
    by chunk, ``bounds`` cuts it into runs of one chunk each; row ``rows[i]`` of chunk
    ``k = rows[i] // chunk_size`` is read at its global start less the chunk's first value."""
    for t in range(bounds.shape[0] - 1):
        k = rows[order[bounds[t]]] // chunk_size
        i = _gather_chunked_range(chunks, k, order, bounds[t], bounds[t + 1], starts, in_ptr, width, out_vals,
                                  out_cols, via_double, sort)
        if i >= 0:
            return i
    return -1


@numba.njit(parallel=True, **_JIT)
def _gather_chunked_parallel(chunks, chunk_size, rows, order, bounds, starts, in_ptr, width, out_vals, out_cols,
                             via_double, sort):  # pragma: no cover - compiled
    runs = bounds.shape[0] - 1
    first = np.empty(runs, np.int64)
    for t in numba.prange(runs):
        k = rows[order[bounds[t]]] // chunk_size
        first[t] = _gather_chunked_range(chunks, k, order, bounds[t], bounds[t + 1], starts, in_ptr, width, out_vals,
                                         out_cols, via_double, sort)
    for t in range(runs):
        if first[t] >= 0:
            return first[t]
    return -1


def plan(row_ptr: np.ndarray, rows: np.ndarray, n_data: int, archive: Path | str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(starts, in_ptr)`` of ``rows`` (int64): each row's first value in the value file and the
    rows' places in the batch. Raises ``IndexError`` for a row outside the archive and
    :class:`ArchiveError` for a span that ``row_ptr`` gets wrong."""
    starts = np.empty(len(rows), np.int64)
    in_ptr = np.empty(len(rows) + 1, np.int64)
    status, i = _plan(row_ptr, rows, n_data, starts, in_ptr)
    if status == 1:
        raise IndexError(f"row {int(rows[i])} out of range for an archive of {len(row_ptr) - 1} rows")
    if status == 2:
        r = int(rows[i])
        raise span_error(archive, r, int(row_ptr[r]), int(row_ptr[r + 1]), n_data)
    return starts, in_ptr


def gather(data: np.ndarray, cols: np.ndarray, starts: np.ndarray, in_ptr: np.ndarray, width: int,
           out_vals: np.ndarray, out_cols: np.ndarray, *, sort: bool = True, archive: Path | str = "",
           rows: np.ndarray | None = None) -> None:
    """Copy the planned rows into ``out_vals``/``out_cols`` (length ``in_ptr[-1]``), casting values
    to ``out_vals``'s dtype (through float64 when it differs) and columns to ``out_cols``'s; sort
    the columns of every row that is not sorted when ``sort`` (the check is free: it runs while
    copying). Raises :class:`ArchiveError` on a column ``>= width``, naming the archive row when
    ``rows`` (the planned row ids) is given."""
    n = _check_outputs(starts, in_ptr, out_vals, out_cols)
    args = (data, cols, starts, in_ptr, np.int64(width), out_vals, out_cols, _via_double(data.dtype, out_vals), sort)
    bad = _launch(_gather_serial, _gather_parallel, args, n, len(starts))
    if bad >= 0:
        o, n = int(starts[bad]), int(in_ptr[bad + 1] - in_ptr[bad])
        seg = np.asarray(cols[o : o + n]).astype(np.int64)
        c = int(seg[(seg < 0) | (seg >= width)][0])
        raise column_error(archive, int(rows[bad]) if rows is not None else bad, c, width)


def gather_chunked(chunks: ChunkedStorage, pointers: tuple, rows: np.ndarray, starts: np.ndarray, in_ptr: np.ndarray,
                   width: int, out_vals: np.ndarray, out_cols: np.ndarray, *, sort: bool = True,
                   positions: np.ndarray | None = None, threads: bool = True) -> None:
    """:func:`gather` over a chunked archive: ``pointers`` is :func:`chunk_pointers` of its chunks'
    value and column arrays (float16 values as uint16), ``starts`` the rows' starts in the global
    value numbering (from the global ``row_ptr``). ``positions``: copy only these batch positions
    (their chunks' arrays must be in ``pointers``; default all). ``threads=False``: on the calling
    thread only (the cores are busy elsewhere). A bad column raises ``ArchiveError`` naming the
    chunk's file."""
    n = _check_outputs(starts, in_ptr, out_vals, out_cols)
    if len(rows) != len(starts):
        raise ValueError(f"{len(rows)} row ids for a plan of {len(starts)} rows")
    if not len(rows) or (positions is not None and not len(positions)):
        return
    args = (pointers, np.int64(chunks.chunk_size), rows, *_chunk_runs(rows, chunks.chunk_size, positions), starts,
            in_ptr, np.int64(width), out_vals, out_cols, _via_double(pointers[3].dtype, out_vals), sort)
    bad = _launch(_gather_chunked_serial, _gather_chunked_parallel, args, n, len(starts), threads)
    if bad >= 0:
        r = int(rows[bad])
        k = chunks.chunk_of(r)
        o, m = int(starts[bad] - chunks.value_offsets[k]), int(in_ptr[bad + 1] - in_ptr[bad])
        seg = np.asarray(chunks.col_ptr[k][o : o + m]).astype(np.int64)
        raise column_error(chunks.path, r, int(seg[(seg < 0) | (seg >= width)][0]), width,
                           chunks.file(k, FileNames.COLPTR))


def _chunk_runs(rows: np.ndarray, chunk_size: int, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(order, bounds)``: the batch positions (``positions``, default all) grouped by chunk
    (stable), cut where the chunk changes and into at least two runs per thread (so one chunk's
    rows are still shared out)."""
    pos = np.arange(len(rows), dtype=np.int64) if positions is None else np.asarray(positions, np.int64)
    n = len(pos)
    chunk_of = rows[pos] // chunk_size
    order = pos[np.argsort(chunk_of, kind="stable")] if np.any(chunk_of[1:] < chunk_of[:-1]) else pos
    grouped = rows[order] // chunk_size
    step = -(-n // (2 * numba.get_num_threads()))
    cuts = [[0], np.flatnonzero(grouped[1:] != grouped[:-1]) + 1, np.arange(step, n, step), [n]]
    return order, np.unique(np.concatenate(cuts)).astype(np.int64)


def chunk_pointers(data: list, cols: list, offsets: np.ndarray, data_dtype, col_dtype) -> tuple:
    """What the compiled chunked gather reads the chunks through: each chunk's value and column
    addresses and length, a 0-length array of each dtype, each chunk's first global value. The
    caller keeps ``data`` and ``cols`` (the maps) alive as long as it gathers through these. A chunk
    whose arrays are ``None`` (compressed, not decoded) gets address 0: gather no row of it."""
    lens = np.diff(offsets).astype(np.int64)
    if len(data) != len(lens) or any(d is not None and (len(d) != n or len(c) != n) for d, c, n in zip(data, cols, lens)):
        raise ValueError("the chunks' arrays disagree with their offsets")
    addresses = [np.array([0 if a is None else a.ctypes.data for a in arrays], np.int64) for arrays in (data, cols)]
    return (*addresses, lens, np.empty(0, data_dtype), np.empty(0, col_dtype), np.ascontiguousarray(offsets, np.int64))


def _check_outputs(starts, in_ptr, out_vals, out_cols) -> int:
    n = int(in_ptr[-1])
    if len(out_vals) < n or len(out_cols) < n or len(in_ptr) != len(starts) + 1:
        raise ValueError(f"outputs of {len(out_vals)}/{len(out_cols)} entries for a plan of {n} values and "
                         f"{len(starts)} rows ({len(in_ptr)} pointers)")
    return n


def _via_double(data_dtype, out_vals) -> bool:
    # Every other cast is one correctly rounded step either way; uint64 -> float32 is not.
    return data_dtype == np.uint64 and out_vals.dtype == np.float32


def _launch(serial, parallel, args, n: int, n_rows: int, threads: bool = True) -> int:
    if threads and n >= PARALLEL_MIN_VALUES and n_rows > 1 and not _forked[0] and _parallel.acquire(blocking=False):
        try:  # one parallel gather at a time: not every threading layer takes concurrent launches
            return parallel(*args)
        finally:
            _parallel.release()
    return serial(*args)


def gather_reference(row_ptr, data, cols, rows, width, value_dtype, index_dtype, sort=False):
    """NumPy twin of :func:`plan` + :func:`gather` for tests: ``(in_ptr, values, columns)``, or the
    exception the compiled path raises."""
    rows = np.asarray(rows, np.int64)
    n_rows = len(row_ptr) - 1
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise IndexError("row out of range")
    lo = np.asarray(row_ptr, np.uint64)[rows].astype(np.int64) if rows.size else np.zeros(0, np.int64)
    hi = np.asarray(row_ptr, np.uint64)[rows + 1].astype(np.int64) if rows.size else np.zeros(0, np.int64)
    if ((lo < 0) | (hi < lo) | (hi > len(data))).any():
        raise ArchiveError("row_ptr.npy")
    in_ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(hi - lo, out=in_ptr[1:])
    idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if rows.size else np.zeros(0, np.int64)
    c = np.asarray(cols)[idx].astype(np.int64)
    if ((c < 0) | (c >= width)).any():
        raise ArchiveError("col_ptr.npy")
    v = np.asarray(data)[idx]
    if np.dtype(value_dtype) != v.dtype:
        v = v.astype(np.float64)
    v = v.astype(value_dtype)
    if sort:
        row_of = np.repeat(np.arange(len(rows)), hi - lo)
        order = np.lexsort((c, row_of))  # stable for equal (row, column)
        c, v = c[order], v[order]
    return in_ptr, v, c.astype(index_dtype)


def warm_up(data_dtype, col_dtype, row_ptr_dtype, outputs, chunked: bool = False) -> float:
    """Compile (or load from numba's disk cache) the gathers a backend will call, for each
    ``(value dtype, index dtype)`` in ``outputs``, so that the cost does not land on the first
    batch of an epoch. Returns the seconds it took (logged when it was a compile)."""
    t0 = time.perf_counter()
    row_ptr = np.array([0, 1, 1], row_ptr_dtype)
    data, cols = np.ones(1, data_dtype), np.zeros(1, col_dtype)
    for a in (row_ptr, data, cols):  # as the archive's maps are: numba compiles read-only arrays apart
        a.setflags(write=False)
    starts, in_ptr = plan(row_ptr, np.array([0, 1], np.int64), 1)
    for vd, idt in dict.fromkeys(outputs):
        out_v, out_c = np.empty(1, vd), np.empty(1, idt)
        # not the parallel one in a forked child: its first launch there aborts the process
        if chunked:
            runs = (_gather_chunked_serial,) if _forked[0] else (_gather_chunked_serial, _gather_chunked_parallel)
            two = np.array([0, 1], np.int64)
            pointers = chunk_pointers([data], [cols], np.array([0, 1]), data.dtype, cols.dtype)
            head = (pointers, np.int64(2), two, two, np.array([0, 2], np.int64))
        else:
            runs = (_gather_serial,) if _forked[0] else (_gather_serial, _gather_parallel)
            head = (data, cols)
        for run in runs:  # `via_double` and `sort` are values, not types
            run(*head, starts, in_ptr, np.int64(1), out_v, out_c, False, False)
    dt = time.perf_counter() - t0
    if dt > 0.5:
        log.info("compiled the row gather for %s values / %s columns in %.1f s (numba caches it on disk)",
                 np.dtype(data_dtype).name, np.dtype(col_dtype).name, dt)
    return dt


__all__ = ["PARALLEL_MIN_VALUES", "chunk_pointers", "gather", "gather_chunked", "gather_reference", "plan", "warm_up"]

