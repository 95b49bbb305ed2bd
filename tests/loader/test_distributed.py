"""A real two-process ``torch.distributed`` run (gloo, CPU): the loader takes rank and world size
from the process group, ranks get disjoint rows covering the archive, and equal batch counts
(every batch does an all-reduce, so an uneven count would hang and time out)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scdl_gpu import convert_h5ad
from tests.conftest import make_adata, random_csr

WORKER = r"""
import sys, numpy as np, torch, torch.distributed as dist
from scdl_gpu import SingleCellLoader
path, init, out, rank, order, drop_last = sys.argv[1:7]
dist.init_process_group("gloo", init_method=f"file://{init}", rank=int(rank), world_size=2)
loader = SingleCellLoader(path, batch_size=8, shuffle=order, drop_last=drop_last == "1", block_size=4, device="cpu")
assert (loader.rank, loader.world_size) == (int(rank), 2)
rows = []
for epoch in range(2):
    loader.set_epoch(epoch)
    for b in loader:
        rows.append(b["rows"].numpy())
        t = torch.ones(1)
        dist.all_reduce(t)  # would hang if the ranks' batch counts differed
        assert t.item() == 2
    rows.append(np.array([-1]))  # epoch separator
np.save(out, np.concatenate(rows))
dist.barrier()
dist.destroy_process_group()
"""


def _run(tmp_path: Path, path: Path, order: str, drop_last: bool) -> list[list[np.ndarray]]:
    """Both ranks' rows, per epoch (each epoch's rows end with the separator -1)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    repo = str(Path(__file__).resolve().parents[2])
    procs = [
        subprocess.Popen([sys.executable, str(script), str(path), str(tmp_path / "init"), str(tmp_path / f"r{r}.npy"),
                          str(r), order, str(int(drop_last))], cwd=repo, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    for p in procs:
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed run hung (uneven batch counts?)")
        assert p.returncode == 0, err[-3000:]
    per_rank = [np.load(tmp_path / f"r{r}.npy") for r in range(2)]
    return [[e for e in np.split(a, np.flatnonzero(a == -1) + 1) if e.size] for a in per_rank]


@pytest.mark.parametrize("order", ["sequential", "random", "block"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_two_process_gloo_run(tmp_path, order, drop_last):
    n = 61
    make_adata(random_csr(n, 12, seed=4)).write_h5ad(tmp_path / "x.h5ad")
    path = convert_h5ad(tmp_path / "x.h5ad", tmp_path / "a", use_X_not_raw=True)
    epochs = _run(tmp_path, path, order, drop_last)
    for e in range(2):
        r0, r1 = (ep[e][:-1] for ep in epochs)  # drop the separator
        assert len(r0) == len(r1)
        if drop_last:
            assert not set(r0.tolist()) & set(r1.tolist())
            assert len(r0) + len(r1) == (n // 2 // 8) * 8 * 2
        else:
            assert set(r0.tolist()) | set(r1.tolist()) == set(range(n))
            assert len(r0) + len(r1) == n + 1  # one row of padding makes the ranks equal
    if order != "sequential":
        assert not np.array_equal(epochs[0][0], epochs[0][1])  # set_epoch changes the order


@pytest.mark.parametrize("order", ["random", "block"])
def test_two_process_gloo_run_over_an_atlas(tmp_path, order):
    """Ranks over an atlas of three members with different genes: disjoint global rows covering
    every member, equal batch counts; block order's blocks never straddle two members."""
    from scdl_gpu.atlas import create_atlas
    from tests.atlas.members import make_members

    atlas = create_atlas(tmp_path / "atlas", [p for p, _ in make_members(tmp_path)])
    epochs = _run(tmp_path, atlas.root, order, drop_last=False)
    n = atlas.n_rows
    for e in range(2):
        r0, r1 = (ep[e][:-1] for ep in epochs)
        assert len(r0) == len(r1) and len(r0) + len(r1) == n + n % 2
        assert set(r0.tolist()) | set(r1.tolist()) == set(range(n))
        if order == "block":  # blocks of 4 rows counted from each member's first row, never across members
            rows = np.concatenate([r0, r1])
            run_starts = rows[np.flatnonzero(np.diff(rows, prepend=-2) != 1)]
            member = np.searchsorted(atlas.offsets, run_starts, side="right") - 1
            assert np.all((run_starts - atlas.offsets[member]) % 4 == 0)
