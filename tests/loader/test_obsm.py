"""``SingleCellLoader(obsm_keys=...)``: every batch's ``obsm[key]`` is ``adata.obsm[key][rows]``,
for every order, rank split and fetch factor, on the batch's device."""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pytest
import torch

from scdl_gpu import SingleCellLoader, convert_h5ad
from scdl_gpu.errors import ArchiveError
from tests.conftest import BUNDLED

SRC = BUNDLED / "cxg_example_valid.h5ad"  # 320 cells, obsm X_pca (320, 50) and X_umap (320, 2)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return convert_h5ad(SRC, tmp_path_factory.mktemp("obsm") / "a.scdl", use_X_not_raw=True, obsm_keys=["X_pca", "X_umap"])


@pytest.fixture(scope="module")
def want():
    return ad.read_h5ad(SRC).obsm


def _check(loader, want) -> list[np.ndarray]:
    seen = []
    for b in loader:
        rows = b["rows"].cpu().numpy()
        assert set(b["obsm"]) == {"X_pca", "X_umap"}
        for key in ("X_pca", "X_umap"):
            t = b["obsm"][key]
            assert t.device == b["rows"].device and t.shape == (len(rows), want[key].shape[1])
            np.testing.assert_array_equal(t.cpu().numpy(), want[key][rows])
        seen.append(rows)
    return seen


@pytest.mark.parametrize("order,fetch_factor", [("sequential", 1), ("random", 1), ("block", 1), ("block", 3)])
@pytest.mark.parametrize("world_size,drop_last", [(1, False), (2, True)])
def test_batches_carry_their_rows_obsm(archive, want, order, fetch_factor, world_size, drop_last):
    all_rows = []
    for rank in range(world_size):
        loader = SingleCellLoader(archive, batch_size=48, shuffle=order, block_size=8, fetch_factor=fetch_factor,
                                  device="cpu", obsm_keys=["X_pca", "X_umap"], rank=rank, world_size=world_size,
                                  drop_last=drop_last, seed=4)
        all_rows += _check(loader, want)
    covered = np.unique(np.concatenate(all_rows))
    assert len(covered) == (320 if not drop_last else len(np.concatenate(all_rows)))


def test_no_obsm_unless_asked(archive):
    b = next(iter(SingleCellLoader(archive, batch_size=16, device="cpu")))
    assert "obsm" not in b


def test_unknown_key_and_damaged_file(archive, tmp_path):
    with pytest.raises(KeyError, match="X_tsne"):
        SingleCellLoader(archive, device="cpu", obsm_keys=["X_tsne"])
    copy = shutil.copytree(archive, tmp_path / "copy.scdl")
    f = copy / "obsm" / "X_umap.npy"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(ArchiveError, match="X_umap.npy"):
        SingleCellLoader(copy, device="cpu", obsm_keys=["X_umap"])


@pytest.mark.gpu
@pytest.mark.parametrize("residency", ["device", "stream"])
def test_gpu_batches_carry_obsm_on_the_device(archive, want, residency):
    loader = SingleCellLoader(archive, batch_size=64, shuffle="random", device="cuda", residency=residency,
                              obsm_keys=["X_pca", "X_umap"], prefetch=2)
    seen = _check(loader, want)
    assert sorted(np.concatenate(seen).tolist()) == list(range(320))
    b = next(iter(loader))
    assert b["obsm"]["X_umap"].device.type == "cuda" and b["obsm"]["X_umap"].dtype == torch.float32
