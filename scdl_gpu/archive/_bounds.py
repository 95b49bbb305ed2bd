"""The errors every read path raises when an archive's pointers or columns lead out of bounds.

One wording for all readers (the compiled gather, the dataset's row access, validation), so a
damaged archive reads the same whichever way it is opened: the file at fault, the row, what was
found and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArchiveError
from ._constants import FileNames


def span_error(archive: Path | str, row: int, lo: int, hi: int, n_data: int) -> ArchiveError:
    return ArchiveError(
        f"{Path(archive) / FileNames.ROWPTR.value}: row {row} spans values [{lo}, {hi}), expected "
        f"0 <= start <= end <= {n_data} (the values in {FileNames.DATA.value}); the archive is damaged"
    )


def column_error(archive: Path | str, row: int, column: int, width: int, file: Path | None = None) -> ArchiveError:
    """``file``: the file holding the row's columns when not ``archive``'s ``col_ptr.npy`` (a chunk's)."""
    return ArchiveError(
        f"{file or Path(archive) / FileNames.COLPTR.value}: row {row} holds column {column}, expected < {width} "
        "(the row's gene count); the archive is damaged"
    )


def check_span(archive: Path | str, row_ptr: np.ndarray, row: int, n_data: int) -> tuple[int, int]:
    """``(start, end)`` of ``row`` in the value file, or :func:`span_error` when ``row_ptr`` is wrong."""
    lo, hi = int(row_ptr[row]), int(row_ptr[row + 1])
    if not 0 <= lo <= hi <= n_data:
        raise span_error(archive, row, lo, hi, n_data)
    return lo, hi


def check_columns(archive: Path | str, columns: np.ndarray, row: int, width: int) -> None:
    """Every column of ``row`` below ``width`` (one vectorised pass), or :func:`column_error`."""
    if columns.size:
        top = int(columns.max())
        if top >= width:
            raise column_error(archive, row, top, width)
