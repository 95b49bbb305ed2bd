"""An atlas on a GPU (the host route: batches assembled by AtlasBackend, copied through pinned
staging on the backend's stream), run on the fake GPU of ``fake_gpu.py``."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from scdl_gpu import SingleCellLoader
from scdl_gpu.atlas import create_atlas
from scdl_gpu.backend import BatchOptions, get_backend
from tests.atlas.members import make_members
from tests.backend import fake_gpu


@pytest.fixture
def world(monkeypatch):
    return fake_gpu.install(monkeypatch)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("atlas_gpu")
    return create_atlas(tmp / "atlas", [p for p, _ in make_members(tmp)]).root


OPTIONS = [BatchOptions(), BatchOptions(dense=True, target_sum=100.0, log1p=True), BatchOptions(value_dtype="float16"),
           BatchOptions(index_dtype="int64", value_dtype="float64")]


@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "dense-transforms", "half", "wide"])
def test_batches_equal_the_host_backends_and_copy_on_the_backends_stream(world, atlas, opts):
    gpu = get_backend(atlas, device="cuda:1", options=opts)
    cpu = get_backend(atlas, device="cpu", options=opts)
    assert type(gpu).__name__ == "AtlasGPUBackend" and gpu.device == "cuda" and gpu.residency == "stream"
    assert (gpu.n_rows, gpu.width, gpu.groups[0]) == (cpu.n_rows, cpu.width, cpu.groups[0])
    rng = np.random.default_rng(1)
    for rows in (rng.integers(0, 70, 40), np.arange(20, 55), np.array([], np.int64), np.array([69, 69])):
        world.log.clear()
        g, c = gpu.batch(rows), cpu.batch(rows)
        assert np.array_equal(g.rows, c.rows) and g.shape == c.shape and g.sorted == c.sorted
        for name in ("crow", "col", "values", "dense"):
            a, b = getattr(g, name), getattr(c, name)
            assert (a is None) == (b is None)
            if a is not None:
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
        copies = [e for e in world.log if e[0] == "h2d"]
        assert len(copies) == (1 if opts.dense else 3)
        assert {(e[1], e[2]) for e in copies} == {(1, gpu.ctx.torch_stream.cuda_stream)}


def test_groups_of_batches_come_to_the_device_too(world, atlas):
    """``batches``/``batches_ahead`` are the GPU backend's, not the host's it delegates the rest to."""
    gpu = get_backend(atlas, device="cuda:1")
    assert gpu.tensor_device == torch.device("cuda", 1)
    groups = [np.arange(4), np.array([9, 2])]
    for got in (gpu.batches(groups), gpu.batches_ahead(groups)()):
        world.log.clear()
        assert [b.rows.tolist() for b in got] == [g.tolist() for g in groups]
    world.log.clear()
    gpu.batches(groups)
    assert len([e for e in world.log if e[0] == "h2d"]) == 2 * 3  # each batch copied, on the backend's device
    assert {e[1] for e in world.log if e[0] == "h2d"} == {1}


def test_the_loader_over_an_atlas_on_a_gpu(world, atlas):
    loader = SingleCellLoader(atlas, batch_size=8, shuffle="random", device="cuda", seed=3)
    assert loader.prefetch == 2 and loader.residency == "stream"  # a GPU's defaults
    host = SingleCellLoader(atlas, batch_size=8, shuffle="random", device="cpu", seed=3)
    consumer = torch.cuda.Stream()
    with torch.cuda.stream(consumer):
        world.log.clear()
        got = list(loader)
    want = list(host)
    assert len(got) == len(want) == 9
    for a, b in zip(got, want):
        assert torch.equal(a["rows"], b["rows"]) and torch.equal(a["X"].to_dense(), b["X"].to_dense())
    waits = [e for e in world.log if e[0] == "wait_event" and e[1] == consumer.cuda_stream]
    assert len(waits) == len(got)  # the consumer's stream waited for every batch
    assert threading.current_thread() is threading.main_thread() and world.current() == (0, 0)  # restored


def test_refusals_and_close(world, atlas):
    with pytest.raises(ValueError, match="residency"):
        get_backend(atlas, device="cuda", residency="pinned")
    with pytest.raises(ValueError, match="residency"):
        get_backend(atlas, device="cuda", resident_rows=np.arange(3))
    gpu = get_backend(atlas, device="cuda")
    assert get_backend(atlas, device="auto").device == "cpu"  # "auto" keeps an atlas on the host
    closed = []
    gpu.host.close = lambda: closed.append(True)
    gpu.close()
    assert closed == [True]
