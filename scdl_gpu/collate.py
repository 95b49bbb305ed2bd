"""Collate functions for ``torch.utils.data.DataLoader`` over :class:`SingleCellMemMapDataset`."""

from __future__ import annotations

import numpy as np
import torch


def collate_sparse_matrix_batch(batch: list[torch.Tensor], num_cols: int | None = None) -> torch.Tensor:
    """Stack ``(2, nnz_i)`` row tensors into one ``(B, num_cols)`` sparse CSR tensor.

    ``num_cols`` defaults to the dataset's gene count, which ``SingleCellMemMapDataset.__getitem__``
    records on each row tensor; for plain tensors without it, the batch's largest column + 1
    (upstream's width). Values keep the items' dtype, except integer values (archives of counts,
    e.g. uint16), which become float32: torch's sparse kernels take no unsigned values and its
    sparse matmul no integers, and float32 holds every count below 2**24 exactly. ``crow`` is
    int64, columns int32.
    """
    if num_cols is None:
        widths = [getattr(t, "scdl_num_cols", None) for t in batch]
        if batch and all(w is not None for w in widths):
            num_cols = max(widths)
    # Index arithmetic in NumPy: torch's intra-op thread pool costs milliseconds per small op
    # on few-core machines, more than the work itself.
    rows = [t.numpy() for t in batch]
    crow = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([r.shape[1] for r in rows], out=crow[1:])
    if rows:
        cat = np.concatenate(rows, axis=1)
        values, cols = cat[0], cat[1].astype(np.int32)
        if values.dtype.kind in "iu":
            values = values.astype(np.float32)
    else:
        values, cols = np.empty(0, np.float32), np.empty(0, np.int32)
    if num_cols is None:
        num_cols = int(cols.max()) + 1 if cols.size else 0
    elif cols.size and int(cols.max()) >= num_cols:
        raise ValueError(f"column index {int(cols.max())} does not fit a batch of width {num_cols}")
    crow, cols, values = torch.from_numpy(crow), torch.from_numpy(cols), torch.from_numpy(np.ascontiguousarray(values))
    return torch.sparse_csr_tensor(crow, cols, values, size=(len(batch), num_cols), check_invariants=False)


def collate_neighbor_sparse_matrix_batch(batch: list[dict], num_cols: int | None = None) -> dict:
    """Collate ``get_row_with_neighbor`` dicts into current/next CSR batches (float32 values).

    Both batches are ``num_cols`` wide, by default the dataset's gene count, which
    ``get_row_with_neighbor`` records on each ``(values, columns)`` pair; for plain pairs, the
    batch's largest column + 1 (upstream's width), as :func:`collate_sparse_matrix_batch`.
    """

    def side(key: str) -> torch.Tensor:
        rows = []
        for item in batch:
            values, cols = item[key]
            row = torch.from_numpy(np.stack([np.asarray(values, np.float32), np.asarray(cols, np.float32)]))
            row.scdl_num_cols = getattr(item[key], "scdl_num_cols", None)
            rows.append(row)
        return collate_sparse_matrix_batch(rows, num_cols)

    return {
        "current_cells": side("current_cell"),
        "next_cells": side("next_cell"),
        "current_cell_indices": [item["current_cell_index"] for item in batch],
        "next_cell_indices": [item["next_cell_index"] for item in batch],
        "batch_size": len(batch),
    }
