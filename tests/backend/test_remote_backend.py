"""A remote archive on the GPU backend (the fake GPU of ``fake_gpu.py``): rows read by range on the
host, then every residency gives the CPU's batches; the loader opens, shares and closes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scdl_gpu import SingleCellLoader
from scdl_gpu.archive import RemoteArchive
from scdl_gpu.backend import BatchOptions, get_backend
from tests.backend import fake_gpu
from tests.backend.archives import random_matrix, write_archive


@pytest.fixture
def world(monkeypatch):
    return fake_gpu.install(monkeypatch)


@pytest.fixture
def archive(tmp_path):
    return write_archive(tmp_path / "a.scdl", random_matrix(57, 90, "uint16", seed=11))


@pytest.mark.parametrize("residency", ["device", "pinned", "stream"])
@pytest.mark.parametrize("opts", [BatchOptions(), BatchOptions(dense=True, target_sum=100.0)], ids=["plain", "dense"])
def test_every_residency_matches_the_cpu(world, archive, residency, opts):
    gpu = get_backend(f"file://{archive}", device="cuda", options=opts, residency=residency)
    assert type(gpu).__name__ == "GPUBackend" and gpu.reader == "host" and gpu.remote is not None
    cpu = get_backend(archive, device="cpu", options=opts)
    rng = np.random.default_rng(0)
    for rows in (rng.integers(0, 57, 25), np.arange(3, 50), np.array([], np.int64), np.array([7, 7])):
        g, c = gpu.batch(rows), cpu.batch(rows)
        for name in ("crow", "col", "values", "dense"):
            a, b = getattr(g, name), getattr(c, name)
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    mirror = gpu.files
    gpu.close()
    assert not mirror.exists()  # the backend opened it, so it closed it


def test_kvikio_is_refused_for_a_remote_archive(world, archive, monkeypatch):
    monkeypatch.setattr("scdl_gpu.backend._gpu.kvikio_available", lambda: True)  # as where it is installed
    with pytest.raises(ValueError, match="reads local files"):
        get_backend(f"file://{archive}", device="cuda", reader="kvikio")
    assert get_backend(f"file://{archive}", device="cuda", residency="stream").reader == "host"  # "auto" picks it


def test_the_loader_holds_a_resident_share_of_a_remote_archive(world, archive):
    url = f"file://{archive}"
    gpu = SingleCellLoader(url, batch_size=8, shuffle="block", device="cuda", residency="device", prefetch=0, seed=2)
    cpu = SingleCellLoader(RemoteArchive(url), batch_size=8, shuffle="block", device="cpu", seed=2)
    assert gpu.residency == "device" and gpu.partition == "resident" and str(gpu.path) == url
    rows = np.concatenate([b["rows"].numpy() for b in gpu])
    assert sorted(rows.tolist()) == list(range(57))
    want = cpu.backend.batch(rows[:20])
    assert torch.equal(gpu.backend.batch(rows[:20]).values, want.values)
    mirror = gpu.backend.files
    gpu.close()
    assert not mirror.exists()
    with pytest.raises(ValueError, match="storage_options are for archives at a URL"):
        SingleCellLoader(archive, device="cpu", storage_options={"anon": True})
