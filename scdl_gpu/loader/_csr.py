"""Row selection and column sorting of assembled batches, in compiled code (scipy on the CPU)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..backend import Batch


def to_scipy(batch: Batch) -> sp.csr_matrix | None:
    """The batch's CSR arrays as a scipy matrix sharing their memory (None if scipy cannot hold them:
    float16 values, or a batch on the GPU)."""
    if batch.values.device.type != "cpu":
        return None
    values = batch.values.numpy()
    if values.dtype == np.float16:  # scipy has no float16
        return None
    m = sp.csr_matrix((values, batch.col.numpy(), batch.crow.numpy()), shape=batch.shape, copy=False)
    return m


def sort_rows(batch: Batch) -> Batch:
    """Sort the column indices inside every row (in place) unless they already are.

    torch's CSR invariants require sorted columns; archives keep rows as their source stored them
    (every row of a CELLxGENE file can be unsorted). The check is one C pass over the batch.
    """
    m = to_scipy(batch) if batch.values.device.type == "cpu" else None
    if m is not None:
        if not m.has_sorted_indices:
            m.sort_indices()  # in place: the torch tensors share these arrays
        batch.sorted = True
        return batch
    # Elsewhere (GPU, float16): one torch sort by (row, column), on the batch's device.
    crow, col = batch.crow.long(), batch.col.long()
    rows = torch.repeat_interleave(torch.arange(len(crow) - 1, device=col.device), crow.diff())
    if col.numel() < 2:
        return batch
    ordered = (col[1:] > col[:-1]) | (rows[1:] != rows[:-1])
    if bool(ordered.all()):
        return batch
    order = torch.argsort(rows * max(batch.shape[1], 1) + col, stable=True)
    batch.col.copy_(batch.col[order])
    batch.values.copy_(batch.values[order])
    return batch


def take_rows(m: sp.csr_matrix, local: np.ndarray, rows: np.ndarray, index_dtype) -> Batch:
    """Rows ``local`` of an in-memory fetch, as a new batch (scipy's compiled row gather)."""
    sub = m[local]
    dt = index_dtype
    return Batch(
        rows,
        sub.shape,
        crow=torch.from_numpy(sub.indptr.astype(dt, copy=False)),
        col=torch.from_numpy(sub.indices.astype(dt, copy=False)),
        values=torch.from_numpy(sub.data),
        sorted=True,  # rows of a sorted matrix
    )
