"""A damaged member read through every atlas read path: an ``ArchiveError`` naming the member's
file, never a crash or garbage. Each read runs in a child process (a segfault fails the test
instead of killing the run), as tests/test_damaged_reads.py does for one archive."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scdl_gpu.archive._reader import open_arrays
from scdl_gpu.atlas import create_atlas
from tests.atlas.members import ALL_GENES, make_member

ROW = 6  # of the damaged member

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from scdl_gpu import AtlasDataset, SingleCellLoader, collate_sparse_matrix_batch
    from scdl_gpu.backend import BatchOptions, get_backend
    path, row = sys.argv[1], int(sys.argv[2])
    every = lambda: np.arange(60)
    paths = {
        "backend": lambda: get_backend(path, device="cpu").batch(every()),
        "backend_transforms": lambda: get_backend(path, device="cpu", options=BatchOptions(target_sum=1e4, log1p=True)).batch(every()),
        "loader_csr": lambda: [b for b in SingleCellLoader(path, batch_size=8, shuffle="random", device="cpu")],
        "loader_dense": lambda: [b for b in SingleCellLoader(path, batch_size=8, output="dense", device="cpu")],
        "loader_block_fetch": lambda: [b for b in SingleCellLoader(path, batch_size=8, block_size=2, fetch_factor=3, device="cpu")],
        "dataset_get_row": lambda: AtlasDataset(path).get_row(row),
        "dataset_padded": lambda: AtlasDataset(path).get_row_padded(row),
        "dataset_collate": lambda: [b for b in torch.utils.data.DataLoader(AtlasDataset(path), batch_size=8, collate_fn=collate_sparse_matrix_batch)],
    }
    out = {}
    for name, read in paths.items():
        try:
            read()
            out[name] = None
        except Exception as e:
            out[name] = [type(e).__name__, str(e)]
    print(json.dumps(out))
    """
)


def _poke(path: Path, name: str, index: int, value: int) -> None:
    dtype = np.dtype(open_arrays(path).dtypes[name])
    with open(path / name, "r+b") as f:
        f.seek(index * dtype.itemsize)
        f.write(np.array([value], dtype).tobytes())


def _atlas(tmp: Path, chunked: bool = True) -> tuple[Path, Path, int]:
    """An atlas whose second member (rows 20..39, permuted genes) gets damaged; returns the atlas,
    that member, and the global id of its row ROW. Without a ``chunked`` member every row is planned
    by the backend's one compiled pass over all members."""
    rng = np.random.default_rng(4)
    m0 = make_member(tmp, 0, 20, ALL_GENES[:30])[0]
    m1 = make_member(tmp, 1, 20, list(rng.permutation(ALL_GENES[5:25])), data_dtype="uint16")[0]
    m2 = make_member(tmp, 2, 20, ALL_GENES[10:], **(dict(chunk_size=7) if chunked else {}))[0]
    create_atlas(tmp / "atlas", [m0, m1, m2])
    return tmp / "atlas", m1, 20 + ROW


def _damage(member: Path, kind: str) -> str:
    row_ptr = np.asarray(open_arrays(member).row_ptr).astype(np.int64)
    assert row_ptr[ROW + 1] - row_ptr[ROW] >= 2
    if kind == "row_ptr_not_monotone":
        _poke(member, "row_ptr.npy", ROW + 1, int(row_ptr[ROW]) - 1)
        return "row_ptr.npy"
    if kind == "row_ptr_beyond_values":
        _poke(member, "row_ptr.npy", ROW, int(row_ptr[-1]) + 1)  # small archives store uint8 pointers
        return "row_ptr.npy"
    if kind == "column_not_below_width":  # the member's gene count: inside the vocabulary, outside the member
        _poke(member, "col_ptr.npy", int(row_ptr[ROW]) + 1, 20)
        return "col_ptr.npy"
    raise AssertionError(kind)


def _run(atlas: Path, row: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(atlas), str(row)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"the reader crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("chunked", [True, False], ids=["with_chunked", "all_flat"])
@pytest.mark.parametrize("kind", ["row_ptr_not_monotone", "row_ptr_beyond_values", "column_not_below_width"])
def test_every_atlas_read_path_raises_archive_error(tmp_path, kind, chunked):
    atlas, member, row = _atlas(tmp_path, chunked)
    culprit = _damage(member, kind)
    for name, got in _run(atlas, row).items():
        assert got is not None, f"{name} read the damaged member without an error"
        kind_, message = got
        assert kind_ == "ArchiveError", f"{name}: {kind_}: {message}"
        assert f"{member}/{culprit}" in message, f"{name}: {message}"


def test_intact_atlas_reads_through_every_path(tmp_path):
    atlas, _, row = _atlas(tmp_path)
    results = _run(atlas, row)
    assert len(results) == 8 and all(v is None for v in results.values()), results
