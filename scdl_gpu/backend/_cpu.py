"""CPU backend: NumPy over the archive's memory maps; batches reach torch through DLPack, no copy."""

from __future__ import annotations

import threading

import numpy as np
import torch

from . import _reference as reference
from ._assemble import assemble, to_batch
from ._base import Backend
from ._batch import Batch
from ._plan import RowPlan
from ._pool import BufferPool

# Mean span length (values) below which a casting gather stages the native bytes first and casts
# once: short spans are bound by per-copy Python overhead, long ones by the extra pass (measured
# crossover ~5,000 values for uint16 -> float32 on a 2-core VM).
SHORT_SPAN = 4096


def gather_spans(srcs: tuple[np.ndarray, ...], plan: RowPlan, outs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Copy the plan's spans of each array in ``srcs`` into the matching array of ``outs``.

    One copy per span and array: consecutive rows are one copy, so block sampling moves a few long
    spans. NumPy has no segmented copy (an index gather measured 5-20x slower than a loop even for
    one-row spans). Where dtypes match, the copies go through byte memoryviews: a plain memcpy with
    about a quarter of a NumPy slice assignment's overhead (random rows: 1.8x faster). Otherwise
    NumPy casts on the way.
    """
    for src, out in zip(srcs, outs):
        if src.dtype == out.dtype:
            k = src.itemsize
            src_b, out_b = memoryview(src.view(np.uint8)), memoryview(out.view(np.uint8))
            for s, o, n in zip((plan.span_src * k).tolist(), (plan.span_out * k).tolist(), (plan.span_len * k).tolist()):
                out_b[o : o + n] = src_b[s : s + n]
        else:
            for s, o, n in zip(plan.span_src.tolist(), plan.span_out.tolist(), plan.span_len.tolist()):
                out[o : o + n] = src[s : s + n]
    return outs


class CPUBackend(Backend):
    """Batches as CPU torch tensors (freshly allocated arrays, never views of the read-only maps)."""

    device = "cpu"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._staging = threading.local()  # per thread: batch() may be called from several
        self._outputs = BufferPool()

    def batch(self, rows) -> Batch:
        opts, srcs, stages = self.options, (self.data, self.col_ptr), self.stages
        if _plain(opts, self.dtypes["data.npy"]):
            with stages("read"):
                plan = self.plan(rows)
                index_dtype = opts.index_dtype_for(self.width, plan.nnz)
                dtypes = (np.dtype(opts.value_dtype), np.dtype(index_dtype))
                casts = any(src.dtype != d for src, d in zip(srcs, dtypes))
                short = casts and len(plan.span_len) and plan.nnz < SHORT_SPAN * len(plan.span_len)
                # short spans to cast: memcpy native bytes into reused buffers, then one cast per
                # array; otherwise straight into the output (cast on the way: one pass, not two)
                outs = tuple(self._outputs.empty(plan.nnz, d) for d in dtypes)
                staged = gather_spans(srcs, plan, self._stage(plan.nnz) if short else outs)
            with stages("kernels"):
                if short:
                    for o, s in zip(outs, staged):
                        np.copyto(o, s, casting="unsafe")
                values, col = outs
                crow = plan.in_ptr.astype(index_dtype, copy=False)
            with stages("dlpack"):
                return Batch(plan.rows, (plan.n_rows, self.width), crow=_t(crow), col=_t(col), values=_t(values))
        with stages("read"):
            plan = self.plan(rows)
            vals, cols = gather_spans(srcs, plan, tuple(np.empty(plan.nnz, s.dtype) for s in srcs))
        with stages("kernels"):
            out = assemble(reference, np, vals, cols, plan.in_ptr, opts, self.width, opts.gene_remap)
        with stages("dlpack"):
            return to_batch(plan, (plan.n_rows, self.width), out, _t)

    def _stage(self, n: int) -> tuple[np.ndarray, ...]:
        """This thread's staging arrays for ``n`` values (grown by doubling, never shrunk): fresh
        arrays of a large batch cost a page fault per 4 KiB, reused ones do not."""
        bufs = getattr(self._staging, "bufs", None)
        if bufs is None or len(bufs[0]) < n:
            size = max(n, 2 * len(bufs[0]) if bufs is not None else 0, 1 << 16)
            bufs = self._staging.bufs = (np.empty(size, self.data.dtype), np.empty(size, self.col_ptr.dtype))
        return tuple(b[:n] for b in bufs)


def _plain(opts, data_dtype: str) -> bool:
    """A batch that is only a cast. uint64 values and float16 outputs take the kernel route (via
    float64, then float32) so that their rounding is the same as on the GPU."""
    transforms = opts.dense or opts.log1p or opts.target_sum is not None or opts.gene_remap is not None
    return not transforms and data_dtype != "uint64" and opts.value_dtype != "float16"


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_dlpack(np.ascontiguousarray(a))
