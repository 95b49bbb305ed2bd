"""SingleCellLoader on a GPU (marker ``gpu``): every residency with the prefetch thread gives the
CPU loader's rows, dense and sorted-CSR; loaders on two devices stay on theirs; a consumer on a
side stream reads finished batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scdl_gpu import SingleCellLoader, convert_h5ad
from scdl_gpu.backend import get_backend
from tests.conftest import BUNDLED

pytestmark = pytest.mark.gpu

REAL = BUNDLED / "cxg_small_perturbations.h5ad"  # 500 x 2000, every row stored unsorted (kept so here)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return convert_h5ad(REAL, tmp_path_factory.mktemp("gpu") / "a", use_X_not_raw=True, keep_column_order=True)


def _cpu_rows(archive, rows) -> np.ndarray:
    return get_backend(archive, device="cpu").batch(rows).to_sparse_csr().to_dense().numpy()


@pytest.mark.parametrize("residency", ["device", "pinned", "stream"])
@pytest.mark.parametrize("output", ["csr", "dense"])
def test_gpu_loader_equals_cpu_rows(archive, residency, output):
    loader = SingleCellLoader(archive, batch_size=64, shuffle="random", device="cuda", residency=residency,
                              output=output, prefetch=2, seed=3)
    assert loader.prefetch == 2 and loader.residency == residency
    seen = []
    for b in loader:
        x, rows = b["X"], b["rows"].cpu().numpy()
        assert x.device.type == "cuda" and b["rows"].device == x.device
        if output == "csr":
            crow, col = x.crow_indices().cpu().numpy(), x.col_indices().cpu().numpy()
            for r in range(len(rows)):  # sorted columns inside every row, as torch's invariants require
                assert np.all(np.diff(col[crow[r] : crow[r + 1]]) > 0)
            x = x.to_dense()
        np.testing.assert_array_equal(x.cpu().numpy(), _cpu_rows(archive, rows))
        seen.append(rows)
    assert sorted(np.concatenate(seen).tolist()) == list(range(500))


def test_stream_residency_gives_the_cpu_loaders_order(archive):
    gpu = SingleCellLoader(archive, batch_size=50, shuffle="random", device="cuda", residency="stream", seed=1)
    cpu = SingleCellLoader(archive, batch_size=50, shuffle="random", device="cpu", seed=1)
    for g, c in zip(gpu, cpu):
        np.testing.assert_array_equal(g["rows"].cpu().numpy(), c["rows"].numpy())
        np.testing.assert_array_equal(g["X"].to_dense().cpu().numpy(), c["X"].to_dense().numpy())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_loaders_on_two_devices(archive):
    loaders = [SingleCellLoader(archive, batch_size=64, device=f"cuda:{i}", prefetch=2) for i in (0, 1)]
    for i, loader in enumerate(loaders):
        assert loader.backend.device_index == i
        for b in loader:
            assert b["X"].device == torch.device("cuda", i)
            np.testing.assert_array_equal(b["X"].to_dense().cpu().numpy(), _cpu_rows(archive, b["rows"].cpu().numpy()))


def test_a_consumer_on_a_side_stream_reads_finished_batches(archive):
    loader = SingleCellLoader(archive, batch_size=64, shuffle="random", device="cuda", prefetch=2)
    side = torch.cuda.Stream()
    sums, rows = [], []
    with torch.cuda.stream(side):
        for b in loader:
            torch.cuda._sleep(2_000_000)  # keep the side stream busy while the next batches are built
            sums.append(b["X"].to_dense().sum(dim=1))
            rows.append(b["rows"])
    side.synchronize()
    got = torch.cat(sums).cpu().numpy()
    want = _cpu_rows(archive, torch.cat(rows).cpu().numpy()).sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
