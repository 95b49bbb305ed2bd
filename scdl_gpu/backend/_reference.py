"""NumPy twins of the kernels in ``kernels/csr_batch.cu`` and ``kernels/gather.cu``: the CPU path and
the GPU tests' oracle.

Same array names as the kernels. A batch of ``B`` rows is *staged*: ``vals`` (archive value dtype)
and ``cols`` (archive column dtype) hold the rows' stored entries concatenated in output row order,
and ``in_ptr`` (int64, ``B + 1``, ``in_ptr[0] == 0``) gives each row's span; ``n = in_ptr[-1]``.
``remap`` (int64 per archive column; nullable) gives the output column, or -1 to drop the entry.
Every function is vectorised (no Python loop over rows or entries) and handles ``B == 0``.

Values go through float64 exactly as in the kernels (``(double)vals[i]``, times ``row_scale``,
then ``log1p``, then one cast to the output dtype), so plain casts and scaling agree bit for bit;
``log1p`` comes from a different math library and ``row_sums`` adds in a different order, so those
agree to within rounding (see the functions).

Only NumPy is imported here: the kernels' semantics must not depend on torch or CuPy.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "densify",
    "emit",
    "exclusive_scan",
    "gather",
    "gather_chunks",
    "keep_flags",
    "out_indptr",
    "row_of_entries",
    "row_scale_from_sums",
    "row_sums",
]


def _n(in_ptr: np.ndarray) -> int:
    return int(in_ptr[-1]) if len(in_ptr) else 0


def _out_cols(cols: np.ndarray, remap: np.ndarray | None) -> np.ndarray:
    """Output column of each entry as int64 (-1: dropped), as ``remap ? remap[cols[i]] : cols[i]``."""
    if remap is None:
        # Like the kernel's (long long) cast: uint64 columns >= 2**63 wrap to negative and are dropped.
        return cols.astype(np.int64)
    return np.asarray(remap, dtype=np.int64)[cols]


def _transformed(vals: np.ndarray, rows: np.ndarray | None, row_scale, log1p: bool) -> np.ndarray:
    """The kernels' value transform in float64: ``v = (double)vals; v *= row_scale[r]; log1p(v)``."""
    v = vals.astype(np.float64)  # always a fresh copy, safe to modify in place
    if row_scale is not None:
        v *= np.asarray(row_scale, dtype=np.float64)[rows]
    if log1p:
        np.log1p(v, out=v)
    return v


def row_of_entries(in_ptr: np.ndarray, n: int | None = None) -> np.ndarray:
    """Row of each of the first ``n`` entries (int64); the kernels' binary search, all at once."""
    in_ptr = np.asarray(in_ptr, dtype=np.int64)
    n = _n(in_ptr) if n is None else int(n)
    rows = np.repeat(np.arange(len(in_ptr) - 1, dtype=np.int64), np.diff(in_ptr))
    return rows[:n]


def exclusive_scan(flags: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum of ``flags`` as int64, **length n + 1**: ``pos[i]`` is entry i's output
    slot and ``pos[n]`` the kept total, so ``pos[in_ptr]`` is the output row pointer directly.
    (``scdl_emit`` reads only ``pos[:n]``.)"""
    pos = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, dtype=np.int64, out=pos[1:])
    return pos


def out_indptr(in_ptr: np.ndarray, pos: np.ndarray | None = None) -> np.ndarray:
    """Output row pointers (int64): ``pos[in_ptr]`` after a remap (``pos`` from ``exclusive_scan``,
    length n + 1), else a copy of ``in_ptr``."""
    in_ptr = np.asarray(in_ptr, dtype=np.int64)
    return in_ptr.copy() if pos is None else np.asarray(pos, dtype=np.int64)[in_ptr]


def row_scale_from_sums(sums: np.ndarray, target_sum: float) -> np.ndarray:
    """``target_sum / sums`` per row; rows that sum to zero (or less) keep scale 1.0."""
    sums = np.asarray(sums, dtype=np.float64)
    out = np.ones_like(sums)
    np.divide(float(target_sum), sums, out=out, where=sums > 0)
    return out


def keep_flags(cols: np.ndarray, remap: np.ndarray) -> np.ndarray:
    """``scdl_keep_flags``: 1 where the entry's column is kept (``remap[cols[i]] >= 0``), as int32."""
    return (np.asarray(remap, dtype=np.int64)[cols] >= 0).astype(np.int32)


def row_sums(vals: np.ndarray, cols: np.ndarray, in_ptr: np.ndarray, remap: np.ndarray | None = None) -> np.ndarray:
    """``scdl_row_sums``: float64 sum of each row's kept values (0.0 for an empty row).

    The kernel adds each row sequentially; ``np.add.reduceat`` may add in another order (pairwise),
    so results can differ in the last bits for non-integer values or sums beyond 2**53.
    """
    in_ptr = np.asarray(in_ptr, dtype=np.int64)
    n_rows, n = len(in_ptr) - 1, _n(in_ptr)
    sums = np.zeros(max(n_rows, 0), dtype=np.float64)
    v = vals[:n].astype(np.float64)
    if remap is not None:
        v[_out_cols(cols[:n], remap) < 0] = 0.0
    # reduceat reads segment k as [idx[k], idx[k+1]) and returns v[idx[k]] for an empty one, so
    # reduce over the non-empty rows only: consecutive non-empty starts bound exactly one row.
    nonempty = np.flatnonzero(in_ptr[1:] > in_ptr[:-1])
    if nonempty.size:
        sums[nonempty] = np.add.reduceat(v, in_ptr[nonempty])
    return sums


def emit(
    vals: np.ndarray,
    cols: np.ndarray,
    in_ptr: np.ndarray,
    remap: np.ndarray | None = None,
    pos: np.ndarray | None = None,
    row_scale: np.ndarray | None = None,
    log1p: bool = False,
    out_dtype="float32",
    index_dtype="int32",
    n_out: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``scdl_emit``: the kept entries' output values and columns, in output order.

    ``n_out`` (the kept count, when the caller knows it) sizes the GPU launcher's output; unused here.

    ``pos`` (length n or n + 1) places entry i at ``pos[i]``, as in the kernel; when ``remap`` is
    given without ``pos`` it is computed here (the kept entries in staged order), which the kernel
    cannot do. Returns ``(out_vals, out_cols)`` of length = number of kept entries.
    """
    in_ptr = np.asarray(in_ptr, dtype=np.int64)
    n = _n(in_ptr)
    vals, cols = vals[:n], cols[:n]
    c = _out_cols(cols, remap)
    keep = c >= 0
    all_kept = bool(keep.all())
    rows = row_of_entries(in_ptr, n) if row_scale is not None else None
    if not all_kept:
        vals, c = vals[keep], c[keep]
        rows = rows[keep] if rows is not None else None
    out_vals = _transformed(vals, rows, row_scale, log1p).astype(out_dtype, copy=False)
    out_cols = c.astype(index_dtype, copy=False)
    if pos is None:
        if remap is None and not all_kept:
            raise ValueError("columns >= 2**63 without a remap: the kernel would leave holes; pass pos")
        return out_vals, out_cols
    slots = np.asarray(pos, dtype=np.int64)[:n][keep]
    if np.array_equal(slots, np.arange(len(slots))):
        return out_vals, out_cols  # the usual case: pos is the exclusive scan of keep_flags
    scattered_vals = np.empty_like(out_vals)
    scattered_cols = np.empty_like(out_cols)
    scattered_vals[slots] = out_vals
    scattered_cols[slots] = out_cols
    return scattered_vals, scattered_cols


def densify(
    vals: np.ndarray,
    cols: np.ndarray,
    in_ptr: np.ndarray,
    remap: np.ndarray | None = None,
    row_scale: np.ndarray | None = None,
    log1p: bool = False,
    n_out_cols: int | None = None,
    out_dtype="float32",
) -> np.ndarray:
    """``scdl_densify``: a ``(B, n_out_cols)`` array; entries of a row on one column add up.

    Each value is cast to ``out_dtype`` first and then added in entry order, like the kernel's
    ``atomicAdd(&out[...], (OV)v)``; on a GPU the atomics' order varies, so duplicate columns may
    differ there in the last bits. Every output column must be ``< n_out_cols`` (IndexError here).
    """
    if n_out_cols is None:
        raise TypeError("densify() needs n_out_cols")
    in_ptr = np.asarray(in_ptr, dtype=np.int64)
    n_rows, n = len(in_ptr) - 1, _n(in_ptr)
    out = np.zeros((max(n_rows, 0), int(n_out_cols)), dtype=out_dtype)
    vals, cols = vals[:n], cols[:n]
    c = _out_cols(cols, remap)
    rows = row_of_entries(in_ptr, n)
    keep = c >= 0
    if not keep.all():
        vals, c, rows = vals[keep], c[keep], rows[keep]
    if c.size and int(c.max()) >= out.shape[1]:
        raise IndexError(f"output column {int(c.max())} out of range for n_out_cols={out.shape[1]}")
    v = _transformed(vals, rows, row_scale, log1p).astype(out_dtype, copy=False)
    # Flat indices: NumPy's fast path for add.at (1-D, no broadcasting) adds 1.8M values in ~15 ms.
    np.add.at(out.reshape(-1), rows * out.shape[1] + c, v)
    return out


#: ``gather``'s error bits, as the kernel ORs them into ``err``
GATHER_OUT_OF_RANGE = 1  # an entry outside the resident data
GATHER_BAD_COLUMN = 2  # a column >= width


def gather(
    data: np.ndarray, cols: np.ndarray, src_start: np.ndarray, out_ptr: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """``scdl_gather``: row r of the output, ``[out_ptr[r], out_ptr[r + 1])``, copies the resident
    entries from ``src_start[r]`` on; ``n_data = len(data)``.

    Returns ``(out_vals, out_cols, err)`` in the dtypes of ``data`` and ``cols``. An entry outside
    ``[0, n_data)`` sets ``GATHER_OUT_OF_RANGE`` in ``err``, a column ``>= width`` (compared as
    uint64, like the kernel) sets ``GATHER_BAD_COLUMN``; either is written as value 0, column 0.
    """
    out_ptr = np.asarray(out_ptr, dtype=np.int64)
    n = _n(out_ptr)
    rows = row_of_entries(out_ptr, n)
    # int64 arrays wrap on overflow, as the kernel's unsigned addition does.
    k = np.asarray(src_start, dtype=np.int64)[rows] + (np.arange(n, dtype=np.int64) - out_ptr[rows])
    slot = np.flatnonzero((k >= 0) & (k < len(data)))
    c = cols[k[slot]]
    # astype wraps a negative width to a huge uint64, as the kernel's cast does.
    good = c.astype(np.uint64) < np.asarray(width, dtype=np.int64).astype(np.uint64)
    err = (GATHER_OUT_OF_RANGE if len(slot) < n else 0) | (GATHER_BAD_COLUMN if not good.all() else 0)
    out_vals = np.zeros(n, dtype=data.dtype)
    out_cols = np.zeros(n, dtype=cols.dtype)
    out_vals[slot[good]] = data[k[slot[good]]]
    out_cols[slot[good]] = c[good]
    return out_vals, out_cols, err


def gather_chunks(
    chunk_vals: list[np.ndarray], chunk_cols: list[np.ndarray], row_chunk, src_start, row_ptr, dst_start, width: int,
    out_vals: np.ndarray, out_cols: np.ndarray,
) -> int:
    """``scdl_gather_chunks``: row r's ``row_ptr[r + 1] - row_ptr[r]`` entries, read from entries
    ``src_start[r]...`` of chunk slot ``row_chunk[r]`` (``chunk_vals``/``chunk_cols``: one array per
    slot), written to ``out_*[dst_start[r]...]`` in place. Returns the error bits, as :func:`gather`'s
    (bit 1: outside the chunk's entries); an offending entry is written as value 0, column 0."""
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    err = 0
    for r, slot in enumerate(np.asarray(row_chunk, dtype=np.int64).tolist()):
        n = int(row_ptr[r + 1] - row_ptr[r])
        v, c, bits = gather(chunk_vals[slot], chunk_cols[slot], np.asarray(src_start, np.int64)[r : r + 1],
                            np.array([0, n], np.int64), width)
        d = int(dst_start[r])
        out_vals[d : d + n], out_cols[d : d + n] = v, c
        err |= bits
    return err
