"""GPU backend: row spans read into device memory, assembled by CUDA kernels, handed to torch by DLPack.

Reading: with kvikio, ``CuFile.pread`` of each span of ``data.npy`` and ``col_ptr.npy`` straight
into device buffers (parallel tasks on kvikio's thread pool; GDS when the system has it, else
POSIX reads through a bounce buffer). Short spans (random rows) are gathered on the host into
pinned memory instead and copied with one transfer per array: thousands of tiny preads cost more
than the copy. Without kvikio, every batch takes the pinned-host route.

Imports CuPy (and kvikio) when constructed, never at package import.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ._assemble import assemble, to_batch
from ._base import Backend
from ._batch import Batch, BatchOptions
from ._detect import kvikio_available, resolve_device
from ._plan import RowPlan

READERS = ("auto", "kvikio", "host")


class GPUBackend(Backend):
    """Batches as CUDA torch tensors sharing CuPy's buffers (zero copy, ordered on torch's stream).

    reader
        ``"kvikio"``, ``"host"`` (pinned host gather + one copy) or ``"auto"``: kvikio for batches
        whose spans average at least ``kvikio_min_span`` bytes, when kvikio is installed.
    kvikio_threads, kvikio_task_size
        kvikio's thread pool size and task size (bytes) while this backend reads.
    """

    device = "cuda"

    def __init__(
        self,
        archive,
        options: BatchOptions | None = None,
        *,
        reader: str = "auto",
        kvikio_min_span: int = 1 << 20,
        kvikio_threads: int | None = None,
        kvikio_task_size: int | None = None,
    ) -> None:
        resolve_device("cuda")  # a clear error when no usable GPU
        super().__init__(archive, options)
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
        if reader == "kvikio" and not kvikio_available():
            raise RuntimeError("reader='kvikio' but kvikio is not installed (pip install 'scdl-gpu[gpu-cu13]')")
        import cupy as cp

        from ._cuda import CudaKernels

        self.cp = cp
        self.reader = reader if reader != "auto" else ("kvikio" if kvikio_available() else "host")
        self.kvikio_min_span = int(kvikio_min_span)
        self._kvikio_settings = {k: v for k, v in (("num_threads", kvikio_threads), ("task_size", kvikio_task_size)) if v}
        stage_dtype = "float32" if self.data.dtype == np.float16 else self.data.dtype.name  # kernels take no half
        self.kernels = CudaKernels(stage_dtype, self.col_ptr.dtype.name)
        remap = self.options.gene_remap
        self.remap = None if remap is None else cp.asarray(remap)
        self._files = None

    # -- reading ------------------------------------------------------------------------------
    def _use_kvikio(self, plan: RowPlan) -> bool:
        if self.reader != "kvikio" or not len(plan.span_len):
            return False
        mean_bytes = plan.nnz * self.data.itemsize / len(plan.span_len)
        return mean_bytes >= self.kvikio_min_span

    def _open(self):
        if self._files is None:
            import kvikio

            self._files = tuple(kvikio.CuFile(self.path / name, "r") for name in ("data.npy", "col_ptr.npy"))
        return self._files

    def _stage_kvikio(self, plan: RowPlan):
        import kvikio

        cp = self.cp
        # Reused pool memory may still be read by the previous batch's kernels: kvikio's threads
        # write outside the stream order, so wait for them first.
        cp.cuda.get_current_stream().synchronize()
        out = (cp.empty(plan.nnz, self.data.dtype), cp.empty(plan.nnz, self.col_ptr.dtype))
        with kvikio.defaults.set(self._kvikio_settings) if self._kvikio_settings else contextlib.nullcontext():
            futures = [
                f.pread(buf[o : o + n], n * buf.itemsize, file_offset=s * buf.itemsize)
                for f, buf in zip(self._open(), out)
                for s, o, n in zip(plan.span_src.tolist(), plan.span_out.tolist(), plan.span_len.tolist())
                if n
            ]
            for fut in futures:
                fut.get()
        return out

    def _stage_host(self, plan: RowPlan):
        import cupyx

        cp = self.cp
        srcs = (self.data, self.col_ptr)
        with self.stages("read"):
            pinned = self.gather_native(plan, tuple(cupyx.empty_pinned(plan.nnz, s.dtype) for s in srcs))
        with self.stages("h2d"):
            out = []
            for host in pinned:
                dev = cp.empty(plan.nnz, host.dtype)
                dev.set(host)  # one host-to-device copy per array
                out.append(dev)
        return tuple(out)

    # -- batches ------------------------------------------------------------------------------
    def batch(self, rows) -> Batch:
        cp, stages = self.cp, self.stages
        plan = self.plan(rows)
        if self._use_kvikio(plan):
            with stages("read"):
                vals, cols = self._stage_kvikio(plan)
        else:
            vals, cols = self._stage_host(plan)
        with stages("kernels"):
            if vals.dtype == cp.float16:
                vals = vals.astype(cp.float32)
            in_ptr = cp.asarray(plan.in_ptr)
            out = assemble(self.kernels, cp, vals, cols, in_ptr, self.options, self.width, self.remap)
        with stages("dlpack"):
            return to_batch(plan, (plan.n_rows, self.width), out, torch.from_dlpack)

    def close(self) -> None:
        if self._files is not None:
            for f in self._files:
                f.close()
            self._files = None
