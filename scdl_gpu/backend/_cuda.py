"""The CUDA kernels of ``kernels/csr_batch.cu``, ``kernels/gather.cu`` and ``kernels/decode.cu``, compiled by CuPy
on first use,
with the same call signatures as the NumPy references in :mod:`._reference` (so
:func:`._assemble.assemble` runs on both); ``gather`` differs in taking its outputs' length and the
caller's error word.

Only imported by the GPU backend: importing it imports CuPy.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from .. import kernels
from . import _crc32c, _decode_tables

THREADS = 256
_NULL = np.uint64(0)  # a null pointer argument (pointers are passed as 8-byte values)


class _Compiled:
    def __init__(self) -> None:
        self._functions: dict[str, object] = {}

    def _fn(self, name: str, *dtypes, file: str = "csr_batch.cu"):
        expr = kernels.expression(name, *dtypes) if dtypes else name  # kernel names are unique across files
        fn = self._functions.get(expr)
        if fn is None:
            module = cp.RawModule(code=kernels.source(file), options=("-std=c++17",), name_expressions=[expr])
            fn = self._functions[expr] = module.get_function(expr)
        return fn

    @staticmethod
    def _launch(fn, n: int, args) -> None:
        if n > 0:
            fn(((n + THREADS - 1) // THREADS,), (THREADS,), args)


class CudaKernels(_Compiled):
    """Launchers for one archive's value and column dtypes; modules compiled lazily, cached by CuPy."""

    def __init__(self, value_dtype: str, col_dtype: str) -> None:
        super().__init__()
        self.tv, self.tc = np.dtype(value_dtype).name, np.dtype(col_dtype).name

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
        if n_out:  # a warp per row (see the kernel)
            self._launch(self._fn("scdl_gather", data.dtype, cols.dtype, file="gather.cu"), 32 * n_rows, args)
        return out_vals, out_cols

    def gather_chunks(self, chunks, row_chunk, src_start, row_ptr, dst_start, out_vals, out_cols, width, err, upload):
        """``scdl_gather_chunks``: rows of decoded ``chunks`` (``(values, columns)`` device arrays per slot,
        in the outputs' dtypes) copied to ``out_*[dst_start[r]...]``; the host arrays (int64) go up in one
        copy through ``upload`` (``DeviceContext.upload``). Nothing to copy: nothing launched."""
        n_rows, n = len(row_chunk), int(row_ptr[-1])
        if n == 0:
            return
        tables = [[v.data.ptr for v, _ in chunks], [c.data.ptr for _, c in chunks], [len(v) for v, _ in chunks],
                  row_chunk, src_start, row_ptr, dst_start]
        cuts = np.cumsum([0] + [len(t) for t in tables])
        dev = upload("gather_chunks", np.concatenate([np.asarray(t, np.int64) for t in tables]))
        parts = [dev[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        args = (*parts, np.int64(n_rows), np.int64(width), out_vals, out_cols, err)
        self._launch(self._fn("scdl_gather_chunks", out_vals.dtype, out_cols.dtype, file="gather.cu"), n, args)


class DecodeKernels(_Compiled):
    """Launchers of ``kernels/decode.cu`` over device arrays; their work tables (:mod:`._decode_tables`) go
    up through ``upload`` (``DeviceContext.upload``), one copy per launch."""

    def __init__(self, upload) -> None:
        super().__init__()
        self.upload = upload
        self._table = None

    def unshuffle(self, src, frame_src: np.ndarray, outs: list) -> None:
        """Frame ``f``'s shuffled bytes at ``src[frame_src[f]:]`` rebuilt into ``outs[f]`` (all of one
        unsigned dtype; uint8: a copy)."""
        item_ptr = _decode_tables.frames([len(o) for o in outs])
        if not outs or item_ptr[-1] == 0:
            return
        n = len(outs)
        dev = self.upload("unshuffle", np.concatenate([frame_src, [o.data.ptr for o in outs], item_ptr]).astype(np.int64))
        fn = self._fn("scdl_unshuffle", outs[0].dtype, file="decode.cu")
        self._launch(fn, int(item_ptr[-1]), (src, dev[:n], dev[n : 2 * n], dev[2 * n :], np.int64(n)))

    def delta(self, frames: list) -> None:
        """Each of ``frames`` (device arrays of one unsigned dtype) replaced by its wrapping running sum."""
        item_ptr = _decode_tables.frames([len(f) for f in frames])
        seg_ptr = _decode_tables.segments([len(f) for f in frames])
        n, n_seg = len(frames), int(seg_ptr[-1])
        if n_seg == 0:
            return
        dev = self.upload("delta", np.concatenate([[f.data.ptr for f in frames], item_ptr, seg_ptr]).astype(np.int64))
        ptrs, items, segs = dev[:n], dev[n : 2 * n + 1], dev[2 * n + 1 :]
        sums = cp.empty(n_seg, frames[0].dtype)
        seg, t = np.int64(_decode_tables.SEGMENT), frames[0].dtype
        self._launch(self._fn("scdl_delta_sums", t, file="decode.cu"), n_seg, (ptrs, items, segs, np.int64(n), seg, sums))
        self._launch(self._fn("scdl_delta_scan", t, file="decode.cu"), n, (segs, np.int64(n), sums))
        self._launch(self._fn("scdl_delta_apply", t, file="decode.cu"), n_seg, (ptrs, items, segs, np.int64(n), seg, sums))

    def crc32c(self, arrays: list) -> np.ndarray:
        """The CRC-32C (uint32) of each device array's bytes; reads the blocks' registers back (a sync)."""
        nbytes = np.array([a.nbytes for a in arrays], np.int64)
        ptr, length, start = _decode_tables.crc_blocks([a.data.ptr for a in arrays], nbytes)
        n = len(ptr)
        if n == 0:
            return _crc32c.chain(np.zeros(0, np.uint32), nbytes)
        if self._table is None:
            self._table = self.upload("crc_table", _crc32c.TABLE)
        dev = self.upload("crc_blocks", np.concatenate([ptr, length]))
        init = self.upload("crc_init", start)
        regs = cp.empty(n, cp.uint32)
        self._launch(self._fn("scdl_crc32c_blocks", file="decode.cu"), n,
                            (dev[:n], dev[n:], init, self._table, np.int64(n), regs))
        return _crc32c.chain(regs.get(), nbytes)  # synchronize!
