"""GPU backend: rows gathered into device memory, assembled by CUDA kernels, handed to torch by DLPack.

Where the rows come from is the backend's residency (see :mod:`._residency`):

- ``device`` / ``pinned``: the rows it serves (all, or the loader's share for this rank) are copied
  once into GPU memory or mapped pinned host memory; each batch is one upload of its row pointers
  and one launch of ``scdl_gather`` (``kernels/gather.cu``), which checks its reads and flags
  violations in a word read once per batch.
- ``stream``: each batch is read from the archive: with kvikio, ``CuFile.pread`` of each long span
  straight into device memory; otherwise (short spans, random rows) the compiled host gather into
  pinned staging and one copy per array. A compressed archive's chunks are decoded on the GPU by
  nvCOMP when it is importable (:mod:`._gpu_decode`), then gathered by ``scdl_gather_chunks``.

Then the kernels of ``kernels/csr_batch.cu`` remap, scale, ``log1p``, cast and emit CSR or dense.
All of it runs on the backend's own stream and device (:mod:`._device`). Imports CuPy (and kvikio)
when constructed, never at package import.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .._hints import GPU
from ..archive._constants import FileNames
from ..errors import ArchiveError
from . import _residency
from ._assemble import assemble, split, to_batch
from ._base import Backend, _cache_groups, available_host_memory, finished
from ._batch import Batch, BatchOptions
from ._detect import kvikio_available, resolve_device
from ._device import OnDevice
from ._plan import RowPlan, as_row_ids

log = logging.getLogger(__name__)

READERS = ("auto", "kvikio", "host")
DECODES = ("auto", "device", "host")
LOAD_CHUNK_VALUES = 1 << 26  #: values per step while copying resident rows (bounded host staging)


class GPUBackend(OnDevice, Backend):
    """Batches as CUDA torch tensors sharing CuPy's buffers (zero copy, on the backend's stream).

    device
        ``"cuda"`` (torch's current device when constructed) or ``"cuda:N"``.
    residency
        ``"auto"``, ``"device"``, ``"pinned"`` or ``"stream"`` (see :mod:`._residency`).
    resident_rows
        The archive rows to hold for ``device``/``pinned`` (default: all); batches may only ask
        for these. The loader passes its rank's share.
    device_fraction
        Share of the free GPU memory that ``auto`` lets resident rows take.
    reader
        For ``stream``: ``"kvikio"``, ``"host"`` (compiled host gather into pinned memory + one copy)
        or ``"auto"``: kvikio for batches whose spans average at least ``kvikio_min_span`` bytes.
    kvikio_threads, kvikio_task_size
        kvikio's thread pool size (default: the CPU count, at most 16) and task size, set once.
    decode
        Where a compressed archive's chunks are decoded when streaming: ``"device"`` (nvCOMP, into a
        device cache of ``cache_bytes``), ``"host"`` (the CPU's decode, then one upload) or ``"auto"``:
        the device when nvCOMP is importable and the archive's codecs are ones it decodes; the choice
        and its reason are logged. ``device``/``pinned`` residency decodes once on the host when loading.
    """

    device = "cuda"

    def __init__(
        self,
        archive,
        options: BatchOptions | None = None,
        *,
        device: str | None = None,
        residency: str = "auto",
        resident_rows=None,
        device_fraction: float = _residency.DEVICE_FRACTION,
        reader: str = "auto",
        kvikio_min_span: int = 1 << 20,
        kvikio_threads: int | None = None,
        kvikio_task_size: int | None = None,
        storage_options: dict | None = None,
        cache_bytes: int | None = None,
        decode: str = "auto",
    ) -> None:
        resolve_device("cuda")  # a clear error when no usable GPU
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
        if residency not in _residency.RESIDENCIES:
            raise ValueError(f"residency must be one of {_residency.RESIDENCIES}, got {residency!r}")
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
        if reader == "kvikio" and not kvikio_available():
            raise RuntimeError(f"reader='kvikio' but kvikio is not installed: {GPU}")
        super().__init__(archive, options, storage_options=storage_options, cache_bytes=cache_bytes)
        if self.remote is not None and reader == "kvikio":
            raise ValueError(f"reader='kvikio' reads local files; {self.remote.url} is read by range on the host "
                             "(reader='host')")
        import cupy as cp

        from ._cuda import CudaKernels
        from ._device import DeviceContext

        self.cp = cp
        self.ctx = DeviceContext(device if device not in (None, "auto") else None)
        self.device_index = self.ctx.index
        # a remote archive's rows come by range to the host gather (kvikio's RemoteFile is not used)
        self.reader = reader if reader != "auto" else ("kvikio" if kvikio_available() and self.remote is None else "host")
        self.kvikio_min_span = int(kvikio_min_span)
        self._files = None
        self._parity = 0  #: alternates per batch or group: which of two sets of staging buffers it uses
        if self.reader == "kvikio":
            _configure_kvikio(kvikio_threads, kvikio_task_size)
        self._f16 = self.data.dtype == np.float16
        self._v_dt = np.dtype(np.uint16) if self._f16 else self.data.dtype  # float16 moves as its bits
        stage_dtype = "float32" if self._f16 else self.data.dtype.name  # kernels take no half
        self.kernels = CudaKernels(stage_dtype, self.col_ptr.dtype.name)
        with self.ctx.activate():
            remap = self.options.gene_remap
            self.remap = None if remap is None else cp.asarray(remap)
            self._err = cp.zeros(1, cp.int32)
            rows = _residency.resident_rows(resident_rows, self.n_rows) if residency != "stream" else None
            need = _residency.share_bytes(self.row_ptr, rows, self.data.itemsize + self.col_ptr.itemsize) if rows is not None else 0
            free = cp.cuda.runtime.memGetInfo()[0] if residency == "auto" else 0
            self.residency = _residency.choose(residency, need, free, available_host_memory(), device_fraction)
            self.index = None
            if self.residency in ("device", "pinned"):
                self._load_resident(rows)
            self.decoder = self._decoder(decode) if self.compressed else None
        log.info("GPU backend on cuda:%d, residency %s%s", self.device_index, self.residency,
                 f" (auto; {need / 2**30:.2f} GiB of rows)" if residency == "auto" else "")

    # -- residency ------------------------------------------------------------------------------
    def _load_resident(self, rows: np.ndarray) -> None:
        """Copy ``rows`` (checked and sorted by the compiled gather) into device or mapped pinned memory."""
        cp = self.cp
        plan = self.plan(rows)
        n = plan.nnz
        v_dt = self._v_dt
        c_dt = self.col_ptr.dtype
        if self.residency == "pinned":
            from ._pinned import mapped_empty

            (self._host_data, self._res_data), (self._host_cols, self._res_cols) = mapped_empty(n, v_dt), mapped_empty(n, c_dt)
        else:
            self._res_data, self._res_cols = cp.empty(n, v_dt), cp.empty(n, c_dt)
        # in steps of about LOAD_CHUNK_VALUES values, so host staging stays bounded
        bounds = np.searchsorted(plan.in_ptr, np.arange(0, n + LOAD_CHUNK_VALUES, LOAD_CHUNK_VALUES), side="right") - 1
        cuts = np.unique(np.clip(np.append(bounds, len(rows)), 0, len(rows)))
        used = set()
        for step, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            lo, hi = int(plan.in_ptr[a]), int(plan.in_ptr[b])
            part = RowPlan(plan.rows[a:b], plan.in_ptr[a : b + 1] - lo, plan.starts[a:b])
            if self.residency == "pinned":
                self.gather(part, self._host_data[lo:hi].view(self.data.dtype), self._host_cols[lo:hi])
                continue
            names = f"load_vals{step % 2}", f"load_cols{step % 2}"  # a step gathers while the last is copied
            used.update(names)
            vals = self.ctx.staging(names[0], hi - lo, self.data.dtype)
            cols = self.ctx.staging(names[1], hi - lo, c_dt)
            self.gather(part, vals, cols)
            self._res_data[lo:hi].set(vals.view(v_dt))
            self._res_cols[lo:hi].set(cols)
            for name in names:
                self.ctx.staged(name)
        self.ctx.synchronize()
        self.ctx.drop_staging(*used)  # pinned, used once
        self.index = _residency.ResidentIndex(plan.rows, plan.in_ptr)
        log.info("%s: %d rows (%.2f GiB) resident in %s memory", self.path, len(rows),
                 (self._res_data.nbytes + self._res_cols.nbytes) / 2**30, "GPU" if self.residency == "device" else "pinned host")

    def _stage_resident(self, rows, err=None):
        """Device/pinned: the batch's rows gathered from the resident arrays by one kernel launch, its
        violations flagged in ``err`` (default: the backend's word)."""
        rows = as_row_ids(rows)
        starts, out_ptr = self.index.locate(rows)
        n_b = len(starts)
        dev = self.ctx.upload(f"ptrs{self._parity}", np.concatenate([out_ptr, starts]))  # one copy for both
        d_out_ptr, d_starts = dev[: n_b + 1], dev[n_b + 1 :]
        vals, cols = self.kernels.gather(self._res_data, self._res_cols, d_starts, d_out_ptr, int(out_ptr[-1]),
                                         self.archive_cols, self._err if err is None else err)
        return RowPlan(rows, out_ptr, starts), d_out_ptr, vals, cols

    # -- compressed chunks ------------------------------------------------------------------------
    def will_need(self, rows) -> None:
        """As ``Backend.will_need``; when the GPU decodes the chunks, their files are only read ahead
        (decoding them on the host as well would take the CPU from the training step for nothing)."""
        if getattr(self, "decoder", None) is None:
            super().will_need(rows)
            return
        self.chunks.read_ahead(k for k in self._chunks_of(rows) if self.decoder.cache.get(int(k), count=False) is None)

    def _decoder(self, decode: str):
        """The device decoder of this compressed archive's chunks, or None (host decode), logged with why."""
        from . import _gpu_decode

        why = None
        if decode == "host":
            why = "decode='host'"
        elif self.residency != "stream":
            why = f"residency {self.residency!r}: its rows were decoded once, on the host, when loaded"
        else:
            why = _gpu_decode.unsupported(self.chunks)
            if why is None:
                try:
                    nvcomp = _gpu_decode.load_nvcomp()
                except ImportError as e:
                    why = str(e)
        if why is not None:
            if decode == "device":
                raise RuntimeError(f"decode='device' is not possible for {self.path}: {why}")
            log.info("%s: compressed chunks decoded on the host (%s)", self.path, why)
            return None
        from ._cuda import DecodeKernels

        limit = self.chunks.cache.limit
        log.info("%s: compressed chunks decoded on the GPU by nvCOMP %s (%s), %d MiB of them cached there", self.path,
                 getattr(nvcomp, "__version__", "?"), sorted({p.codec for p in self.chunks.pipelines.values()}), limit >> 20)
        return _gpu_decode.DeviceDecoder(self.chunks, self.ctx, DecodeKernels(self.ctx.upload), nvcomp, limit)

    def _stage_decoded(self, plan: RowPlan):
        """Stream a compressed archive: the batch's chunks decoded on the device (or cached there), in
        groups that fit the device cache, each group's rows gathered by one ``scdl_gather_chunks``."""
        cp, storage = self.cp, self.chunks
        vals, cols = cp.empty(plan.nnz, self._v_dt), cp.empty(plan.nnz, self.col_ptr.dtype)
        lengths = np.diff(plan.in_ptr)
        chunk_of = plan.rows // storage.chunk_size
        needed = np.unique(chunk_of[lengths > 0])  # empty rows read nothing
        for group in _cache_groups(needed, [storage.chunk_nbytes(int(k)) for k in needed], self.decoder.cache.limit):
            decoded = self.decoder.chunks(group)
            sel = np.flatnonzero((lengths > 0) & np.isin(chunk_of, group))
            row_ptr = np.zeros(len(sel) + 1, np.int64)
            np.cumsum(lengths[sel], out=row_ptr[1:])
            table = [(decoded[int(k)][0].view(self._v_dt), decoded[int(k)][1].view(self.col_ptr.dtype)) for k in group]
            self.kernels.gather_chunks(table, np.searchsorted(group, chunk_of[sel]),
                                       plan.starts[sel] - storage.value_offsets[chunk_of[sel]], row_ptr,
                                       plan.in_ptr[sel], vals, cols, self.archive_cols, self._err, self.ctx.upload)
            del decoded, table  # the cache may drop them now (their reads are queued on this stream)
        return vals, cols

    # -- streaming ---------------------------------------------------------------------------------
    def _use_kvikio(self, plan: RowPlan) -> bool:
        # kvikio reads spans of the flat value file; a chunked archive's rows go through the host gather
        if self.reader != "kvikio" or self.chunks is not None or not len(plan.span_len):
            return False
        return plan.nnz * self.data.itemsize / len(plan.span_len) >= self.kvikio_min_span

    def _open(self):
        if self._files is None:
            import kvikio

            self._files = tuple(kvikio.CuFile(self.path / name, "r") for name in (FileNames.DATA.value, FileNames.COLPTR.value))
        return self._files

    def _stage_kvikio(self, plan: RowPlan):
        cp = self.cp
        # kvikio's threads write outside stream order: memory from the pool may still be read by
        # kernels queued on this stream, so let them finish first.
        self.ctx.synchronize()  # synchronize!
        v_dt = self._v_dt
        out = (cp.empty(plan.nnz, v_dt), cp.empty(plan.nnz, self.col_ptr.dtype))
        futures = [
            f.pread(buf[o : o + n], n * buf.itemsize, file_offset=s * buf.itemsize)
            for f, buf in zip(self._open(), out)
            for s, o, n in zip(plan.span_src.tolist(), plan.span_out.tolist(), plan.span_len.tolist())
            if n
        ]
        for fut in futures:
            fut.get()
        if len(out[1]) and int(out[1].max()) >= self.archive_cols:  # synchronize! (kvikio bypasses the host gather's checks)
            raise ArchiveError(f"{self.path / FileNames.COLPTR.value}: a column of rows {plan.rows[:5].tolist()}... "
                               f"is not below the archive's {self.archive_cols} genes; the archive is damaged")
        return out

    def _stage_host(self, plan: RowPlan):
        """The compiled host gather into pinned staging, then one copy per array. The staging buffers
        alternate between batches, so this batch's gather runs while the one before is still copied."""
        cp, ctx = self.cp, self.ctx
        names = f"vals{self._parity}", f"cols{self._parity}"
        with self.stages("read"):
            vals = ctx.staging(names[0], plan.nnz, self.data.dtype)
            cols = ctx.staging(names[1], plan.nnz, self.col_ptr.dtype)
            self.gather_native(plan, (vals, cols))
        with self.stages("h2d"):
            v_dt = self._v_dt
            out = (cp.empty(plan.nnz, v_dt), cp.empty(plan.nnz, self.col_ptr.dtype))
            out[0].set(vals.view(v_dt))
            out[1].set(cols)
            for name in names:
                ctx.staged(name)
        return out

    # -- batches ------------------------------------------------------------------------------------
    def batch(self, rows) -> Batch:
        stages, opts = self.stages, self.options
        self._parity ^= 1  # this batch's staging buffers: not the last batch's, whose copies may be queued
        with self.ctx.activate():
            self.ctx.collect()
            sorted_rows = True
            if self.index is not None:
                with stages("read"):
                    self._err.fill(0)
                    plan, in_ptr, vals, cols = self._stage_resident(rows)
            else:
                plan = self.plan(rows)
                if self.decoder is not None:
                    with stages("read"):
                        self._err.fill(0)
                        vals, cols = self._stage_decoded(plan)
                    sorted_rows = self.archive_sorted  # rows as stored, as kvikio's
                elif self._use_kvikio(plan):
                    with stages("read"):
                        vals, cols = self._stage_kvikio(plan)
                    sorted_rows = self.archive_sorted
                else:
                    vals, cols = self._stage_host(plan)
                in_ptr = None
            out = self._assembled(plan, in_ptr, vals, cols, flagged=self.index is not None or self.decoder is not None)
            with stages("dlpack"):
                return to_batch(plan, (plan.n_rows, self.width), out, self._to_torch,
                                sorted=sorted_rows and opts.gene_remap is None)

    def batches(self, groups) -> list[Batch]:
        return self.batches_ahead(groups)()

    def batches_ahead(self, groups):
        """As ``Backend.batches_ahead``. With device or pinned residency and no gene remap, the groups'
        rows are located, uploaded, gathered, assembled and handed to torch once for all, each batch a
        view of the group's arrays: the per-batch launches and host work (what bounds a device-resident
        batch) are paid once per group. Nothing here waits for the device: the group's flag word comes
        back by an asynchronous copy, which the returned call waits for and checks, so the host can
        queue the next group while the device gathers this one."""
        groups = [as_row_ids(g) for g in groups]
        if self.index is None or self.options.gene_remap is not None or len(groups) < 2:
            return finished([self.batch(g) for g in groups])
        cp, stages, opts = self.cp, self.stages, self.options
        cuts = np.concatenate([[0], np.cumsum([len(g) for g in groups])])
        # Its own flag word and staging buffers, other than the last group's (which may still be in flight:
        # reusing them would wait for it)
        self._parity ^= 1
        with self.ctx.activate():
            self.ctx.collect()
            err = cp.zeros(1, cp.int32)
            with stages("read"):
                plan, in_ptr, vals, cols = self._stage_resident(np.concatenate(groups), err)
            index_dtype = opts.index_dtype_for(self.width, plan.nnz)
            if index_dtype != opts.index_dtype_for(self.width, 0):  # a group beyond 2**31 values: per batch
                return finished([self.batch(g) for g in groups])
            out = self._assemble(plan, in_ptr, vals, cols)
            with stages("dlpack"):
                got = split(plan, cuts, out, self.width, self._to_torch,
                            lambda a: self.ctx.upload(f"crows{self._parity}", a), index_dtype, sorted=True)
            flag = self._pinned_word()
            err.get(out=flag, blocking=False)  # queued behind the group's kernels
            copied = self.ctx.record()

        def finish() -> list[Batch]:
            with stages("kernels"):
                copied.synchronize()  # synchronize! (the one flag read per group)
            if flag[0]:
                raise self._device_error(int(flag[0]), plan)
            return got

        return finish

    def _pinned_word(self) -> np.ndarray:
        """One int32 of pinned host memory (CuPy's pinned pool keeps the blocks), for a flag copied back
        asynchronously."""
        import cupyx

        return cupyx.empty_pinned(1, np.int32)

    def _assemble(self, plan: RowPlan, in_ptr, vals, cols):
        """The staged entries through the batch kernels (``assemble``), queued."""
        cp = self.cp
        with self.stages("kernels"):
            if self._f16:
                vals = vals.view(cp.float16).astype(cp.float32)
            if in_ptr is None:
                in_ptr = self.ctx.upload(f"in_ptr{self._parity}", plan.in_ptr)
            return assemble(self.kernels, cp, vals, cols, in_ptr, self.options, self.width, self.remap, nnz=plan.nnz)

    def _assembled(self, plan: RowPlan, in_ptr, vals, cols, flagged: bool):
        """``_assemble``; then, when the staging kernel ``flagged`` its reads, the one host read of the
        flag word per batch."""
        out = self._assemble(plan, in_ptr, vals, cols)
        with self.stages("kernels"):
            bits = int(self._err.get()[0]) if flagged else 0  # synchronize! (the one flag read)
        if bits:
            raise self._device_error(bits, plan)
        return out

    def _to_torch(self, array) -> torch.Tensor:
        """``array`` handed to torch without a copy, its memory held until every stream is past its uses."""
        self.ctx.keep_until_released(array)
        return torch.from_dlpack(array)

    def _device_error(self, bits: int, plan: RowPlan) -> ArchiveError:
        if self.decoder is not None:
            self.gather_native(plan)  # the host gather's checks name the chunk's file and the row
        what = []
        if bits & 1:
            what.append(f"a row span outside the resident values (from {FileNames.ROWPTR.value})")
        if bits & 2:
            what.append(f"a column not below {self.archive_cols} (from {FileNames.COLPTR.value})")
        if self.decoder is not None:
            return ArchiveError(f"{self.path}: the gather kernel read {' and '.join(what)} in the chunks decoded on "
                                "the GPU, which the host decodes differently; device memory was overwritten")
        return ArchiveError(f"{self.path}: the gather kernel read {' and '.join(what)} in the {self.residency} "
                            "copy; the resident rows were checked when loaded, so device memory was overwritten")

    def close(self) -> None:
        if self._files is not None:
            for f in self._files:
                f.close()
            self._files = None
        self._res_data = self._res_cols = self._host_data = self._host_cols = None
        self.index = None
        if getattr(self, "decoder", None) is not None:
            self.decoder.close()
            self.decoder = None
        super().close()


def _configure_kvikio(threads: int | None, task_size: int | None) -> None:
    """kvikio's thread pool once per backend (rebuilding it per batch costs milliseconds); the
    default of one thread makes every span's read serial."""
    import kvikio.defaults

    settings = {"num_threads": threads or min(16, os.cpu_count() or 1)}
    if task_size:
        settings["task_size"] = task_size
    kvikio.defaults.set(settings)
