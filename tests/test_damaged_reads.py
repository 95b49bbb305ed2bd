"""Damaged archives through every read path: an ``ArchiveError`` naming the file, never a crash or garbage.

The archives open fine (sizes and the ends of ``row_ptr`` are intact); one row's pointers or one
column is wrong. Each damage is read through every path in a child process, so a segfault fails
the test instead of killing the run; the child reports, per path, the exception it got.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from scdl_gpu.archive._reader import open_arrays
from tests.backend.archives import random_matrix, write_archive

N_ROWS, N_COLS, ROW = 40, 50, 17

CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np, torch
    from scdl_gpu import SingleCellLoader, SingleCellMemMapDataset, collate_sparse_matrix_batch
    from scdl_gpu.backend import BatchOptions, get_backend
    path, row = sys.argv[1], int(sys.argv[2])

    def rows_0_to_k():
        return np.arange(row + 2)

    paths = {
        "get_row": lambda ds: ds.get_row(row),
        "get_row_padded": lambda ds: ds.get_row_padded(row),
        "getitem": lambda ds: ds[row],
        "get_row_column": lambda ds: ds.get_row_column(row, 0),
        "collate": lambda ds: [b for b in torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_sparse_matrix_batch)],
        "backend": lambda ds: get_backend(path, device="cpu").batch(rows_0_to_k()),
        "backend_transforms": lambda ds: get_backend(
            path, device="cpu", options=BatchOptions(target_sum=1e4, log1p=True)).batch(rows_0_to_k()),
        "loader_csr": lambda ds: [b for b in SingleCellLoader(path, batch_size=8, shuffle="random", device="cpu")],
        "loader_dense": lambda ds: [b for b in SingleCellLoader(path, batch_size=8, output="dense", device="cpu")],
        "loader_block_fetch": lambda ds: [b for b in SingleCellLoader(
            path, batch_size=8, shuffle="block", block_size=2, fetch_factor=3, device="cpu")],
    }
    ds = SingleCellMemMapDataset(path)
    out = {}
    for name, read in paths.items():
        try:
            read(ds)
            out[name] = None
        except Exception as e:
            out[name] = [type(e).__name__, str(e)]
    print(json.dumps(out))
    """
)


def _poke(path, name: str, index: int, value: int) -> None:
    dtype = np.dtype(open_arrays(path).dtypes[name])
    with open(path / name, "r+b") as f:
        f.seek(index * dtype.itemsize)
        f.write(np.array([value], dtype).tobytes())


def _damage(path, kind: str) -> str:
    """Damage ``ROW``'s pointers or one of its columns; return the file that must be named."""
    arrays = open_arrays(path)
    row_ptr = np.asarray(arrays.row_ptr).astype(np.int64)
    nnz = int(row_ptr[-1])
    if kind == "row_ptr_not_monotone":  # ROW ends before it starts
        _poke(path, "row_ptr.npy", ROW + 1, int(row_ptr[ROW]) - 1)
        return "row_ptr.npy"
    if kind == "row_ptr_beyond_values":  # ROW starts past the last value (the ends stay right)
        _poke(path, "row_ptr.npy", ROW, nnz + 10_000)
        return "row_ptr.npy"
    if kind == "column_not_below_width":  # one column equal to the gene count
        _poke(path, "col_ptr.npy", int(row_ptr[ROW]) + 1, N_COLS)
        return "col_ptr.npy"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["row_ptr_not_monotone", "row_ptr_beyond_values", "column_not_below_width"])
def test_every_read_path_raises_archive_error(tmp_path, kind):
    m = random_matrix(N_ROWS, N_COLS, "float32", seed=5, density=0.3)
    assert m.indptr[ROW + 1] - m.indptr[ROW] >= 2  # the damaged row holds values
    path = write_archive(tmp_path / "a", m, data_dtype="uint16" if kind == "column_not_below_width" else "float32")
    culprit = _damage(path, kind)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(ROW)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the reader crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, got in results.items():
        assert got is not None, f"{name} read the damaged archive without an error"
        kind_, message = got
        assert kind_ == "ArchiveError", f"{name}: {kind_}: {message}"
        assert culprit in message and str(path) in message, f"{name}: {message}"


def test_intact_archive_reads_through_every_path(tmp_path):
    """The same child on an undamaged archive: every path succeeds (the damage test is not vacuous)."""
    path = write_archive(tmp_path / "a", random_matrix(N_ROWS, N_COLS, "float32", seed=5, density=0.3))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(ROW)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 10 and all(v is None for v in results.values()), results
