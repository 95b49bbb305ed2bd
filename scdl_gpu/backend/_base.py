"""The backend interface: row ids in, one batch out, on the backend's device."""

from __future__ import annotations

import contextlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..archive._constants import FileNames
from ..archive._reader import load_feature_index, open_arrays, rows_sorted
from ..archive._remote import RemoteArchive
from ..archive._urls import is_url
from ._batch import Batch, BatchOptions
from . import _gather
from ._plan import RowPlan, plan_rows
from ._stages import NO_STAGES


def finished(batches: list[Batch]) -> Callable[[], list[Batch]]:
    """A ``batches_ahead`` whose work is already done."""
    return lambda: batches


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

    A compressed archive (``scdl-gpu compress``) decodes the chunks a batch touches into a cache
    of ``cache_bytes`` (default ``DEFAULT_CACHE_BYTES``), several chunks at once on a thread pool,
    and gathers from the decoded arrays with the same compiled gather. A batch touching more
    chunks than the cache holds is gathered group by group, so memory stays near the bound.
    """

    device = "cpu"
    stages = NO_STAGES  #: per-stage timing hooks (``scdl-gpu profile`` sets a StageClock)

    def __init__(self, archive: str | os.PathLike | RemoteArchive, options: BatchOptions | None = None,
                 warm_maps: bool | None = None, storage_options: dict | None = None,
                 cache_bytes: int | None = None) -> None:
        self.options = options or BatchOptions()
        # A URL (or an open RemoteArchive) reads values by range; its small files are in a local mirror.
        self.remote = _open_remote(archive, storage_options)
        self._owns_remote = self.remote is not None and self.remote is not archive
        self.path = Path(archive) if self.remote is None else self.remote.url
        self.files = Path(archive) if self.remote is None else self.remote.local  # header, indices, notes
        arrays = open_arrays(self.path) if self.remote is None else self.remote
        self.chunks = getattr(arrays, "chunks", None)  # a chunked archive: rows are copied from their chunk's arrays
        self.compressed = self.remote is None and self.chunks is not None and self.chunks.compressed
        if self.remote is not None:
            self.data, self.col_ptr = arrays.data, arrays.col_ptr  # RemoteVector: dtype, size, ranges
        elif self.compressed:
            self.data, self.col_ptr = arrays.data, arrays.col_ptr  # ChunkedVector over decoded chunks
            if cache_bytes is not None:
                self.chunks.cache.limit = cache_bytes
        elif self.chunks is None:
            # Plain ndarray views: slicing an np.memmap costs microseconds per slice in Python.
            self.data = arrays.data.view(np.ndarray)
            self.col_ptr = arrays.col_ptr.view(np.ndarray)
        else:
            self.data, self.col_ptr = arrays.data, arrays.col_ptr  # ChunkedVector: dtype, size, slices
            f16 = self.data.dtype == np.float16  # moves as its bits, as in gather()
            # addresses of self.chunks' maps, which this backend holds while it gathers from them
            self._chunk_pointers = _gather.chunk_pointers(
                [d.view(np.uint16) if f16 else d for d in self.chunks.data], self.chunks.col_ptr,
                self.chunks.value_offsets, np.uint16 if f16 else self.data.dtype, self.col_ptr.dtype)
        self.row_ptr = arrays.row_ptr.view(np.ndarray)
        self.dtypes = arrays.dtypes
        self.n_rows = arrays.n_rows
        self.archive_cols = _archive_width(self.files, self.col_ptr) if self.remote is None else self.remote.width
        # The writer's note that every row is sorted: readers that copy rows as they are (kvikio)
        # can skip the per-batch sort; the compiled gather checks and sorts as it copies anyway.
        self.archive_sorted = rows_sorted(self.files, self.n_rows, len(self.data))
        self.width = self.options.output_width(self.archive_cols)
        remap = self.options.gene_remap
        if remap is not None and len(remap) < self.archive_cols:
            raise ValueError(f"gene_remap has {len(remap)} entries but the archive has {self.archive_cols} columns")
        if self.remote is None and not self.compressed and (
                warm_maps or (warm_maps is None and _fits_in_memory(self.data.nbytes + self.col_ptr.nbytes))):
            maps = (self.data, self.col_ptr) if self.chunks is None else (*self.chunks.data, *self.chunks.col_ptr)
            threading.Thread(target=_touch_pages, args=(maps,), name="scdl-warm-maps", daemon=True).start()
        if remap is None and self.width < self.archive_cols:
            # the kernels write column j of row i at i * width + j: a narrower output would overflow
            raise ValueError(f"n_cols={self.width} is narrower than the archive's {self.archive_cols} genes; "
                             "drop genes with gene_remap instead")
        self._warm_up()

    def plan(self, rows) -> RowPlan:
        """Each row's checked span (``IndexError`` for a row outside the archive, ``ArchiveError``
        for a span ``row_ptr.npy`` gets wrong)."""
        return plan_rows(self.row_ptr, rows, len(self.data), self.path)

    def gather(self, plan: RowPlan, values: np.ndarray, col: np.ndarray, sort: bool = True) -> None:
        """The compiled, bounds-checked copy of ``plan``'s rows into ``values``/``col`` (cast to
        their dtypes; columns sorted inside rows when ``sort``). float16 moves as its bits."""
        data, cols, starts = self.data, self.col_ptr, plan.starts
        if self.remote is not None:  # the rows' spans, read by range: then gathered (checked) as a flat archive's
            data, cols = self.remote.read_spans(plan.starts, np.diff(plan.in_ptr))
            starts = plan.in_ptr[:-1]
        if data.dtype == np.float16:
            if values.dtype != np.float16:
                raise TypeError("float16 archives are gathered as float16 (then cast)")
            values = values.view(np.uint16)
            if self.chunks is None:
                data = data.view(np.uint16)
        if self.compressed:
            self._gather_compressed(plan, values, col, sort)
            return
        if self.chunks is not None:
            _gather.gather_chunked(self.chunks, self._chunk_pointers, plan.rows, plan.starts, plan.in_ptr,
                                   self.archive_cols, values, col, sort=sort)
            return
        _gather.gather(data, cols, starts, plan.in_ptr, self.archive_cols, values, col,
                       sort=sort, archive=self.path, rows=plan.rows)

    def _gather_compressed(self, plan: RowPlan, values: np.ndarray, col: np.ndarray, sort: bool) -> None:
        """The chunked gather over decoded chunks, in groups of chunks that fit the cache (one group
        unless the batch spans more; at least one chunk per group)."""
        storage = self.chunks
        chunk_of = plan.rows // storage.chunk_size
        needed = np.unique(chunk_of)
        f16 = self.data.dtype == np.float16
        for group in _cache_groups(needed, [storage.chunk_nbytes(int(k)) for k in needed], storage.cache.limit):
            decoded = storage.decode_many(group)
            data, cols = [None] * storage.num_chunks, [None] * storage.num_chunks
            for k, (v, c) in decoded.items():
                data[k], cols[k] = (v.view(np.uint16) if f16 else v), c
            pointers = _gather.chunk_pointers(data, cols, storage.value_offsets, np.uint16 if f16 else self.data.dtype,
                                              self.col_ptr.dtype)
            positions = None if len(group) == len(needed) else np.flatnonzero(np.isin(chunk_of, group))
            # while chunks decode ahead on the pool (both cores), a parallel copy would wait for them
            _gather.gather_chunked(storage, pointers, plan.rows, plan.starts, plan.in_ptr, self.archive_cols, values,
                                   col, sort=sort, positions=positions, threads=not storage.decoding)
            del decoded, data, cols  # the cache may drop them now

    def gather_native(self, plan: RowPlan, out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``plan``'s rows in the archive's own dtypes (into ``out`` when given: pinned staging),
        checked; sorted inside rows (by archive column, as resident copies are) unless dense."""
        if out is None:
            out = (np.empty(plan.nnz, self.data.dtype), np.empty(plan.nnz, self.col_ptr.dtype))
        self.gather(plan, *out, sort=not self.options.dense)
        return out

    def _warm_up(self) -> None:
        """Compile the gathers this backend calls now, not in the first batch (see ``_gather.warm_up``)."""
        data_dt = np.uint16 if self.data.dtype == np.float16 else self.data.dtype
        outputs = [(data_dt, self.col_ptr.dtype)]
        if self.options.value_dtype != "float16":
            # a batch's index dtype follows the batch's nnz, not the archive's: int32 unless the width
            # (or the options) need int64; a batch beyond 2**31 values compiles its own, once
            outputs.append((self.options.value_dtype, self.options.index_dtype_for(self.width, 0)))
        _gather.warm_up(data_dt, self.col_ptr.dtype, self.row_ptr.dtype, outputs, chunked=self.chunks is not None)

    @abstractmethod
    def batch(self, rows) -> Batch: ...

    def batches(self, groups) -> list[Batch]:
        """One batch per array of row ids in ``groups``, each equal to ``batch`` of it. A GPU backend
        with resident rows gathers and assembles them together (see ``GPUBackend.batches_ahead``)."""
        return [self.batch(rows) for rows in groups]

    def batches_ahead(self, groups) -> Callable[[], list[Batch]]:
        """``batches(groups)`` in two steps: this call starts them, the call it returns finishes them
        and returns the batches (or raises what ``batches`` would), so a caller may start the next
        groups in between. A GPU backend with resident rows queues a group's work and returns at
        once; here the work is done in this call."""
        return finished(self.batches(groups))

    @property
    def tensor_device(self) -> torch.device:
        """The torch device of this backend's batches."""
        return torch.device("cpu")

    def will_need(self, rows) -> None:
        """A hint that ``rows`` come next: a compressed archive starts reading and decoding the chunks
        its cache lacks on its decode pool, so they decode while this batch is copied and trained on
        (block order at batch 4,096, the first 24 batches of a fresh loader, 2-core VM: LZ4 cold
        ~160k -> ~240k cells/s, warm ~260k -> ~370k). Rows outside the archive are ignored; never
        required."""
        if self.compressed:
            self.chunks.will_need(self._chunks_of(rows))

    def _chunks_of(self, rows) -> np.ndarray:
        """The chunks holding ``rows`` (ids outside the archive ignored), each once, in order."""
        rows = np.asarray(rows, np.int64)
        return np.unique(rows[(rows >= 0) & (rows < self.n_rows)] // self.chunks.chunk_size)

    # Hand-off hooks for a loader that produces batches in one thread and yields them in another
    # (no-ops on the CPU; the GPU backend orders its stream against the consumer's).
    def producing(self):
        """Context for the producing thread: makes the backend's device and stream current."""
        return contextlib.nullcontext()

    def ready_event(self):
        """An event marking the end of the work queued so far for a batch (``None``: nothing to wait on)."""
        return None

    def handoff(self, ready, tensors) -> None:
        """In the consuming thread, before it uses ``tensors``: wait for ``ready``."""

    def close(self) -> None:
        """Release files and device buffers (the backend is unusable afterwards)."""
        if self.remote is not None and self._owns_remote:
            self.remote.close()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, rows={self.n_rows}, width={self.width})"


def _open_remote(archive, storage_options: dict | None) -> RemoteArchive | None:
    """The remote archive ``archive`` names (opened here for a URL), or None for a local path."""
    if isinstance(archive, RemoteArchive):
        return archive
    if is_url(archive):
        return RemoteArchive(archive, storage_options)
    if storage_options:
        raise ValueError(f"storage_options are for archives at a URL; {archive} is a local path")
    return None


def _cache_groups(chunks: np.ndarray, nbytes: list[int], limit: int) -> list[np.ndarray]:
    """``chunks`` cut into consecutive groups whose decoded bytes stay within ``limit`` (a chunk
    larger than the limit makes a group of its own)."""
    groups, start, total = [], 0, 0
    for i, n in enumerate(nbytes):
        if i > start and total + n > limit:
            groups.append(chunks[start:i])
            start, total = i, 0
        total += n
    groups.append(chunks[start:])
    return groups


def _archive_width(path: Path, col_ptr: np.ndarray) -> int:
    """Genes per row: the widest var block (ragged archives pad to it); from the columns without one."""
    index = load_feature_index(path, FileNames.VAR_FEATURES)
    dims = index.column_dims() if len(index) else []
    if dims:
        return int(max(dims))
    return int(col_ptr.max()) + 1 if col_ptr.size else 0


def available_host_memory() -> int:
    """Bytes of host memory available without swapping (``MemAvailable``; 0 when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _fits_in_memory(nbytes: int) -> bool:
    return nbytes <= available_host_memory() // 2


def _touch_pages(arrays, chunk: int = 1 << 28) -> None:
    """Read one byte of every page so the kernel maps them all (in large sequential steps)."""
    for arr in arrays:
        raw = arr.view(np.uint8) if arr.size else arr
        for start in range(0, raw.size, chunk):
            int(raw[start : start + chunk : 4096].sum())
