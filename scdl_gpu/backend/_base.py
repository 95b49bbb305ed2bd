"""The backend interface: row ids in, one batch out, on the backend's device."""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..archive._constants import FileNames
from ..archive._reader import load_feature_index, open_arrays, rows_sorted
from ._batch import Batch, BatchOptions
from ._plan import RowPlan, plan_rows
from ._stages import NO_STAGES


class Backend(ABC):
    """Assembles batches of archive rows on one device.

    ``batch(rows)`` takes row ids in any order (repeats allowed) and returns those rows, in that
    order, as a :class:`Batch` of torch tensors on the device. The backend knows nothing of
    sampling: loaders decide which rows.

    ``warm_maps``: map every page of the value and column files up front, in a background thread
    (default: when they fit in half the available memory). A memory map fills its page table one
    fault per first touch; random rows touch a new page almost every time, which measured 1.7x
    slower than reading through a warmed map. Touching one byte per page costs ~0.1 s per 2 GB of
    page-cached archive.
    """

    device = "cpu"
    stages = NO_STAGES  #: per-stage timing hooks (``scdl-gpu profile`` sets a StageClock)

    def __init__(self, archive: str | os.PathLike, options: BatchOptions | None = None, warm_maps: bool | None = None) -> None:
        self.path = Path(archive)
        self.options = options or BatchOptions()
        arrays = open_arrays(self.path)
        # Plain ndarray views: slicing an np.memmap costs microseconds per slice in Python.
        self.data = arrays.data.view(np.ndarray)
        self.col_ptr = arrays.col_ptr.view(np.ndarray)
        self.row_ptr = arrays.row_ptr.view(np.ndarray)
        self.dtypes = arrays.dtypes
        self.n_rows = arrays.n_rows
        self.archive_cols = _archive_width(self.path, self.col_ptr)
        # Batches come out with sorted columns when the archive's rows are and no remap reorders them.
        self.sorted_rows = rows_sorted(self.path, self.n_rows, len(self.data)) and self.options.gene_remap is None
        self.width = self.options.output_width(self.archive_cols)
        remap = self.options.gene_remap
        if remap is not None and len(remap) < self.archive_cols:
            raise ValueError(f"gene_remap has {len(remap)} entries but the archive has {self.archive_cols} columns")
        if warm_maps or (warm_maps is None and _fits_in_memory(self.data.nbytes + self.col_ptr.nbytes)):
            threading.Thread(target=_touch_pages, args=((self.data, self.col_ptr),), name="scdl-warm-maps", daemon=True).start()
        if remap is None and self.width < self.archive_cols:
            # the kernels write column j of row i at i * width + j: a narrower output would overflow
            raise ValueError(f"n_cols={self.width} is narrower than the archive's {self.archive_cols} genes; "
                             "drop genes with gene_remap instead")

    def plan(self, rows) -> RowPlan:
        return plan_rows(self.row_ptr, rows)

    @abstractmethod
    def batch(self, rows) -> Batch: ...

    def close(self) -> None:
        """Release files and device buffers (the backend is unusable afterwards)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, rows={self.n_rows}, width={self.width})"


def _archive_width(path: Path, col_ptr: np.ndarray) -> int:
    """Genes per row: the widest var block (ragged archives pad to it); from the columns without one."""
    index = load_feature_index(path, FileNames.VAR_FEATURES)
    dims = index.column_dims() if len(index) else []
    if dims:
        return int(max(dims))
    return int(col_ptr.max()) + 1 if col_ptr.size else 0


def _fits_in_memory(nbytes: int) -> bool:
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return False
    return nbytes <= avail // 2


def _touch_pages(arrays, chunk: int = 1 << 28) -> None:
    """Read one byte of every page so the kernel maps them all (in large sequential steps)."""
    for arr in arrays:
        raw = arr.view(np.uint8) if arr.size else arr
        for start in range(0, raw.size, chunk):
            int(raw[start : start + chunk : 4096].sum())
