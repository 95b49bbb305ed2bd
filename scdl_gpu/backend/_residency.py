"""Where a GPU backend keeps the rows it serves: resident in device memory, in pinned host memory
the kernels read over the bus, or streamed from the archive per batch.

``device``
    The rows are copied into GPU memory once; each batch is gathered from there by
    ``kernels/gather.cu``. True random order at device-memory speed.
``pinned``
    The rows are copied once into page-locked host memory that the gather kernel reads directly
    (mapped, zero-copy): no CPU gather and no staging copy per batch; bound by the bus.
``stream``
    Each batch's rows are read from the archive (kvikio for long spans, the compiled host gather
    and one copy otherwise).
``auto``
    ``device`` when the rows fit in ``device_fraction`` of the free GPU memory, else ``pinned``
    when they fit in half the available host memory, else ``stream``.

The resident copy is made through the compiled, bounds-checked gather (so it holds checked, sorted
rows), and the kernel checks its reads again on the device. This module holds the host-side
bookkeeping only (NumPy), so it is tested without a GPU.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

RESIDENCIES = ("auto", "device", "pinned", "stream")
DEVICE_FRACTION = 0.6  #: share of the free GPU memory ``auto`` lets resident rows take


def choose(residency: str, need_bytes: int, free_device: int, avail_host: int,
           device_fraction: float = DEVICE_FRACTION) -> str:
    """The residency to use for ``need_bytes`` of rows (``auto`` resolved; others checked)."""
    if residency not in RESIDENCIES:
        raise ValueError(f"residency must be one of {RESIDENCIES}, got {residency!r}")
    if residency != "auto":
        return residency
    if need_bytes <= device_fraction * free_device:
        return "device"
    if need_bytes <= avail_host // 2:
        return "pinned"
    return "stream"


def share_bytes(row_ptr: np.ndarray, rows: np.ndarray, bytes_per_value: int) -> int:
    """Bytes of values and columns that ``rows`` hold (pointers are not counted: 8 B per row)."""
    rp = np.asarray(row_ptr)
    return int((rp[rows + 1].astype(np.int64) - rp[rows].astype(np.int64)).sum()) * bytes_per_value


class ResidentIndex:
    """Host-side index of resident rows: archive row id -> span in the resident arrays.

    ``rows`` (sorted, unique int64) are the archive rows held; ``ptr`` (int64, len(rows) + 1)
    their spans in the resident value/column arrays, in that order.
    """

    def __init__(self, rows: np.ndarray, ptr: np.ndarray) -> None:
        self.rows, self.ptr = rows, ptr
        # a contiguous share (all rows: one GPU): a row's local index is its id less the first one,
        # which spares the search (at 4,096 rows, the host's largest cost of a device-resident batch)
        n = len(rows)
        self._first = int(rows[0]) if n and int(rows[-1]) - int(rows[0]) + 1 == n else None

    @property
    def nnz(self) -> int:
        return int(self.ptr[-1])

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(src_start, out_ptr)`` of a batch of archive ``rows``: each row's first resident value
        and the rows' places in the batch. A row that is not resident is a ``KeyError``."""
        rows = np.asarray(rows, np.int64)
        if self._first is not None:
            local = rows - self._first if self._first else rows
            if rows.size and (int(local.min()) < 0 or int(local.max()) >= len(self.rows)):
                self._missing(rows[(local < 0) | (local >= len(self.rows))])
        else:
            local = np.searchsorted(self.rows, rows)
            local = np.minimum(local, max(len(self.rows) - 1, 0))
            if rows.size and (len(self.rows) == 0 or not np.array_equal(self.rows[local], rows)):
                self._missing(rows[self.rows[local] != rows] if len(self.rows) else rows)
        starts = self.ptr[local] if rows.size else np.zeros(0, np.int64)
        out_ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(self.ptr[local + 1] - starts if rows.size else starts, out=out_ptr[1:])
        return starts, out_ptr

    def _missing(self, missing: np.ndarray):
        raise KeyError(f"row {int(missing[0])} is not resident on this backend "
                       f"(it holds {len(self.rows)} rows: the loader's share of this rank)")


def resident_rows(rows, n_rows: int) -> np.ndarray:
    """The unique sorted int64 row ids to hold (all rows when ``rows`` is None), range-checked."""
    if rows is None:
        return np.arange(n_rows, dtype=np.int64)
    rows = np.unique(np.asarray(rows, np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= n_rows):
        raise IndexError(f"resident rows must lie in [0, {n_rows}), got {int(rows[0])}..{int(rows[-1])}")
    return rows
