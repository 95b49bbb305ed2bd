"""The compiled gather with a column map: one member's rows copied into their places in an atlas
batch, every column checked against the member's width and mapped onto the vocabulary.

Two numba passes (compiled once per dtype combination, cached on disk, GIL released, in parallel
over rows for large batches, as :mod:`._gather`):

- :func:`count_kept` — when the member's map drops genes: how many entries of each row the
  vocabulary keeps (the rows' output lengths), checking every column first.
- :func:`gather_remap` — copies each row's kept values (cast as :func:`._gather.gather` casts)
  and mapped columns to ``dest[i]`` in the output, and sorts a row's columns (values follow,
  stable) when ``sort`` and they are out of order.

``cmap`` is the member's column map (int32: member column -> vocabulary column, -1 = dropped). A
column ``>= width`` (the member's gene count) is never looked up: the first such row makes the
pass return its index, and the caller raises :class:`~scdl_gpu.errors.ArchiveError` naming the
member's ``col_ptr.npy``. The NumPy reference is :func:`gather_remap_reference`.
"""

from __future__ import annotations

import numba
import numpy as np

from ..archive._bounds import column_error
from ._gather import _JIT, _launch, _sort_row, _via_double


@numba.njit(**_JIT)
def _row_ok(cols, s, n, width):  # pragma: no cover - compiled
    """Whether every column of the row is below ``width`` (unsigned compare; vectorisable)."""
    top = cols.dtype.type(0)
    for j in range(s, s + n):
        top = max(top, cols[j])
    return n == 0 or np.uint64(top) < np.uint64(width)


@numba.njit(**_JIT)
def _count_row(cols, s, n, cmap):  # pragma: no cover - compiled
    kept = 0
    for j in range(s, s + n):
        kept += cmap[cols[j]] >= 0
    return kept


@numba.njit(**_JIT)
def _count_serial(cols, starts, lens, width, cmap, kept):  # pragma: no cover - compiled
    for i in range(starts.shape[0]):
        if not _row_ok(cols, starts[i], lens[i], width):
            return i
        kept[i] = _count_row(cols, starts[i], lens[i], cmap)
    return -1


@numba.njit(parallel=True, **_JIT)
def _count_parallel(cols, starts, lens, width, cmap, kept):  # pragma: no cover - compiled
    bad = np.full(starts.shape[0], False)
    for i in numba.prange(starts.shape[0]):
        if _row_ok(cols, starts[i], lens[i], width):
            kept[i] = _count_row(cols, starts[i], lens[i], cmap)
        else:
            bad[i] = True
    for i in range(starts.shape[0]):
        if bad[i]:
            return i
    return -1


@numba.njit(**_JIT)
def _remap_row(data, cols, s, n, o, width, cmap, out_vals, out_cols, via_double, drops, sort):  # pragma: no cover
    """One row into ``[o, o + kept)``; False when a column is out of range (nothing written)."""
    if not _row_ok(cols, s, n, width):
        return False
    k = o
    if drops:
        for j in range(s, s + n):
            t = cmap[cols[j]]
            if t >= 0:
                out_cols[k] = t
                if via_double:  # two statements, not a conditional expression: that would unify the
                    out_vals[k] = np.float64(data[j])  # types and round int64 twice
                else:
                    out_vals[k] = data[j]
                k += 1
    else:
        for j in range(s, s + n):
            out_cols[k] = cmap[cols[j]]
            if via_double:
                out_vals[k] = np.float64(data[j])
            else:
                out_vals[k] = data[j]
            k += 1
    m = k - o
    if sort and m > 1:
        unsorted = False
        for j in range(o + 1, o + m):
            unsorted |= out_cols[j] < out_cols[j - 1]
        if unsorted:
            _sort_row(out_cols, out_vals, o, m)
    return True


@numba.njit(**_JIT)
def _remap_serial(data, cols, starts, lens, dest, width, cmap, out_vals, out_cols, via_double, drops,
                  sort):  # pragma: no cover - compiled
    for i in range(starts.shape[0]):
        if not _remap_row(data, cols, starts[i], lens[i], dest[i], width, cmap, out_vals, out_cols, via_double, drops,
                          sort):
            return i
    return -1


@numba.njit(parallel=True, **_JIT)
def _remap_parallel(data, cols, starts, lens, dest, width, cmap, out_vals, out_cols, via_double, drops,
                    sort):  # pragma: no cover - compiled
    bad = np.full(starts.shape[0], False)
    for i in numba.prange(starts.shape[0]):
        bad[i] = not _remap_row(data, cols, starts[i], lens[i], dest[i], width, cmap, out_vals, out_cols, via_double,
                                drops, sort)
    for i in range(starts.shape[0]):
        if bad[i]:
            return i
    return -1


def _raise_bad(cols, starts, lens, i: int, width: int, archive, rows) -> None:
    seg = np.asarray(cols[int(starts[i]) : int(starts[i]) + int(lens[i])]).astype(np.uint64)
    c = int(seg[seg >= np.uint64(width)][0])
    raise column_error(archive, int(rows[i]) if rows is not None else i, c, width)


def count_kept(cols: np.ndarray, starts: np.ndarray, lens: np.ndarray, width: int, cmap: np.ndarray, *,
               archive="", rows: np.ndarray | None = None) -> np.ndarray:
    """Entries of each row the map keeps (int64); ``ArchiveError`` on a column ``>= width``
    (naming ``col_ptr.npy`` under ``archive`` and the member row ``rows[i]``)."""
    kept = np.empty(len(starts), np.int64)
    args = (cols, starts, lens, np.int64(width), cmap, kept)
    bad = _launch(_count_serial, _count_parallel, args, int(lens.sum()), len(starts))
    if bad >= 0:
        _raise_bad(cols, starts, lens, bad, width, archive, rows)
    return kept


def gather_remap(data: np.ndarray, cols: np.ndarray, starts: np.ndarray, lens: np.ndarray, dest: np.ndarray,
                 width: int, cmap: np.ndarray, out_vals: np.ndarray, out_cols: np.ndarray, *, drops: bool,
                 sort: bool, archive="", rows: np.ndarray | None = None) -> None:
    """Copy row ``i`` (``lens[i]`` entries from ``starts[i]`` in ``data``/``cols``) to ``dest[i]``
    in ``out_vals``/``out_cols``: values cast to ``out_vals``'s dtype, columns through ``cmap``
    (dropping ``-1`` when ``drops``; then the caller sized the rows with :func:`count_kept`).
    Raises ``ArchiveError`` on a column ``>= width``."""
    for a in (starts, lens, dest):
        if a.dtype != np.int64 or len(a) != len(starts):
            raise ValueError("starts, lens and dest must be int64 arrays of one length")
    args = (data, cols, starts, lens, dest, np.int64(width), cmap, out_vals, out_cols,
            _via_double(data.dtype, out_vals), bool(drops), bool(sort))
    bad = _launch(_remap_serial, _remap_parallel, args, int(lens.sum()), len(starts))
    if bad >= 0:
        _raise_bad(cols, starts, lens, bad, width, archive, rows)


def gather_remap_reference(data, cols, starts, lens, width, cmap, value_dtype, index_dtype, sort: bool):
    """NumPy twin for tests: ``(out_ptr, values, columns)`` of the rows packed in order."""
    vals_out, cols_out, ptr = [], [], [0]
    cmap = np.asarray(cmap, np.int64)
    for s, n in zip(np.asarray(starts, np.int64), np.asarray(lens, np.int64)):
        c = np.asarray(cols[s : s + n]).astype(np.uint64)
        if c.size and c.max() >= np.uint64(width):
            raise column_error("", -1, int(c.max()), width)
        t = cmap[c.astype(np.int64)]
        v = np.asarray(data[s : s + n])
        v = (v.astype(np.float64) if v.dtype != np.dtype(value_dtype) else v).astype(value_dtype)[t >= 0]
        t = t[t >= 0]
        if sort:
            o = np.argsort(t, kind="stable")
            t, v = t[o], v[o]
        vals_out.append(v)
        cols_out.append(t.astype(index_dtype))
        ptr.append(ptr[-1] + len(t))
    empty = (np.zeros(0, value_dtype), np.zeros(0, index_dtype))
    return (np.asarray(ptr, np.int64), np.concatenate(vals_out) if vals_out else empty[0],
            np.concatenate(cols_out) if cols_out else empty[1])


def warm_up(data_dtype, col_dtype, outputs) -> None:
    """Compile (or load from numba's cache) both passes for each ``(value, index)`` dtype in ``outputs``."""
    data, cols = np.ones(1, data_dtype), np.zeros(1, col_dtype)
    for a in (data, cols):
        a.setflags(write=False)  # as the maps are
    one = np.zeros(1, np.int64)
    lens = np.ones(1, np.int64)
    cmap = np.zeros(1, np.int32)
    from ._gather import _forked

    for run in (_count_serial,) if _forked[0] else (_count_serial, _count_parallel):
        run(cols, one, lens, np.int64(1), cmap, np.empty(1, np.int64))
    for vd, idt in dict.fromkeys(outputs):
        out_v, out_c = np.empty(1, vd), np.empty(1, idt)
        for run in (_remap_serial,) if _forked[0] else (_remap_serial, _remap_parallel):
            run(data, cols, one, lens, one, np.int64(1), cmap, out_v, out_c, False, False, False)


__all__ = ["count_kept", "gather_remap", "gather_remap_reference", "warm_up"]
