"""The CUDA kernels of ``kernels/csr_batch.cu`` and ``kernels/gather.cu``, compiled by CuPy on first use,
with the same call signatures as the NumPy references in :mod:`._reference` (so
:func:`._assemble.assemble` runs on both); ``gather`` differs in taking its outputs' length and the
caller's error word.

Only imported by the GPU backend: importing it imports CuPy.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from .. import kernels

THREADS = 256
_NULL = np.uint64(0)  # a null pointer argument (pointers are passed as 8-byte values)


class CudaKernels:
    """Launchers for one archive's value and column dtypes; modules compiled lazily, cached by CuPy."""

    def __init__(self, value_dtype: str, col_dtype: str) -> None:
        self.tv, self.tc = np.dtype(value_dtype).name, np.dtype(col_dtype).name
        self._functions: dict[str, object] = {}

    def _fn(self, name: str, *dtypes, file: str = "csr_batch.cu"):
        expr = kernels.expression(name, *dtypes)  # kernel names are unique across files
        fn = self._functions.get(expr)
        if fn is None:
            module = cp.RawModule(code=kernels.source(file), options=("-std=c++17",), name_expressions=[expr])
            fn = self._functions[expr] = module.get_function(expr)
        return fn

    @staticmethod
    def _launch(fn, n: int, args) -> None:
        if n > 0:
            fn(((n + THREADS - 1) // THREADS,), (THREADS,), args)

    def keep_flags(self, cols, remap):
        flags = cp.empty(len(cols), dtype=cp.int32)
        self._launch(self._fn("scdl_keep_flags", self.tc), len(cols), (cols, np.int64(len(cols)), remap, flags))
        return flags

    def row_sums(self, vals, cols, in_ptr, remap=None):
        n_rows = len(in_ptr) - 1
        sums = cp.empty(n_rows, dtype=cp.float64)
        args = (vals, cols, in_ptr, np.int64(n_rows), _NULL if remap is None else remap, sums)
        self._launch(self._fn("scdl_row_sums", self.tv, self.tc), n_rows, args)
        return sums

    def emit(self, vals, cols, in_ptr, remap=None, pos=None, row_scale=None, log1p=False, out_dtype="float32",
             index_dtype="int32", n_out=None):
        n, n_rows = len(vals), len(in_ptr) - 1
        if n_out is None:  # kept entries: the scan's last value plus the last entry's own flag
            n_out = n if pos is None or n == 0 else int(pos[-1]) + int(remap[int(cols[-1])] >= 0)
        total = n_out
        out_vals = cp.empty(total, dtype=out_dtype)
        out_cols = cp.empty(total, dtype=index_dtype)
        args = (
            vals, cols, np.int64(n), in_ptr, np.int64(n_rows),
            _NULL if remap is None else remap, _NULL if pos is None else pos,
            _NULL if row_scale is None else row_scale, np.int32(bool(log1p)), out_vals, out_cols,
        )
        fn = self._fn("scdl_emit", self.tv, self.tc, out_dtype, index_dtype)
        self._launch(fn, n, args)
        return out_vals, out_cols

    def densify(self, vals, cols, in_ptr, remap=None, row_scale=None, log1p=False, n_out_cols=0, out_dtype="float32"):
        n, n_rows = len(vals), len(in_ptr) - 1
        out = cp.zeros((n_rows, n_out_cols), dtype=out_dtype)
        args = (
            vals, cols, np.int64(n), in_ptr, np.int64(n_rows),
            _NULL if remap is None else remap, _NULL if row_scale is None else row_scale,
            np.int32(bool(log1p)), np.int64(n_out_cols), out,
        )
        self._launch(self._fn("scdl_densify", self.tv, self.tc, out_dtype), n, args)
        return out

    def gather(self, data, cols, src_start, out_ptr, n_out, width, err):
        """``scdl_gather``: the batch's rows copied out of the resident ``data``/``cols``.

        ``n_out`` is ``out_ptr[-1]``, which the caller knows on the host (reading it here would sync).
        Values keep ``data``'s dtype (pass float16 as a uint16 view), not this instance's staged dtype.
        ``err``: the caller's int32 array of length 1, zeroed once per batch; bits as in the kernel.
        """
        n_rows = len(out_ptr) - 1
        out_vals = cp.empty(n_out, dtype=data.dtype)
        out_cols = cp.empty(n_out, dtype=cols.dtype)
        args = (
            data, cols, np.int64(len(data)), src_start, out_ptr, np.int64(n_rows), np.int64(width),
            out_vals, out_cols, err,
        )
        self._launch(self._fn("scdl_gather", data.dtype, cols.dtype, file="gather.cu"), n_out, args)
        return out_vals, out_cols
