"""CPU backend: NumPy over the archive's memory maps; batches reach torch through DLPack, no copy."""

from __future__ import annotations

import numpy as np
import torch

from . import _reference as reference
from ._assemble import assemble
from ._base import Backend
from ._batch import Batch
from ._plan import RowPlan


def gather_spans(srcs: tuple[np.ndarray, ...], plan: RowPlan, outs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Copy the plan's spans of each array in ``srcs`` into the matching array of ``outs``.

    One slice copy per span and array: consecutive rows are one copy, so block sampling moves a
    few long spans. NumPy has no segmented copy; an index gather (``np.take`` over every position)
    measured 5-20x slower than this loop even for one-row spans; one loop serves all arrays.
    """
    pairs = list(zip(srcs, outs))
    for s, o, n in zip(plan.span_src.tolist(), plan.span_out.tolist(), plan.span_len.tolist()):
        for src, out in pairs:
            out[o : o + n] = src[s : s + n]
    return outs


class CPUBackend(Backend):
    """Batches as CPU torch tensors (freshly allocated arrays, never views of the read-only maps)."""

    device = "cpu"

    def batch(self, rows) -> Batch:
        plan = self.plan(rows)
        opts = self.options
        shape = (plan.n_rows, self.width)
        srcs = (self.data, self.col_ptr)
        if _plain(opts, self.dtypes["data.npy"]):
            # Nothing to transform: gather straight into the output dtypes, casting on the way (one
            # pass; a native gather plus a cast pass measured slower: it touches twice the fresh memory).
            index_dtype = opts.index_dtype_for(self.width, plan.nnz)
            values, col = gather_spans(srcs, plan, (np.empty(plan.nnz, opts.value_dtype), np.empty(plan.nnz, index_dtype)))
            crow = plan.in_ptr.astype(index_dtype, copy=False)
            return Batch(plan.rows, shape, crow=_t(crow), col=_t(col), values=_t(values))
        vals, cols = gather_spans(srcs, plan, tuple(np.empty(plan.nnz, s.dtype) for s in srcs))
        out = assemble(reference, np, vals, cols, plan.in_ptr, opts, self.width, opts.gene_remap)
        if out.dense is not None:
            return Batch(plan.rows, shape, dense=_t(out.dense))
        return Batch(plan.rows, shape, crow=_t(out.crow), col=_t(out.col), values=_t(out.values))


def _plain(opts, data_dtype: str) -> bool:
    """A batch that is only a cast. uint64 values and float16 outputs take the kernel route (via
    float64, then float32) so that their rounding is the same as on the GPU."""
    transforms = opts.dense or opts.log1p or opts.target_sum is not None or opts.gene_remap is not None
    return not transforms and data_dtype != "uint64" and opts.value_dtype != "float16"


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_dlpack(np.ascontiguousarray(a))
