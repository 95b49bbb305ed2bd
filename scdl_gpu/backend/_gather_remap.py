"""The compiled gather with column maps: an atlas batch's rows copied from their members into
their places in the output, every column checked against its member's width and mapped onto the
vocabulary.

Two numba passes (compiled once per dtype combination, cached on disk, GIL released, in parallel
over rows for batches as large as the flat gather's), each ONE launch over every row of the
members that share value and column dtypes (a batch in block order touches ten members: ten
parallel launches would cost ten thread wake-ups):

- :func:`count_kept` — when a member's map drops genes: how many entries of each row the
  vocabulary keeps (the rows' output lengths), checking every column first.
- :func:`gather_remap` — copies each row's kept values (cast as :func:`._gather.gather` casts)
  and mapped columns to ``dest[i]`` in the output, and sorts a row's columns (values follow,
  stable) when its member needs it and they are out of order.

The members reach the passes as :func:`member_pointers` (addresses, as the chunked gather reads
its chunks, so no reference count is bumped per row); ``maps`` holds every member's column map
(int32: member column -> vocabulary column, -1 = dropped) back to back, member ``k``'s from
``map_at[k]``; where ``identity[k]`` (a member whose columns the atlas stored already mapped)
columns are copied as they are, with no lookup. A column ``>= widths[k]`` is never looked up: the pass returns the first such row
and :func:`gather_remap` raises :class:`~scdl_gpu.errors.ArchiveError` naming that member's
``col_ptr.npy``. The NumPy reference is :func:`gather_remap_reference`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from ..archive._bounds import column_error
from ._gather import _JIT, PREFETCH_AHEAD, _forked, _launch, _sort_row, _via_double, _voidptr, prefetch_span


def _run(serial, parallel, args, n: int, n_rows: int) -> int:
    """As the flat gather: in parallel over rows from ``_gather.PARALLEL_MIN_VALUES`` values. On a
    quiet 2-core machine that doubled block order (one launch per batch, like the flat gather's);
    on a machine whose cores are busy with other work, any parallel launch costs milliseconds."""
    return _launch(serial, parallel, args, n, n_rows)


@numba.njit(inline="always", **_JIT)
def _member(data_at, cols_at, sizes, data_ex, cols_ex, k):  # pragma: no cover - compiled
    """Member ``k``'s arrays, with no reference count. The pointer tuple is unpacked once per
    launch, outside the loop over rows: unpacking it per row bumped its arrays' reference counts
    from every thread at once (measured 2-4x slower in parallel)."""
    return (numba.carray(_voidptr(data_at[k]), sizes[k], data_ex.dtype),
            numba.carray(_voidptr(cols_at[k]), sizes[k], cols_ex.dtype))


@numba.njit(inline="always", **_JIT)
def _prefetch_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, j):  # pragma: no cover
    """The flat gather's read-ahead (``_gather.PREFETCH_LINES``) for row ``j`` of the pass, in its member."""
    if j < starts.shape[0]:
        data, cols = _member(data_at, cols_at, sizes, data_ex, cols_ex, member[j])
        prefetch_span(data, cols, starts[j], lens[j])


@numba.njit(inline="always", **_JIT)
def _row_ok(cols, s, n, width):  # pragma: no cover - compiled
    """Whether every column of the row is below ``width`` (unsigned compare; vectorisable)."""
    top = cols.dtype.type(0)
    for j in range(s, s + n):
        top = max(top, cols[j])
    return n == 0 or np.uint64(top) < np.uint64(width)


@numba.njit(inline="always", **_JIT)
def _count_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, widths, maps, map_at, kept,
               i):  # pragma: no cover - compiled
    k = member[i]
    _, cols = _member(data_at, cols_at, sizes, data_ex, cols_ex, k)
    s, n = starts[i], lens[i]
    if not _row_ok(cols, s, n, widths[k]):
        return False
    base = map_at[k]
    c = 0
    for j in range(s, s + n):
        c += maps[base + cols[j]] >= 0
    kept[i] = c
    return True


@numba.njit(**_JIT)
def _first_bad(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, widths):  # pragma: no cover
    """The error path of the parallel passes: the first row with a column out of range."""
    for i in range(starts.shape[0]):
        _, cols = _member(data_at, cols_at, sizes, data_ex, cols_ex, member[i])
        if not _row_ok(cols, starts[i], lens[i], widths[member[i]]):
            return i
    return -1


@numba.njit(**_JIT)
def _count_serial(ptrs, member, starts, lens, widths, maps, map_at, kept):  # pragma: no cover - compiled
    data_at, cols_at, sizes, data_ex, cols_ex = ptrs
    for i in range(starts.shape[0]):
        if not _count_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, widths, maps, map_at, kept, i):
            return i
    return -1


@numba.njit(parallel=True, **_JIT)
def _count_parallel(ptrs, member, starts, lens, widths, maps, map_at, kept):  # pragma: no cover - compiled
    data_at, cols_at, sizes, data_ex, cols_ex = ptrs
    bad = 0  # a reduction, as in _gather: an array of flags would be one more parallel region
    for i in numba.prange(starts.shape[0]):
        if not _count_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, widths, maps, map_at,
                          kept, i):
            bad += 1
    return -1 if bad == 0 else _first_bad(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, widths)


_RADIX_MIN = 64  # shorter rows: the merge sort of ``_gather._sort_row``
_RADIX_BITS = 11


@numba.njit(**_JIT)
def _radix_sort_row(cols, vals, o, m, top):  # pragma: no cover - compiled
    """Sort ``cols[o:o+m]`` (non-negative, at most ``top``), ``vals`` following: a stable LSD radix
    sort, 11 bits a pass (two passes for a vocabulary below 4M genes). A row of a member whose
    genes come in another order than the vocabulary's is a shuffle of sorted runs, which costs a
    comparison sort ~10x more (measured 5k against 50k cells/s at 1,450 values a row)."""
    buf_c = np.empty(m, cols.dtype)
    buf_v = np.empty(m, vals.dtype)
    count = np.empty((1 << _RADIX_BITS) + 1, np.int64)
    mask = (1 << _RADIX_BITS) - 1
    shift = 0
    in_buf = False
    while True:
        src_c = buf_c if in_buf else cols[o : o + m]
        src_v = buf_v if in_buf else vals[o : o + m]
        dst_c = cols[o : o + m] if in_buf else buf_c
        dst_v = vals[o : o + m] if in_buf else buf_v
        count[:] = 0
        for j in range(m):
            count[((np.int64(src_c[j]) >> shift) & mask) + 1] += 1
        for d in range(1 << _RADIX_BITS):
            count[d + 1] += count[d]
        for j in range(m):
            d = (np.int64(src_c[j]) >> shift) & mask
            p = count[d]
            dst_c[p] = src_c[j]
            dst_v[p] = src_v[j]
            count[d] = p + 1
        in_buf = not in_buf
        shift += _RADIX_BITS
        if (top >> shift) == 0:
            break
    if in_buf:
        cols[o : o + m] = buf_c
        vals[o : o + m] = buf_v


@numba.njit(inline="always", **_JIT)
def _remap_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, dest, widths, maps, map_at, drops,
               identity, sort, out_vals, out_cols, via_double, i):  # pragma: no cover - compiled
    """Row ``i`` into ``[dest[i], dest[i] + kept)``; False when a column is out of range.

    Without drops the values and the columns are copied by two loops over local views with no
    branch, which LLVM vectorises (the value cast as in ``_gather._copy_row``; the columns a
    gather from the map); with drops, one compacting loop."""
    k = member[i]
    data, cols = _member(data_at, cols_at, sizes, data_ex, cols_ex, k)
    s, n, o = starts[i], lens[i], dest[i]
    width = widths[k]
    # a map that covers every value the column dtype holds (see concat_maps) is read unchecked and
    # the row's largest column checked after the copy, as the flat gather does: one pass, not two
    ident = identity[k]  # columns copied as they are, the largest checked after the copy
    covered = ident or (cols_ex.itemsize <= 2 and map_at[k + 1] - map_at[k] >= (np.int64(1) << (8 * cols_ex.itemsize)))
    if (drops[k] or not covered) and not _row_ok(cols, s, n, width):
        return False
    src_c, src_v = cols[s : s + n], data[s : s + n]
    if drops[k]:
        base = map_at[k]
        m = o
        for j in range(n):
            t = maps[base + src_c[j]]
            if t >= 0:
                out_cols[m] = t
                if via_double:  # two statements, not a conditional expression: that would unify the
                    out_vals[m] = np.float64(src_v[j])  # types and round int64 twice
                else:
                    out_vals[m] = src_v[j]
                m += 1
        m -= o
    else:
        m = n
        dst_v, dst_c = out_vals[o : o + n], out_cols[o : o + n]
        if via_double:  # uint64 -> float32 rounds through double, as the kernels do
            for j in range(n):
                dst_v[j] = np.float64(src_v[j])
        else:
            for j in range(n):
                dst_v[j] = src_v[j]
        cmap = maps[map_at[k] : map_at[k + 1]]
        if covered:
            top = src_c.dtype.type(0)
            if ident:  # a loop of its own: no branch inside, so it vectorises
                for j in range(n):
                    c = src_c[j]
                    top = max(top, c)
                    dst_c[j] = c
            else:
                for j in range(n):
                    c = src_c[j]
                    top = max(top, c)
                    dst_c[j] = cmap[c]
            if n and np.uint64(top) >= np.uint64(width):
                dst_v[:] = 0
                dst_c[:] = 0
                return False
        else:
            for j in range(n):
                dst_c[j] = cmap[src_c[j]]
    if sort[k] and m > 1:
        unsorted = False
        top = out_cols[o]
        for j in range(o + 1, o + m):
            unsorted |= out_cols[j] < out_cols[j - 1]
            top = max(top, out_cols[j])
        if unsorted:
            if m <= _RADIX_MIN:
                _sort_row(out_cols, out_vals, o, m)
            else:
                _radix_sort_row(out_cols, out_vals, o, m, np.int64(top))
    return True


@numba.njit(**_JIT)
def _remap_serial(ptrs, member, starts, lens, dest, widths, maps, map_at, drops, identity, sort, out_vals, out_cols,
                  via_double):  # pragma: no cover - compiled
    data_at, cols_at, sizes, data_ex, cols_ex = ptrs
    for i in range(starts.shape[0]):
        _prefetch_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, i + PREFETCH_AHEAD)
        if not _remap_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, dest, widths, maps, map_at,
                          drops, identity, sort, out_vals, out_cols, via_double, i):
            return i
    return -1


@numba.njit(parallel=True, **_JIT)
def _remap_parallel(ptrs, member, starts, lens, dest, widths, maps, map_at, drops, identity, sort, out_vals, out_cols,
                    via_double):  # pragma: no cover - compiled
    data_at, cols_at, sizes, data_ex, cols_ex = ptrs
    bad = 0
    for i in numba.prange(starts.shape[0]):
        _prefetch_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, i + PREFETCH_AHEAD)
        if not _remap_row(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, dest, widths, maps,
                          map_at, drops, identity, sort, out_vals, out_cols, via_double, i):
            bad += 1
    return -1 if bad == 0 else _first_bad(data_at, cols_at, sizes, data_ex, cols_ex, member, starts, lens, widths)


# Row pointer dtypes the compiled planner reads (a member with another takes the per-member route;
# small archives store 8- and 16-bit pointers).
ROW_PTR_KINDS = {np.dtype(t): k for k, t in enumerate((np.uint8, np.uint16, np.uint32, np.uint64, np.int32, np.int64))}


@numba.njit(inline="always", **_JIT)
def _row_ptr_at(at, kind, n, j):  # pragma: no cover - compiled
    """``row_ptr[j]`` of a member as int64 (a uint64 pointer >= 2**63 turns negative: the check fails)."""
    p = _voidptr(at)
    if kind == 0:
        return np.int64(numba.carray(p, n, np.uint8)[j])
    if kind == 1:
        return np.int64(numba.carray(p, n, np.uint16)[j])
    if kind == 2:
        return np.int64(numba.carray(p, n, np.uint32)[j])
    if kind == 3:
        return np.int64(numba.carray(p, n, np.uint64)[j])
    if kind == 4:
        return np.int64(numba.carray(p, n, np.int32)[j])
    return numba.carray(p, n, np.int64)[j]


@numba.njit(**_JIT)
def _plan_members(rp_at, rp_n, rp_kind, n_data, offsets, rows, member, local, starts, lens):  # pragma: no cover
    """Each global row's member, member row, first value and length, every span checked as
    ``_gather._plan`` checks one archive's. Returns (status, index): 0 ok, 1 row outside the atlas,
    2 a span its member's ``row_ptr`` gets wrong."""
    last = offsets.shape[0] - 1
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0 or r >= offsets[last]:
            return 1, i
        k = np.searchsorted(offsets, r, side="right") - 1  # empty members are stepped over
        j = r - offsets[k]
        member[i], local[i] = k, j
        if j + 1 >= rp_n[k]:
            return 2, i
        lo = _row_ptr_at(rp_at[k], rp_kind[k], rp_n[k], j)
        hi = _row_ptr_at(rp_at[k], rp_kind[k], rp_n[k], j + 1)
        if lo < 0 or hi < lo or hi > n_data[k]:
            return 2, i
        starts[i], lens[i] = lo, hi - lo
    return 0, -1


def row_pointers(row_ptrs: Sequence[np.ndarray]) -> tuple | None:
    """What :func:`plan_members` reads the members' ``row_ptr`` through (addresses, lengths, dtype
    kinds); None when one is of a dtype it does not read or not contiguous. The caller keeps the
    arrays alive."""
    if any(np.dtype(r.dtype) not in ROW_PTR_KINDS or not r.flags.c_contiguous or len(r) == 0 for r in row_ptrs):
        return None
    return (np.array([r.ctypes.data for r in row_ptrs], np.int64), np.array([len(r) for r in row_ptrs], np.int64),
            np.array([ROW_PTR_KINDS[np.dtype(r.dtype)] for r in row_ptrs], np.int64))


def plan_members(pointers: tuple, n_data: np.ndarray, offsets: np.ndarray, rows: np.ndarray):
    """``(member, local, starts, lens)`` of global ``rows`` (int64), in one compiled pass.
    Raises ``(1, i)``/``(2, i)`` as a status for the caller to name: see :func:`_plan_members`."""
    n = len(rows)
    member, local, starts, lens = (np.empty(n, np.int64) for _ in range(4))
    status, i = _plan_members(*pointers, n_data, offsets, rows, member, local, starts, lens)
    return status, int(i), member, local, starts, lens


def member_pointers(arrays: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple:
    """What the passes read members through: each member's value and column addresses and length,
    and a 0-length array of each dtype (all members alike). The caller keeps ``arrays`` alive."""
    if not arrays:
        raise ValueError("no members")
    (d0, c0) = arrays[0]
    for d, c in arrays:
        if d.dtype != d0.dtype or c.dtype != c0.dtype or len(d) != len(c) or not (d.flags.c_contiguous and c.flags.c_contiguous):
            raise ValueError("members read in one pass need one value dtype, one column dtype and contiguous arrays")
    addresses = [np.array([a.ctypes.data for a in part], np.int64) for part in zip(*arrays)]
    return (*addresses, np.array([len(d) for d, _ in arrays], np.int64), np.empty(0, d0.dtype), np.empty(0, c0.dtype))


def concat_maps(maps: Sequence[np.ndarray], col_dtypes: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(maps back to back as int32, each one's start; len(maps) + 1)``. With ``col_dtypes`` (each
    member's column dtype), a map of a member whose columns are 8 or 16 bits is padded with -1 to
    every value they can hold (at most 256 KiB), so the copy reads it without checking each column
    first (the row's largest column is checked after the copy)."""
    if col_dtypes is not None:
        maps = [np.pad(m, (0, max(0, (1 << (8 * np.dtype(dt).itemsize)) - len(m))), constant_values=-1)
                if np.dtype(dt).itemsize <= 2 else m for m, dt in zip(maps, col_dtypes)]
    at = np.zeros(len(maps) + 1, np.int64)
    np.cumsum([len(m) for m in maps], out=at[1:])
    return (np.concatenate(maps).astype(np.int32) if maps else np.zeros(0, np.int32)), at


def _bad_column(ptrs_arrays, member, starts, lens, widths, i: int, archives, rows) -> Exception:
    k = int(member[i])
    cols = ptrs_arrays[k][1]
    seg = np.asarray(cols[int(starts[i]) : int(starts[i]) + int(lens[i])]).astype(np.uint64)
    width = int(widths[k])
    c = int(seg[seg >= np.uint64(width)][0])
    where = archives[k] if archives else ""
    file = where if str(where).endswith(".npy") else None  # the atlas's mapped columns, not the member's
    return column_error(where, int(rows[i]) if rows is not None else i, c, width, file=file)


def count_kept(arrays, member, starts, lens, widths, maps, map_at, *, archives=None, rows=None,
               ptrs=None) -> np.ndarray:
    """Entries of each row its member's map keeps (int64). ``arrays``: each member's ``(values,
    columns)``; ``member``/``starts``/``lens``: each row's member, first value and length. A column
    ``>= widths[k]`` raises ``ArchiveError`` naming ``col_ptr.npy`` under ``archives[k]`` (or
    ``archives[k]`` itself when it is a ``.npy`` file) and the member row ``rows[i]``."""
    kept = np.empty(len(starts), np.int64)
    args = (member_pointers(arrays) if ptrs is None else ptrs, member, starts, lens, widths, maps, map_at, kept)
    bad = _run(_count_serial, _count_parallel, args, int(lens.sum()), len(starts))
    if bad >= 0:
        raise _bad_column(arrays, member, starts, lens, widths, bad, archives, rows)
    return kept


def gather_remap(arrays, member, starts, lens, dest, widths, maps, map_at, drops, sort, out_vals, out_cols, *,
                 identity=None, archives=None, rows=None, ptrs=None) -> None:
    """Copy row ``i`` (``lens[i]`` entries from ``starts[i]`` of member ``member[i]``'s arrays) to
    ``dest[i]`` in ``out_vals``/``out_cols``: values cast to ``out_vals``'s dtype, columns through
    the member's map (dropping ``-1`` where ``drops[k]``: then :func:`count_kept` sized the rows),
    sorted inside the row where ``sort[k]``, copied as they are where ``identity[k]`` (default: no
    member). Raises ``ArchiveError`` as :func:`count_kept`. ``ptrs``: :func:`member_pointers` of
    ``arrays``, when the caller made it once for many batches."""
    for a in (member, starts, lens, dest):
        if a.dtype != np.int64 or len(a) != len(starts):
            raise ValueError("member, starts, lens and dest must be int64 arrays of one length")
    identity = np.zeros(len(drops), np.bool_) if identity is None else np.asarray(identity, np.bool_)
    args = (member_pointers(arrays) if ptrs is None else ptrs, member, starts, lens, dest, widths, maps, map_at, drops, identity, sort, out_vals,
            out_cols, _via_double(arrays[0][0].dtype, out_vals))
    bad = _run(_remap_serial, _remap_parallel, args, int(lens.sum()), len(starts))
    if bad >= 0:
        raise _bad_column(arrays, member, starts, lens, widths, bad, archives, rows)


def gather_remap_reference(data, cols, starts, lens, width, cmap, value_dtype, index_dtype, sort: bool):
    """NumPy twin for one member's rows, for tests: ``(out_ptr, values, columns)`` packed in order."""
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
    ptrs = member_pointers([(data, cols)])
    one, zero = np.ones(1, np.int64), np.zeros(1, np.int64)
    maps, map_at = np.zeros(1, np.int32), np.array([0, 1], np.int64)
    flags = np.zeros(1, np.bool_)
    for run in (_count_serial,) if _forked[0] else (_count_serial, _count_parallel):
        run(ptrs, zero, zero, one, one, maps, map_at, np.empty(1, np.int64))
    for vd, idt in dict.fromkeys(outputs):
        out_v, out_c = np.empty(1, vd), np.empty(1, idt)
        for run in (_remap_serial,) if _forked[0] else (_remap_serial, _remap_parallel):
            run(ptrs, zero, zero, one, zero, one, maps, map_at, flags, flags, flags, out_v, out_c, False)


__all__ = ["concat_maps", "count_kept", "gather_remap", "gather_remap_reference", "member_pointers", "plan_members",
           "row_pointers", "warm_up"]
