"""Pre-shuffled archives: rows stored in a seeded random order, written in bounded memory.

Why: block order reads runs of consecutive rows (fast sequential reads), so a batch mixes only
what the stored order puts side by side; inputs grouped by plate or drug stay grouped. Storing
the rows in random order once, at conversion, gives block order the label mix of random batches.

How (an external shuffle): every row draws a 64-bit key from a PCG64 stream seeded by ``seed``,
in input order (input after input, row after row). Pass 1 deals the rows to K bucket files by key
range (values, columns, row lengths, keys and source row ids; neighbor rows alongside). Pass 2
loads one bucket at a time, sorts it by key and appends it to the archive. The buckets hold
increasing key ranges, so the archive holds all rows sorted by key: the order depends on the seed
and the inputs only, not on K nor on the memory budget that chose K.

Why that order is a uniform random permutation: the keys are i.i.d. uniform, so their ranks are
exchangeable and each of the N! orders of distinct keys is equally likely. Equal keys (probability
below N^2 / 2^65, about 1e-7 for 2M rows) keep input order, the only departure. The textbook form
is uniform for the same reason: each row to an i.i.d. uniform bucket, a uniform shuffle inside
each bucket, buckets concatenated. Given the bucket sizes n_1..n_K, the bucket contents are a
uniformly random partition (probability prod(n_k!) / N! each) and the inner orders uniform and
independent (1 / prod(n_k!)), so every sequence has probability 1 / N!. What is *not* uniform is
dealing into buckets of fixed sizes as rows arrive (a row goes to a random bucket with room left):
which rows share a bucket then depends on when they arrive (with sizes 2 and 1, the last two of
three rows share the larger bucket half the time, not a third).

Memory: one bucket (about a third of the working budget) at a time, plus 8 bytes a row for the
new order (16 with a neighbor graph, whose indices are remapped). The obs tables are permuted in
memory, column by column (the tables plus one column): conversion holds them anyway, and they are
small next to X (a few columns per cell against hundreds to thousands of stored values). They are
what grows with the row count: 2M Tahoe-like cells (8 obs columns and names, 500 values a cell)
shuffled under a 1 GB budget peaked at 877-917 MiB, most of it the obs tables and their parquet
conversion at commit.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._memory import host_memory
from ..archive._concat import row_chunks
from ..archive._constants import SOURCE_FILE, SOURCE_ROW, FileNames
from ..archive._memmap import write_raw
from ..archive._rowfiles import ROWPTR_PARTIAL, Segment
from ..errors import ConversionError
from ._cancel import check_cancelled

log = logging.getLogger(__name__)

ROW_ORDERS = ("input", "shuffle")
DEFAULT_MAX_MEMORY = 2 << 30
BUCKET_DIR = ".shuffle"  # inside the writer's partial directory: removed with it on any failure
MAX_BUCKETS = 1 << 16
_ROW_FILES = (("keys", np.uint64), ("ids", np.int64), ("lens", np.int64))
_NEIGHBOR_FILES = (("nlens", np.int64), ("nidx", np.uint64), ("nval", np.float32))
_MARGIN = 16 << 20  # allocator slack and the writer's own buffers
_PTR_STEP = 1 << 20  # row pointers read at a time while dealing (8 MiB)
_OUT_VALUES = 1 << 22  # values gathered at a time while writing a bucket out
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
          "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}


def parse_memory(value: int | str | None) -> int:
    """Bytes from an int or a size such as ``"1GB"`` (10^9), ``"512MiB"`` (2^20 units) or ``"2.5G"``."""
    if value is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"max_memory must be a number of bytes or a size such as '1GB' or '512MiB', got {value!r}")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return n


def check_row_order(row_order: str, seed: int | None) -> int | None:
    """The seed to shuffle with (drawn when ``None``), or None for input order."""
    if row_order not in ROW_ORDERS:
        raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
    if row_order == "input":
        if seed is not None:
            raise ValueError("seed is only used with row_order='shuffle'")
        return None
    if seed is None:
        return secrets.randbits(63)  # recorded in scdl_gpu.json: the archive can be rebuilt exactly
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def process_rss() -> int:
    """This process's resident anonymous memory in bytes (0 where ``/proc`` is missing): mapped
    file pages are page cache the kernel reclaims (a process that has read archives through memory
    maps counts them in its RSS without holding them)."""
    return host_memory()[1]


@dataclass
class ShuffleInput:
    """One converted input as the shuffle needs it: its rows (a segment) and its obs table.

    :func:`shuffled_obs` empties ``obs_features`` and ``obs_names`` column by column as it builds
    the permuted table, so the obs tables are never held twice.
    """

    label: str
    rows: Segment
    neighbors: Segment | None
    obs_features: dict
    obs_names: np.ndarray | None


@dataclass(frozen=True)
class ShuffleResult:
    seed: int
    buckets: int
    order: np.ndarray  # archive row -> global source row (inputs numbered in order)


def key_buckets(keys: np.ndarray, k: int) -> np.ndarray:
    """Bucket of each key: ``floor(key * k / 2^64)`` on the top 32 bits, exact and non-decreasing in key."""
    return ((keys >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)


class _Buckets:
    """K bucket files per array, appended to during pass 1 and read back whole in pass 2."""

    def __init__(self, directory: Path, k: int, data_dtype: str, col_dtype: str, neighbors: bool) -> None:
        self.directory = directory
        directory.mkdir()
        self.k = k
        self.dtypes = dict(_ROW_FILES) | {"data": np.dtype(data_dtype), "cols": np.dtype(col_dtype)}
        if neighbors:
            self.dtypes |= dict(_NEIGHBOR_FILES)

    def _path(self, b: int, name: str) -> Path:
        return self.directory / f"{b:05d}.{name}"

    def append(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            with open(self._path(b, name), "ab") as f:
                write_raw(f, arr.astype(self.dtypes[name], copy=False))

    def load(self, b: int, name: str) -> np.ndarray:
        path = self._path(b, name)
        return np.fromfile(path, dtype=self.dtypes[name]) if path.exists() else np.empty(0, self.dtypes[name])

    def remove(self, b: int) -> None:
        for name in self.dtypes:
            self._path(b, name).unlink(missing_ok=True)


def _read(path: Path, dtype, start: int, stop: int) -> np.ndarray:
    """Items ``[start, stop)`` of a raw file, read into memory the bucket budget accounts for."""
    dt = np.dtype(dtype)
    return np.fromfile(path, dtype=dt, count=stop - start, offset=start * dt.itemsize)


def _gather(starts: np.ndarray, lens: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR pointers of ``rows`` (taken in that order) and the positions of their entries."""
    ln = lens[rows]
    ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(ln, out=ptr[1:])
    return ptr, np.repeat(starts[rows] - ptr[:-1], ln) + np.arange(ptr[-1], dtype=np.int64)


def plan_buckets(total_bytes: int, n_rows: int, max_memory: int | None, neighbors: bool) -> tuple[int, int]:
    """``(buckets, values per dealing step)`` so that one bucket fits what ``max_memory`` leaves.

    The working budget is ``max_memory`` minus what the process holds now (Python, libraries, the
    obs tables) and the per-row order arrays; a bucket gets a third of it (pass 2 holds a bucket,
    its sort order and one gathered output step), with room for buckets drawn larger than average.
    Without a budget (``None``) the shuffle may add ``DEFAULT_MAX_MEMORY`` to what the process
    holds: a session that already holds more than that (a notebook with data loaded) still works.
    """
    held = process_rss() if max_memory is not None else 0
    if max_memory is None:
        max_memory = DEFAULT_MAX_MEMORY
    working = max_memory - held - n_rows * 8 * (2 if neighbors else 1) - _MARGIN
    if working < (1 << 16):
        raise ConversionError(
            f"max_memory {max_memory:,} bytes is too small: this process already holds {held:,} bytes "
            f"(Python, its libraries, the obs tables) and the new row order needs {n_rows * 8:,}; "
            "raise max_memory (--max-memory)"
        )
    per_bucket = working // 3
    k = max(1, math.ceil(1.25 * total_bytes / per_bucket))
    if k > MAX_BUCKETS:
        raise ConversionError(f"max_memory {max_memory:,} bytes would need {k:,} buckets for {total_bytes:,} bytes; raise it")
    return k, max(1 << 12, working // 64)


def shuffle_rows(w, inputs: list[ShuffleInput], seed: int, max_memory: int | None) -> ShuffleResult:
    """Append every input's rows to the archive writer ``w`` in the seeded random order.

    Each input's segment (and neighbor segment) is removed once dealt. The neighbor graph, when
    every input has one, follows its rows with indices remapped to the new positions.
    """
    n_rows = sum(s.rows.n_rows for s in inputs)
    neighbors = bool(inputs) and all(s.neighbors is not None for s in inputs)
    value_bytes = np.dtype(w.data_dtype).itemsize + np.dtype(w.col_dtype).itemsize
    total = sum(s.rows.nnz for s in inputs) * value_bytes + n_rows * 24
    if neighbors:
        total += sum(s.neighbors.nnz for s in inputs) * 12 + n_rows * 8
    k, step = plan_buckets(total, n_rows, max_memory, neighbors)
    log.info("shuffling %d rows (%d bytes) through %d bucket(s), seed %d", n_rows, total, k, seed)
    buckets = _Buckets(w.tmp / BUCKET_DIR, k, w.data_dtype, w.col_dtype, neighbors)
    try:
        bits = np.random.PCG64(seed)  # raw draws: the same stream however it is split into steps
        first = 0
        for s in inputs:
            _deal(buckets, s.rows, s.neighbors if neighbors else None, first, bits, step // value_bytes or 1)
            first += s.rows.n_rows
            s.rows.remove()
            if s.neighbors is not None:
                s.neighbors.remove()
        order = _order(buckets, n_rows)
        new_of_old = None
        if neighbors:
            new_of_old = np.empty(n_rows, np.int64)
            new_of_old[order] = np.arange(n_rows, dtype=np.int64)
        for b in range(k):
            _write_bucket(w, buckets, b, new_of_old)
    finally:
        shutil.rmtree(buckets.directory, ignore_errors=True)
    return ShuffleResult(seed, k, order)


def _deal(buckets: _Buckets, rows: Segment, nbr: Segment | None, first: int, bits, max_values: int) -> None:
    """Pass 1 for one input: each step of rows gets keys and goes, bucket by bucket, to the files."""
    ptr_path = rows.directory / ROWPTR_PARTIAL
    nptr_path = None if nbr is None else nbr.directory / ROWPTR_PARTIAL
    for p0 in range(0, rows.n_rows, _PTR_STEP):
        p1 = min(p0 + _PTR_STEP, rows.n_rows)
        ptr = _read(ptr_path, np.uint64, p0, p1 + 1).astype(np.int64)
        nptr = None if nbr is None else _read(nptr_path, np.uint64, p0, p1 + 1).astype(np.int64)
        for s, e in row_chunks(ptr, max_values):
            check_cancelled()
            n = e - s
            keys = bits.random_raw(n)
            bucket = key_buckets(keys, buckets.k).astype(np.int64)
            by_bucket = np.argsort(bucket, kind="stable")  # grouped by bucket, input order inside
            counts = np.bincount(bucket, minlength=buckets.k)
            edges = np.concatenate([[0], np.cumsum(counts)])
            ids = np.arange(first + p0 + s, first + p0 + e, dtype=np.int64)
            per_row = {"keys": keys[by_bucket], "ids": ids[by_bucket]}
            parts = [_dealt(ptr[s : e + 1], rows, ("cols", "data"), by_bucket, "lens")]
            if nbr is not None:
                parts.append(_dealt(nptr[s : e + 1], nbr, ("nidx", "nval"), by_bucket, "nlens", offset=first))
            for b in np.flatnonzero(counts):
                r0, r1 = int(edges[b]), int(edges[b + 1])
                out = {name: arr[r0:r1] for name, arr in per_row.items()}
                for gptr, lens_name, entries in parts:
                    out[lens_name] = np.diff(gptr[r0 : r1 + 1])
                    lo, hi = int(gptr[r0]), int(gptr[r1])
                    out |= {name: arr[lo:hi] for name, arr in entries.items()}
                buckets.append(int(b), out)


def _dealt(ptr: np.ndarray, seg: Segment, names: tuple[str, str], rows: np.ndarray, lens_name: str, offset: int = 0):
    """A step's entries of ``seg`` (rows ``ptr``) regrouped in the order ``rows``: (pointers, lens name, arrays)."""
    lo, hi = int(ptr[0]), int(ptr[-1])
    cols = _read(seg.directory / FileNames.COLPTR.value, seg.col_dtype, lo, hi)
    vals = _read(seg.directory / FileNames.DATA.value, seg.data_dtype, lo, hi)
    gptr, pos = _gather(ptr[:-1] - lo, np.diff(ptr), rows)
    cols = cols[pos]
    if offset:  # neighbor indices: within the input -> global source rows
        cols = cols + np.uint64(offset)
    return gptr, lens_name, {names[0]: cols, names[1]: vals[pos]}


def _order(buckets: _Buckets, n_rows: int) -> np.ndarray:
    """Archive row -> global source row: the buckets in turn, each sorted by key."""
    order = np.empty(n_rows, np.int64)
    at = 0
    for b in range(buckets.k):
        ids = buckets.load(b, "ids")
        order[at : at + len(ids)] = ids[np.argsort(buckets.load(b, "keys"), kind="stable")]
        at += len(ids)
    if at != n_rows:
        raise ConversionError(f"shuffle buckets hold {at} rows, expected {n_rows}")
    return order


def _write_bucket(w, buckets: _Buckets, b: int, new_of_old: np.ndarray | None) -> None:
    """Pass 2 for one bucket: sort by key (ties keep input order) and append rows and neighbor rows."""
    check_cancelled()
    sort = np.argsort(buckets.load(b, "keys"), kind="stable")
    _append_sorted(buckets, b, sort, ("lens", "cols", "data"), w.append_rows)
    if new_of_old is not None:
        remap = lambda idx: new_of_old[idx.astype(np.int64)].astype(np.uint64)  # noqa: E731
        _append_sorted(buckets, b, sort, ("nlens", "nidx", "nval"), w.append_neighbor_rows, remap)
    buckets.remove(b)


def _append_sorted(buckets: _Buckets, b: int, sort: np.ndarray, names, append, remap=None) -> None:
    lens = buckets.load(b, names[0])
    idx, vals = buckets.load(b, names[1]), buckets.load(b, names[2])
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    sorted_ptr = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens[sort], out=sorted_ptr[1:])
    for s, e in row_chunks(sorted_ptr, _OUT_VALUES):
        ptr, pos = _gather(starts, lens, sort[s:e])
        out_idx = idx[pos] if remap is None else remap(idx[pos])
        append(ptr, out_idx, vals[pos])


def check_obs_columns(inputs: list[ShuffleInput]) -> None:
    """Refuse obs tables that already have the columns the shuffle adds (before any work is done)."""
    for col in (SOURCE_ROW, SOURCE_FILE):
        clash = [s.label for s in inputs if col in s.obs_features]
        if clash:
            raise ConversionError(
                f"obs already has a '{col}' column (in {clash}); a shuffled archive records each row's origin there: "
                "rename it first"
            )


def shuffled_obs(inputs: list[ShuffleInput], order: np.ndarray) -> tuple[dict, np.ndarray | None]:
    """The inputs' obs tables as one, in archive order, with ``source_row`` (and ``source_file``).

    Column by column, each input's column released once permuted: the peak is the tables plus one
    column. Inputs with other columns than the first are aligned by pandas (missing values as NA).
    """
    if any(s.obs_features.keys() != inputs[0].obs_features.keys() for s in inputs):
        frame = pd.concat([pd.DataFrame(s.obs_features) for s in inputs], ignore_index=True, join="outer")
        for s in inputs:
            s.obs_features = {}
        parts = {str(c): [frame.pop(c).to_numpy()] for c in list(frame.columns)}
    else:
        parts = {c: [s.obs_features[c] for s in inputs] for c in inputs[0].obs_features}
        for s in inputs:
            s.obs_features = {}
    features = {}
    for col in list(parts):
        features[col] = _permuted(parts.pop(col), order)
    features[SOURCE_ROW] = _permuted([np.arange(s.rows.n_rows, dtype=np.int64) for s in inputs], order)
    if len(inputs) > 1:
        labels = np.array([s.label for s in inputs], dtype=object)
        features[SOURCE_FILE] = np.repeat(labels, [s.rows.n_rows for s in inputs])[order]
    names = None
    if all(s.obs_names is not None for s in inputs):
        names_parts = [np.asarray(s.obs_names, dtype=object) for s in inputs]
        for s in inputs:
            s.obs_names = None
        names = _permuted(names_parts, order)
    return features, names


def _permuted(parts: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """``concatenate(parts)[order]``, the parts released first (the caller holds no other reference)."""
    whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
    parts.clear()
    return np.asarray(whole)[order]
