"""The GPU backend's Python side run without a GPU (see ``fake_gpu.py``): residency, staging,
assembly, device and stream discipline, hand-off. The kernels themselves are checked by
``tests/kernels`` (shim and compilers) and, on a GPU machine, by ``test_gpu_backend.py``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from scdl_gpu import SingleCellLoader
from scdl_gpu.backend import BatchOptions, get_backend
from scdl_gpu.errors import ArchiveError
from tests.backend import fake_gpu
from tests.backend.archives import random_matrix, write_archive


@pytest.fixture
def world(monkeypatch):
    return fake_gpu.install(monkeypatch)


def _archive(tmp_path, dtype="uint16", n=40, seed=9):
    m = random_matrix(n, 90, dtype if dtype != "float16" else "float32", seed=seed)
    if dtype == "float16":
        m.data = m.data.astype(np.float16).astype(np.float32)
    elif dtype.startswith("uint"):
        m.data = (m.data % 1000).astype(dtype)  # sums meaningful, and within float16's range
    return write_archive(tmp_path / "a", m, data_dtype=dtype)


def _assert_same(g, c, rtol=0):
    for name in ("crow", "col", "values", "dense"):
        a, b = getattr(g, name), getattr(c, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, rtol=rtol, atol=0)


OPTIONS = [BatchOptions(), BatchOptions(value_dtype="float16"), BatchOptions(dense=True, target_sum=100.0, log1p=True),
           BatchOptions(index_dtype="int64", value_dtype="float64")]


@pytest.mark.parametrize("residency", ["device", "pinned", "stream"])
@pytest.mark.parametrize("dtype", ["uint16", "float16", "uint64", "float64"])
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "half", "dense-transforms", "wide"])
def test_every_residency_matches_the_cpu(world, tmp_path, residency, dtype, opts):
    path = _archive(tmp_path, dtype)
    gpu = get_backend(path, device="cuda", options=opts, residency=residency)
    assert type(gpu).__name__ == "GPUBackend" and gpu.residency == residency and gpu.reader == "host"
    cpu = get_backend(path, device="cpu", options=opts)
    rng = np.random.default_rng(0)
    for rows in (rng.integers(0, 40, 25), np.arange(3, 30), np.array([], np.int64), np.array([7, 7])):
        g, c = gpu.batch(rows), cpu.batch(rows)
        _assert_same(g, c, rtol=2.5e-7 if opts.log1p else 0)
        assert g.sorted == c.sorted
    gpu.close()


@pytest.mark.parametrize("residency", ["device", "stream"])
def test_gene_remap(world, tmp_path, residency):
    path = _archive(tmp_path)
    remap = np.full(90, -1, np.int64)
    remap[::2] = np.arange(45)[::-1]
    opts = BatchOptions(gene_remap=remap)
    g = get_backend(path, device="cuda", options=opts, residency=residency).batch(np.arange(40))
    c = get_backend(path, device="cpu", options=opts).batch(np.arange(40))
    assert g.shape == c.shape == (40, 45)
    _assert_same(g, c)


def test_resident_share_only(world, tmp_path):
    path = _archive(tmp_path)
    gpu = get_backend(path, device="cuda", residency="device", resident_rows=[3, 9, 9, 20])
    assert gpu.index.rows.tolist() == [3, 9, 20]
    _assert_same(gpu.batch([20, 3, 9, 9]), get_backend(path, device="cpu").batch([20, 3, 9, 9]))
    with pytest.raises(KeyError, match="row 4 is not resident"):
        gpu.batch([3, 4])
    with pytest.raises(IndexError):
        get_backend(path, device="cuda", residency="device", resident_rows=[40])


def test_auto_picks_device_then_pinned_then_stream(world, tmp_path, monkeypatch):
    from scdl_gpu.backend import _gpu

    path = _archive(tmp_path)
    assert get_backend(path, device="cuda").residency == "device"
    world.free_bytes = 10  # rows no longer fit in the GPU's free memory
    assert get_backend(path, device="cuda").residency == "pinned"
    monkeypatch.setattr(_gpu, "available_host_memory", lambda: 10)
    assert get_backend(path, device="cuda").residency == "stream"
    with pytest.raises(ValueError, match="residency"):
        get_backend(path, device="cuda", residency="hbm")
    with pytest.raises(ValueError, match="needs a GPU backend"):
        get_backend(path, device="cpu", residency="device")


def test_a_device_side_bounds_flag_raises(world, tmp_path):
    path = _archive(tmp_path)
    gpu = get_backend(path, device="cuda", residency="device")
    gpu._res_cols[int(gpu.index.ptr[5])] = 90  # device memory overwritten after the checked load
    gpu.batch([4, 6])  # rows that do not read it are fine
    with pytest.raises(ArchiveError, match="col_ptr.npy"):
        gpu.batch([4, 5])
    with pytest.raises(ArchiveError, match="col_ptr.npy"):  # a group with one bad row: no batch of it
        gpu.batches([[4], [6, 5], [7]])
    gpu._err[0] = 0
    n = gpu.index.nnz
    gpu.index.ptr[6:8] = n + 5, n + 8  # row 6 now points past the resident values
    with pytest.raises(ArchiveError, match="row_ptr.npy"):
        gpu.batch([6])


def test_every_launch_and_copy_runs_on_the_backends_device_and_stream(world, tmp_path):
    """Issue: the prefetch thread built every rank's batches on GPU 0, on the default stream."""
    path = _archive(tmp_path)
    loader = SingleCellLoader(path, batch_size=8, shuffle="random", device="cuda:1", prefetch=2, residency="stream")
    backend = loader.backend
    assert backend.device_index == 1
    world.log.clear()
    n = sum(1 for _ in loader)
    assert n == len(loader) == 5
    work = [e for e in world.log if e[0] in ("launch", "h2d")]
    assert work and {(e[1], e[2]) for e in work} == {(1, backend.ctx.torch_stream.cuda_stream)}
    assert threading.current_thread() is threading.main_thread() and world.current() == (0, 0)  # consumer untouched


@pytest.mark.parametrize("residency", ["stream", "device"])
def test_a_consumer_on_another_stream_waits_for_each_batch(world, tmp_path, residency, monkeypatch):
    """Streamed batches are handed over one by one; resident ones in groups (one event each), so the
    consumer waits once per group."""
    from scdl_gpu.loader import _loader

    monkeypatch.setattr(_loader, "RESIDENT_GROUP_ROWS", 64)  # groups of 8 batches of 8
    path = _archive(tmp_path, n=80)
    loader = SingleCellLoader(path, batch_size=8, shuffle="random", device="cuda", prefetch=0, residency=residency)
    consumer = torch.cuda.Stream()
    with torch.cuda.stream(consumer):
        world.log.clear()
        batches = list(loader)
    waits = [e for e in world.log if e[0] == "wait_event" and e[1] == consumer.cuda_stream]
    assert len(batches) == 10
    assert len(waits) == (10 if residency == "stream" else 2)
    assert len({e[2] for e in waits}) == len(waits)  # each wait on another event
    assert any(e[0] == "record_stream" and e[1] == consumer.cuda_stream for e in world.log)


def test_a_consumer_that_changes_stream_inside_a_group_waits_again(world, tmp_path):
    path = _archive(tmp_path, n=80)
    loader = SingleCellLoader(path, batch_size=8, shuffle="random", device="cuda", prefetch=0, residency="device")
    first, second = torch.cuda.Stream(), torch.cuda.Stream()
    it = iter(loader)
    world.log.clear()
    for stream in (first, first, second, second, first):  # five batches of the first group of eight
        with torch.cuda.stream(stream):
            next(it)
    it.close()
    waits = [(e[1], e[2]) for e in world.log if e[0] == "wait_event"]
    assert [w[0] for w in waits] == [first.cuda_stream, second.cuda_stream, first.cuda_stream]
    assert len({w[1] for w in waits}) == 1  # one group, one event
    recorded = {e[1] for e in world.log if e[0] == "record_stream"}
    assert recorded == {first.cuda_stream, second.cuda_stream}


@pytest.fixture(scope="module")
def with_obs(tmp_path_factory):
    """An archive with obs columns, and its obs (made before the fake GPU: anndata probes CuPy)."""
    from scdl_gpu import convert_h5ad
    from tests.conftest import make_adata, random_csr

    d = tmp_path_factory.mktemp("obs")
    a = make_adata(random_csr(70, 30, density=0.2, seed=4))
    a.write_h5ad(d / "s.h5ad")
    return convert_h5ad(d / "s.h5ad", d / "a", use_X_not_raw=True), a.obs


def test_a_resident_group_reads_obs_once_and_each_batch_gets_its_rows(with_obs, world, monkeypatch):
    """A group's rows and obs are read (and moved to the device) once; each batch holds views of its
    own rows, equal to the archive's obs at those rows."""
    from scdl_gpu.loader import _loader, _obs

    path, obs = with_obs
    monkeypatch.setattr(_loader, "RESIDENT_GROUP_ROWS", 48)  # groups of 8 batches of 6
    takes = []
    real_take = _obs.ObsColumns.take
    monkeypatch.setattr(_obs.ObsColumns, "take", lambda self, rows: takes.append(len(rows)) or real_take(self, rows))
    loader = SingleCellLoader(path, batch_size=6, shuffle="random", device="cuda", residency="device", prefetch=0,
                              obs_columns=["n_genes", "score"])
    batches = list(loader)
    assert len(batches) == 12 and takes == [48, 22]  # two groups: 8 batches of 6, then 3 and a last of 4
    seen = []
    for b in batches:
        rows = b["rows"].numpy()
        assert len(rows) == b["X"].shape[0] == len(b["obs"]["score"])
        np.testing.assert_array_equal(b["obs"]["n_genes"].numpy(), obs["n_genes"].to_numpy()[rows])
        np.testing.assert_array_equal(b["obs"]["score"].numpy(), obs["score"].to_numpy()[rows])
        seen += rows.tolist()
    assert set(seen) == set(range(70))
    # views: the batches of a group share their rows' storage
    assert batches[0]["rows"].untyped_storage().data_ptr() == batches[7]["rows"].untyped_storage().data_ptr()


def test_pinned_staging_is_not_reused_while_its_copy_is_queued(world, tmp_path):
    """Issue: pinned staging went back to CuPy's pool while its copy was still queued."""
    path = _archive(tmp_path)
    gpu = get_backend(path, device="cuda", residency="stream")
    gpu.batch(np.arange(10))
    (name, (buf, copied)), = [(k, v) for k, v in gpu.ctx._staging.items() if k.startswith("vals")]
    assert copied is not None and not copied.query()  # the copy is (still) queued
    world.log.clear()
    gpu.batch(np.arange(20, 30))  # the other buffers: its gather does not wait for the copy before
    assert ("sync_event", id(copied)) not in world.log and not gpu.ctx._staging[name][1].query()
    world.log.clear()
    gpu.batch(np.arange(30, 40))  # the first buffers again
    assert ("sync_event", id(copied)) in world.log  # waited before writing the buffer again
    first_h2d = next(i for i, e in enumerate(world.log) if e[0] == "h2d")
    assert world.log.index(("sync_event", id(copied))) < first_h2d


def test_loading_resident_rows_double_buffers_and_lets_the_staging_go(world, tmp_path, monkeypatch):
    from scdl_gpu.backend import _gpu

    monkeypatch.setattr(_gpu, "LOAD_CHUNK_VALUES", 50)  # several steps
    path = _archive(tmp_path, n=40)
    gpu = get_backend(path, device="cuda", residency="device")
    steps = [e for e in world.log if e[0] == "h2d"]
    assert len(steps) >= 8 and len({e[3] for e in steps}) == 4  # two pinned buffers per array, alternating
    assert not [k for k in gpu.ctx._staging if k.startswith("load_")]  # dropped once loaded
    _assert_same(gpu.batch(np.arange(40)), get_backend(path, device="cpu").batch(np.arange(40)))


def test_batch_memory_is_held_until_the_releasing_stream_passes_it(world, tmp_path):
    path = _archive(tmp_path)
    gpu = get_backend(path, device="cuda", residency="device")
    gpu.batch(np.arange(10))  # the stand-in's DLPack copies, so the outputs are released at once
    held = gpu.ctx.collect()
    assert held == 3  # crow, col, values: their release events have not passed
    world.finish_all()
    assert gpu.ctx.collect() == 0


def test_loader_residency_partitions_rows_across_ranks(world, tmp_path):
    path = _archive(tmp_path, n=41)
    seen, counts = [], []
    for rank in range(3):
        loader = SingleCellLoader(path, batch_size=4, shuffle="random", device="cuda", residency="device",
                                  rank=rank, world_size=3, prefetch=0, seed=5)
        assert loader.partition == "resident" and loader.residency == "device"
        share = set(loader._share.tolist())
        rows = np.concatenate([b["rows"].numpy() for b in loader])
        assert set(rows.tolist()) == share  # a rank only draws from its own share
        seen.append(rows)
        counts.append(len(loader))
        again = np.concatenate([b["rows"].numpy() for b in loader])  # next epoch: same share, new order
        assert sorted(again.tolist()) == sorted(rows.tolist()) and not np.array_equal(again, rows)
    assert len(set(counts)) == 1  # equal batches per rank
    assert set(np.concatenate(seen).tolist()) == set(range(41))  # every row once per epoch (padding repeats one)


def test_loader_residency_on_the_cpu_is_checked(tmp_path):
    path = _archive(tmp_path)
    assert SingleCellLoader(path, batch_size=8, device="cpu", residency="stream").partition == "global"
    with pytest.raises(ValueError, match="needs a GPU backend"):
        SingleCellLoader(path, batch_size=8, device="cpu", residency="pinned")


def test_kvikio_is_configured_once_per_backend_not_per_batch(world, tmp_path, monkeypatch):
    """Issue: the thread pool was rebuilt twice per batch (``defaults.set`` around every read)."""
    import sys
    import types

    from scdl_gpu.backend import _gpu

    calls = []
    kvikio = types.ModuleType("kvikio")
    kvikio.defaults = types.SimpleNamespace(set=lambda settings: calls.append(dict(settings)))

    class CuFile:
        def __init__(self, path, mode):
            self.f = open(path, "rb")

        def pread(self, buf, nbytes, file_offset=0):
            self.f.seek(file_offset)
            buf[...] = np.frombuffer(self.f.read(nbytes), dtype=buf.dtype)
            return types.SimpleNamespace(get=lambda: nbytes)

        def close(self):
            self.f.close()

    kvikio.CuFile = CuFile
    monkeypatch.setitem(sys.modules, "kvikio", kvikio)
    monkeypatch.setitem(sys.modules, "kvikio.defaults", kvikio.defaults)
    monkeypatch.setattr(_gpu, "kvikio_available", lambda: True)
    path = _archive(tmp_path)
    gpu = get_backend(path, device="cuda", residency="stream", reader="kvikio", kvikio_min_span=0)
    cpu = get_backend(path, device="cpu")
    import scipy.sparse as sp

    def dense(b):  # kvikio copies rows as stored (unsorted here): compare contents
        return sp.csr_matrix((b.values.numpy(), b.col.numpy(), b.crow.numpy()), shape=b.shape).toarray()

    for rows in (np.arange(0, 20), np.arange(5, 40), np.array([3])):
        g = gpu.batch(rows)
        assert not g.sorted  # the loader sorts it; the archive does not say its rows are sorted
        np.testing.assert_array_equal(dense(g), dense(cpu.batch(rows)))
    assert calls == [{"num_threads": min(16, __import__("os").cpu_count() or 1)}]  # once, at construction
    syncs = [e for e in world.log if e[0] == "sync_stream"]
    assert len(syncs) >= 3  # kvikio's writes wait for the kernels queued on the stream, every batch
    gpu.close()


def test_cupys_view_of_torchs_stream_owns_nothing_and_warns_nothing():
    """CuPy 14's ``Stream.from_external`` returns a ``Stream`` that destroys the stream when collected (it
    destroyed torch's pooled streams on the first GPU run: later backends hung), so the non-owning
    ``ExternalStream`` is used, its DeprecationWarning (an error under our tests) silenced."""
    import types
    import warnings

    from scdl_gpu.backend._device import _cupy_view

    def external(ptr, device):
        warnings.warn("ExternalStream is deprecated", DeprecationWarning)
        return types.SimpleNamespace(ptr=ptr, device=device)

    class Owning:
        @staticmethod
        def from_external(obj):
            raise AssertionError("from_external's Stream would destroy torch's stream")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view = _cupy_view(types.SimpleNamespace(cuda=types.SimpleNamespace(Stream=Owning, ExternalStream=external)), 77, 1)
    assert (view.ptr, view.device) == (77, 1)


@pytest.mark.parametrize("residency", ["device", "pinned", "stream"])
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "half", "dense-transforms", "wide"])
def test_batches_gathered_together_equal_one_by_one(world, tmp_path, residency, opts):
    """``batches`` of several row sets: each equals ``batch`` of it (and the CPU's); with resident rows the
    group costs one gather, one assembly and one flag read, and each batch is a view of the group's arrays."""
    path = _archive(tmp_path, "float16" if opts.value_dtype == "float16" else "uint16")
    gpu = get_backend(path, device="cuda", options=opts, residency=residency)
    cpu = get_backend(path, device="cpu", options=opts)
    rng = np.random.default_rng(3)
    groups = [rng.integers(0, 40, 9), np.array([], np.int64), np.arange(40), np.array([5, 5, 0])]
    start = len(world.log)
    got = gpu.batches(groups)
    launches = [e[3] for e in world.log[start:] if e[0] == "launch"]
    for g, rows in zip(got, groups):
        np.testing.assert_array_equal(g.rows, rows)
        _assert_same(g, cpu.batch(rows), rtol=2.5e-7 if opts.log1p else 0)
        assert g.sorted == cpu.batch(rows).sorted
    if residency != "stream":  # streamed batches are read one by one
        assert launches.count("gather") == 1 and launches.count("emit") + launches.count("densify") == 1
    assert gpu.batches([]) == [] and len(gpu.batches([groups[0]])) == 1
    gpu.close()


def test_batches_with_a_gene_remap_go_one_by_one(world, tmp_path):
    path = _archive(tmp_path)
    remap = np.full(90, -1, np.int64)
    remap[1::3] = np.arange(30)
    opts = BatchOptions(gene_remap=remap)
    gpu = get_backend(path, device="cuda", options=opts, residency="device")
    groups = [np.arange(10), np.arange(30, 40)]
    start = len(world.log)
    got = gpu.batches(groups)
    assert [e[3] for e in world.log[start:] if e[0] == "launch"].count("gather") == 2
    for g, rows in zip(got, groups):
        _assert_same(g, get_backend(path, device="cpu", options=opts).batch(rows))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_resident_loader_gathers_groups_of_batches(world, tmp_path, prefetch, monkeypatch):
    """With rows resident the loader asks for a group of batches at once: every batch still equals
    the CPU's for its rows, an epoch still covers the share once, and a resumed epoch (inside a group)
    yields what the uninterrupted one did."""
    from scdl_gpu.loader import _loader

    monkeypatch.setattr(_loader, "RESIDENT_GROUP_ROWS", 32)  # groups of 8 batches of 4
    path = _archive(tmp_path, n=60)
    kw = dict(batch_size=4, shuffle="random", device="cuda", residency="device", prefetch=prefetch, seed=2)
    loader = SingleCellLoader(path, **kw)
    cpu = get_backend(path, device="cpu")
    start = len(world.log)
    full = list(loader)
    gathers = [e for e in world.log[start:] if e[0] == "launch" and e[3] == "gather"]
    assert len(full) == 15 and len(gathers) == 2  # 8 + 7 batches: two gathers
    for b in full:
        torch.testing.assert_close(b["X"].to_dense(), cpu.batch(b["rows"].numpy()).to_sparse_csr().to_dense(),
                                   rtol=0, atol=0)
    assert sorted(np.concatenate([b["rows"].numpy() for b in full]).tolist()) == list(range(60))

    again = SingleCellLoader(path, **kw)
    it = iter(again)
    for _ in range(3):
        next(it)
    state = again.state_dict()
    it.close()
    resumed = SingleCellLoader(path, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 12
    for a, b in zip(rest, full[3:]):
        assert torch.equal(a["rows"], b["rows"]) and torch.equal(a["X"].to_dense(), b["X"].to_dense())


def test_resident_groups_hold_about_the_same_rows_at_every_batch_size():
    from scdl_gpu.loader._loader import MAX_GROUP, RESIDENT_GROUP_ROWS, resident_group

    assert resident_group(4096) == RESIDENT_GROUP_ROWS // 4096 == 8
    assert resident_group(64) == 512 == MAX_GROUP
    assert resident_group(1) == MAX_GROUP  # bounded
    assert resident_group(RESIDENT_GROUP_ROWS) == resident_group(10 * RESIDENT_GROUP_ROWS) == 1


def test_a_group_is_queued_without_waiting_and_its_flag_checked_when_finished(world, tmp_path):
    """``batches_ahead``: nothing waits for the device until the returned call, which reads the group's
    flag (copied back asynchronously) and raises for a damaged row; the next group may be queued first."""
    path = _archive(tmp_path)
    gpu = get_backend(path, device="cuda", residency="device")
    start = len(world.log)
    finish = gpu.batches_ahead([[1, 2], [3], [0, 9]])
    queued = world.log[start:]
    assert not [e for e in queued if e[0].startswith("sync")]
    assert [e[4] for e in queued if e[0] == "d2h"] == [False]  # the flag: an asynchronous copy
    later = gpu.batches_ahead([[4, 5], [6]])  # queued before the first is finished
    got = finish()
    assert [e for e in world.log[start:] if e[0] == "sync_event"]
    cpu = get_backend(path, device="cpu")
    for rows, b in zip([[1, 2], [3], [0, 9]], got):
        _assert_same(b, cpu.batch(rows))
    assert len(later()) == 2

    gpu._res_cols[int(gpu.index.ptr[5])] = 90  # device memory overwritten after the checked load
    bad, good = gpu.batches_ahead([[4], [5]]), gpu.batches_ahead([[6], [7]])
    with pytest.raises(ArchiveError, match="col_ptr.npy"):
        bad()
    assert len(good()) == 2  # each group has its own flag word


def test_a_resident_loader_queues_the_next_group_before_finishing_one(world, tmp_path, monkeypatch):
    from scdl_gpu.loader import _loader

    monkeypatch.setattr(_loader, "RESIDENT_GROUP_ROWS", 16)  # groups of 4 batches of 4
    path = _archive(tmp_path, n=40)
    loader = SingleCellLoader(path, batch_size=4, shuffle="random", device="cuda", residency="device", prefetch=0)
    world.log.clear()
    it = iter(loader)
    next(it)
    order = [e[0] for e in world.log if (e[0] == "launch" and e[3] == "gather") or e[0] == "sync_event"]
    assert order[:3] == ["launch", "launch", "sync_event"]  # two groups queued, then the first's flag read
    assert len(list(it)) == 9


def test_a_damaged_row_stops_a_resident_loader_before_its_group(world, tmp_path, monkeypatch):
    from scdl_gpu.loader import _loader

    monkeypatch.setattr(_loader, "RESIDENT_GROUP_ROWS", 16)
    path = _archive(tmp_path, n=40)
    loader = SingleCellLoader(path, batch_size=4, shuffle="sequential", device="cuda", residency="device", prefetch=2)
    loader.backend._res_cols[int(loader.backend.index.ptr[21])] = 90  # row 21: batch 5, the second group
    seen = []
    with pytest.raises(ArchiveError, match="col_ptr.npy"):
        for b in loader:
            seen += b["rows"].tolist()
    assert seen == list(range(16))  # the first group only


def test_a_transform_s_work_is_inside_the_event_the_consumer_waits_for(world, tmp_path, monkeypatch):
    from scdl_gpu.loader import _loader

    monkeypatch.setattr(_loader, "RESIDENT_GROUP_ROWS", 16)
    path = _archive(tmp_path, n=40)

    def transform(batch):
        world.note("transform")
        return batch

    loader = SingleCellLoader(path, batch_size=4, shuffle="random", device="cuda", residency="device", prefetch=0,
                              transform=transform)
    recorded = []
    make = loader.backend.ready_event
    monkeypatch.setattr(loader.backend, "ready_event", lambda: (lambda ev: recorded.append((len(world.log), id(ev))) or ev)(make()))
    consumer = torch.cuda.Stream()
    with torch.cuda.stream(consumer):
        world.log.clear()
        assert len(list(loader)) == 10
    at = {ev: i for i, ev in recorded}
    transforms = [i for i, e in enumerate(world.log) if e[0] == "transform"]
    for wait in (e for e in world.log if e[0] == "wait_event"):
        assert any(t < at[wait[2]] for t in transforms)  # recorded after a transform of its group
