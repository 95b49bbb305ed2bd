"""Where a batch's rows live in the archive, checked, and which of them can be read as one span."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from . import _gather


@dataclass(frozen=True)
class RowPlan:
    """A batch of rows, in request order, with each row's place in the value/column files.

    ``starts`` (int64, B) is each row's first value in ``data.npy``; ``in_ptr`` (int64, B+1)
    places the rows in the batch. Both come from :func:`plan_rows`, which checked every span
    against ``row_ptr`` and the value file. ``span_src``/``span_out``/``span_len`` merge rows
    that follow each other in the archive and in the request into one span (block sampling reads
    a few long spans); readers that issue one read per span (kvikio) use them.
    """

    rows: np.ndarray
    in_ptr: np.ndarray
    starts: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.in_ptr[-1])

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @cached_property
    def _spans(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        first = np.ones(len(self.rows), bool)
        first[1:] = self.rows[1:] != self.rows[:-1] + 1
        heads = np.flatnonzero(first)
        span_out = self.in_ptr[heads]
        return self.starts[heads], span_out, np.diff(np.append(span_out, self.in_ptr[-1]))

    @property
    def span_src(self) -> np.ndarray:
        return self._spans[0]

    @property
    def span_out(self) -> np.ndarray:
        return self._spans[1]

    @property
    def span_len(self) -> np.ndarray:
        return self._spans[2]


def plan_rows(row_ptr: np.ndarray, rows, n_data: int | None = None, archive: Path | str = "") -> RowPlan:
    """Plan the batch ``rows`` (any order, repeats allowed) of an archive with pointers ``row_ptr``
    over ``n_data`` values (default: ``row_ptr[-1]``).

    Raises ``IndexError`` for a row outside the archive and :class:`~scdl_gpu.errors.ArchiveError`
    (naming ``row_ptr.npy`` under ``archive``) for a span outside the value file.
    """
    rows = as_row_ids(rows)
    if n_data is None:
        n_data = int(row_ptr[-1])
    starts, in_ptr = _gather.plan(row_ptr, rows, int(n_data), archive)
    return RowPlan(rows, in_ptr, starts)


def as_row_ids(rows) -> np.ndarray:
    """A batch request as contiguous int64 row ids (one compiled signature for every caller)."""
    rows = np.asarray(rows)
    if rows.ndim != 1:
        raise ValueError(f"rows must be a 1-D array of row ids, got shape {rows.shape}")
    if rows.size and rows.dtype.kind not in "iu":
        raise TypeError(f"rows must be integers, got {rows.dtype}")
    return np.ascontiguousarray(rows, dtype=np.int64)
