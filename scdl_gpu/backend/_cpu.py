"""CPU backend: the compiled gather over the archive's memory maps; batches reach torch sharing the
output arrays' memory, no copy."""

from __future__ import annotations

import numpy as np

from . import _reference as reference
from ._assemble import assemble, to_batch
from ._base import Backend
from ._batch import Batch, host_tensor
from ._pool import BufferPool


class CPUBackend(Backend):
    """Batches as CPU torch tensors (freshly allocated or pooled arrays, never views of the maps).

    A batch that is only a cast (the default: float32 values, int32 columns) is one pass of the
    compiled gather straight into the output: bounds checked, cast, columns sorted inside rows.
    Transforms (``target_sum``, ``log1p``, ``gene_remap``, dense) gather the archive's own dtypes
    first and then run the kernels' NumPy references.
    """

    device = "cpu"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._outputs = BufferPool()

    def batch(self, rows) -> Batch:
        opts, stages = self.options, self.stages
        with stages("read"):
            plan = self.plan(rows)
            if self._plain:
                index_dtype = opts.index_dtype_for(self.width, plan.nnz)
                values = self._outputs.empty(plan.nnz, opts.value_dtype)
                col = self._outputs.empty(plan.nnz, index_dtype)
                self.gather(plan, values, col)
                crow = plan.in_ptr.astype(index_dtype, copy=False)
            else:
                vals, cols = self.gather_native(plan)
        if self._plain:
            with stages("dlpack"):
                return Batch(plan.rows, (plan.n_rows, self.width), crow=host_tensor(crow), col=host_tensor(col),
                             values=host_tensor(values), sorted=True)
        with stages("kernels"):
            out = assemble(reference, np, vals, cols, plan.in_ptr, opts, self.width, opts.gene_remap)
        with stages("dlpack"):
            return to_batch(plan, (plan.n_rows, self.width), out, host_tensor, sorted=opts.gene_remap is None)

    @property
    def _plain(self) -> bool:
        """A batch that is only a cast (float16 archives and outputs take the reference route,
        whose rounding is the GPU's)."""
        opts = self.options
        transforms = opts.dense or opts.log1p or opts.target_sum is not None or opts.gene_remap is not None
        return not transforms and self.data.dtype != np.float16 and opts.value_dtype != "float16"

