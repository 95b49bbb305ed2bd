"""Staged rows → output batch, the same steps on every device.

``ops`` provides the four kernels (``keep_flags``, ``row_sums``, ``emit``, ``densify``): the NumPy
references on the CPU, the CUDA kernels of ``kernels/csr_batch.cu`` on the GPU. ``xp`` is numpy
or cupy, for the glue between them (a prefix sum, a gather of row pointers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._batch import Batch, BatchOptions


@dataclass
class Assembled:
    """Device arrays of one batch: CSR (``crow``, ``col``, ``values``) or ``dense``."""

    crow: object = None
    col: object = None
    values: object = None
    dense: object = None


def kernel_dtype(value_dtype: str) -> str:
    """Kernels write float32 or float64; float16 is cast from float32 afterwards."""
    return "float64" if value_dtype == "float64" else "float32"


def assemble(ops, xp, vals, cols, in_ptr, opts: BatchOptions, width: int, remap=None, nnz: int | None = None) -> Assembled:
    """Apply the gene remap, the per-row scaling and ``log1p``; emit CSR or a dense matrix.

    ``vals``/``cols`` are the staged entries (archive dtypes), ``in_ptr`` (int64, B+1) their rows;
    ``remap`` is ``opts.gene_remap`` already on the device. ``nnz`` (``in_ptr[-1]``, when the
    caller knows it) spares a device read.
    """
    n_rows = len(in_ptr) - 1
    n = nnz if nnz is not None else (int(in_ptr[-1]) if n_rows >= 0 else 0)
    pos = None
    out_ptr = in_ptr
    if remap is not None:
        flags = ops.keep_flags(cols, remap)
        pos_full = xp.zeros(n + 1, dtype=xp.int64)
        xp.cumsum(flags, dtype=xp.int64, out=pos_full[1:])
        pos = pos_full[:-1]
        out_ptr = pos_full[in_ptr]
    scale = None
    if opts.target_sum is not None:
        sums = ops.row_sums(vals, cols, in_ptr, remap)
        with np.errstate(over="ignore"):  # a subnormal sum scales to inf, on both devices
            scale = xp.where(sums > 0, opts.target_sum / xp.where(sums > 0, sums, 1.0), 1.0)
    out_dtype = kernel_dtype(opts.value_dtype)
    if opts.dense:
        dense = ops.densify(vals, cols, in_ptr, remap, scale, opts.log1p, width, out_dtype)
        return Assembled(dense=dense.astype(opts.value_dtype, copy=False))
    n_out = n if remap is None else int(out_ptr[-1])  # synchronize! (only with a remap: sizes the output)
    index_dtype = opts.index_dtype_for(width, n_out)
    values, col = ops.emit(vals, cols, in_ptr, remap, pos, scale, opts.log1p, out_dtype, index_dtype, n_out=n_out)
    return Assembled(crow=out_ptr.astype(index_dtype), col=col, values=values.astype(opts.value_dtype, copy=False))


def to_batch(plan, shape: tuple[int, int], out: Assembled, to_torch, sorted: bool = False) -> Batch:
    """A :class:`Batch` of ``plan``'s rows from assembled device arrays, each handed to torch by
    ``to_torch`` (``torch.from_dlpack``: no copy); ``sorted``: the staged rows were sorted."""
    if out.dense is not None:
        return Batch(plan.rows, shape, dense=to_torch(out.dense))
    return Batch(plan.rows, shape, crow=to_torch(out.crow), col=to_torch(out.col), values=to_torch(out.values),
                 sorted=sorted)


def split(plan, cuts: np.ndarray, out: Assembled, width: int, to_torch, upload, index_dtype: str,
          sorted: bool = False) -> list[Batch]:
    """The batches that ``cuts`` (row offsets, 0 ... ``plan.n_rows``) delimit in one group assembled
    without a gene remap, each a view of the group's arrays: dense rows, or CSR values and columns
    sliced at the rows' entry offsets (``plan.in_ptr``, known on the host) with each batch's own row
    pointers, computed on the host and sent in one ``upload``. ``to_torch`` hands an array to torch."""
    spans = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))
    if out.dense is not None:
        dense = to_torch(out.dense)
        return [Batch(plan.rows[a:b], (b - a, width), dense=dense[a:b]) for a, b in spans]
    ptr = plan.in_ptr
    crows = np.concatenate([ptr[a : b + 1] - ptr[a] for a, b in spans]).astype(index_dtype)
    crow, col, values = to_torch(upload(crows)), to_torch(out.col), to_torch(out.values)
    return [Batch(plan.rows[a:b], (b - a, width), crow=crow[a + j : b + j + 1], col=col[ptr[a] : ptr[b]],
                  values=values[ptr[a] : ptr[b]], sorted=sorted) for j, (a, b) in enumerate(spans)]
