"""CPU backend: every batch equals scipy's ``matrix[rows]`` (and its transforms), for every dtype."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scdl_gpu.backend import BatchOptions, get_backend, gpu_available
from scdl_gpu.backend._cpu import CPUBackend
from scdl_gpu.backend._plan import plan_rows
from tests.backend.archives import DATA_DTYPES, random_matrix, write_archive

N_ROWS = 60


def _row_sets(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, n, 17),  # random, with repeats likely
        np.array([5, 5, 5]),  # one row three times
        np.arange(10, 30),  # a block: one span
        np.arange(30, 10, -1),  # reversed
        np.array([0, n - 1, n // 3]),  # only empty rows
        np.array([n // 2]),  # the row holding the largest column
        np.array([], dtype=np.int64),  # nothing
        np.concatenate([np.arange(3, 9), np.arange(40, 44), [3]]),  # two blocks and a repeat
    ]


def _cast(values: np.ndarray, value_dtype: str) -> np.ndarray:
    # the kernels' rule: through float64, then float32 (float16 from float32)
    out = values.astype(np.float64).astype(np.float32 if value_dtype != "float64" else np.float64)
    return out.astype(value_dtype)


def _take_rows(m: sp.csr_matrix, rows, value_dtype: str):
    """``(indptr, indices, data)`` of ``m[rows]`` with each row's columns sorted (stable), as the
    compiled gather returns them (the archives' rows are stored unsorted)."""
    spans = [np.arange(m.indptr[r], m.indptr[r + 1]) for r in rows]
    spans = [s[np.argsort(m.indices[s], kind="stable")] for s in spans]
    idx = np.concatenate(spans) if spans else np.zeros(0, np.int64)
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in spans])]).astype(np.int64)
    return indptr, m.indices[idx], _cast(m.data[idx], value_dtype)


@pytest.fixture(scope="module", params=DATA_DTYPES)
def archive(request, tmp_path_factory):
    dtype = request.param
    m = random_matrix(N_ROWS, 300, dtype if dtype != "float16" else "float32", seed=DATA_DTYPES.index(dtype))
    if dtype == "float16":  # scipy has no float16: keep float32 values that float16 holds exactly
        m.data = m.data.astype(np.float16).astype(np.float32)
    return write_archive(tmp_path_factory.mktemp(dtype) / "a", m, data_dtype=dtype), m


@pytest.mark.parametrize("value_dtype", ["float32", "float64", "float16"])
def test_csr_batches_equal_scipy(archive, value_dtype):
    path, m = archive
    if value_dtype == "float16" and m.data.max() > np.finfo(np.float16).max:
        pytest.skip("values beyond float16's range")
    backend = get_backend(path, device="cpu", options=BatchOptions(value_dtype=value_dtype))
    assert isinstance(backend, CPUBackend) and backend.width == 300
    for rows in _row_sets(N_ROWS):
        b = backend.batch(rows)
        indptr, indices, data = _take_rows(m, rows, value_dtype)
        assert b.shape == (len(rows), 300) and b.device.type == "cpu"
        assert b.crow.dtype == b.col.dtype == torch.int32
        assert b.values.dtype == getattr(torch, value_dtype)
        np.testing.assert_array_equal(b.crow.numpy(), indptr)
        np.testing.assert_array_equal(b.col.numpy(), indices)  # sorted inside rows
        assert b.sorted
        np.testing.assert_array_equal(b.values.numpy(), data)
        dense = sp.csr_matrix((data.astype(np.float64), indices, indptr), shape=(len(rows), 300)).toarray().astype(value_dtype)
        np.testing.assert_array_equal(b.to_sparse_csr().to_dense().numpy(), dense)


def test_dense_batches(archive):
    path, m = archive
    backend = get_backend(path, device="cpu", options=BatchOptions(dense=True))
    for rows in _row_sets(N_ROWS, seed=1):
        b = backend.batch(rows)
        indptr, indices, data = _take_rows(m, rows, "float32")
        assert b.dense.shape == (len(rows), 300) and b.crow is None
        np.testing.assert_array_equal(b.dense.numpy(), sp.csr_matrix((data, indices, indptr), shape=(len(rows), 300)).toarray())
        assert b.to_sparse_csr() is b.dense


def _remap(n_in: int, n_out: int, seed: int) -> np.ndarray:
    """Half the archive's genes onto distinct output columns, in shuffled order; the rest dropped."""
    rng = np.random.default_rng(seed)
    remap = np.full(n_in, -1, np.int64)
    keep = rng.choice(n_in, size=n_in // 2, replace=False)
    remap[keep] = rng.permutation(n_out)[: len(keep)]
    return remap


def _dense_reference(m, rows, remap=None, n_out=None, target_sum=None, log1p=False) -> np.ndarray:
    x = m[rows].astype(np.float64).toarray()
    if remap is not None:
        out = np.zeros((len(rows), n_out))
        for j in np.flatnonzero(remap >= 0):  # column by column: an independent formulation
            out[:, remap[j]] += x[:, j]
        x = out
    if target_sum is not None:
        s = x.sum(axis=1, keepdims=True)
        x = np.where(s > 0, x * (target_sum / np.where(s > 0, s, 1)), x)
    if log1p:
        x = np.log1p(x)
    return x


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("transform", ["remap", "normalize", "log1p", "all"])
def test_transforms(archive, dense, transform):
    path, m = archive
    if m.dtype == np.uint64 and transform != "remap":
        pytest.skip("sums of values near 2**64 are not meaningful counts")
    remap = _remap(300, 200, seed=3) if transform in ("remap", "all") else None
    target = 1e4 if transform in ("normalize", "all") else None
    log1p = transform in ("log1p", "all")
    opts = BatchOptions(dense=dense, gene_remap=remap, target_sum=target, log1p=log1p)
    backend = get_backend(path, device="cpu", options=opts)
    assert backend.width == (max(remap) + 1 if remap is not None else 300)
    for rows in _row_sets(N_ROWS, seed=2):
        b = backend.batch(rows)
        got = b.dense.numpy() if dense else b.to_sparse_csr().to_dense().numpy()
        want = _dense_reference(m, rows, remap, backend.width, target, log1p)
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=2e-6, atol=1e-30)
        if not dense:
            crow = b.crow.numpy()
            assert crow[0] == 0 and np.all(np.diff(crow) >= 0) and crow[-1] == len(b.col)
            if remap is not None:  # dropped genes are gone, kept ones renumbered below the width
                assert (b.col.numpy() < backend.width).all()


def test_index_dtype_and_block_coalescing(archive):
    path, m = archive
    backend = get_backend(path, device="cpu", options=BatchOptions(index_dtype="int64"))
    b = backend.batch(np.arange(0, 20))
    assert b.crow.dtype == b.col.dtype == torch.int64
    plan = plan_rows(backend.row_ptr, np.r_[np.arange(0, 20), np.arange(40, 45), [3]])
    assert len(plan.span_src) == 3  # two blocks and a lone row


def test_batches_are_fresh_memory(archive):
    path, m = archive
    backend = get_backend(path, device="cpu")
    b = backend.batch(np.arange(10, 20))
    before = backend.data[: b.values.numel()].copy()
    b.values += 1  # a batch is the caller's to modify; the read-only archive map is untouched
    np.testing.assert_array_equal(backend.data[: b.values.numel()], before)


def test_groups_of_batches_in_one_or_two_steps(archive):
    """``batches`` and ``batches_ahead`` (what a resident GPU loader pipelines) give ``batch`` of each group."""
    path, _ = archive
    backend = get_backend(path, device="cpu")
    groups = [np.arange(5), np.array([7, 3, 3]), np.array([], np.int64)]
    assert backend.tensor_device == torch.device("cpu")
    for got in (backend.batches(groups), backend.batches_ahead(groups)()):
        assert len(got) == 3
        for rows, b in zip(groups, got):
            want = backend.batch(rows)
            for name in ("crow", "col", "values"):
                assert torch.equal(getattr(b, name), getattr(want, name)), name


def test_bad_requests(tmp_path):
    path = write_archive(tmp_path / "a", random_matrix(10, 20, "float32"))
    backend = get_backend(path, device="cpu")
    with pytest.raises(IndexError, match="row 10 out of range"):
        backend.batch([0, 10])
    with pytest.raises(IndexError):
        backend.batch([-1])
    with pytest.raises(TypeError):
        backend.batch(np.array([0.5]))
    with pytest.raises(ValueError, match="1-D"):
        backend.batch(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="value_dtype"):
        BatchOptions(value_dtype="int32")
    with pytest.raises(ValueError, match="target_sum"):
        BatchOptions(target_sum=0)
    with pytest.raises(ValueError, match="gene_remap"):
        BatchOptions(gene_remap=np.array([0, -2]))
    with pytest.raises(ValueError, match="gene_remap has 3 entries"):
        get_backend(path, device="cpu", options=BatchOptions(gene_remap=np.array([0, 1, 2])))
    with pytest.raises(ValueError, match="n_cols is 2"):
        get_backend(path, device="cpu", options=BatchOptions(gene_remap=np.arange(20), n_cols=2))
    with pytest.raises(ValueError, match="device"):
        get_backend(path, device="tpu")


@pytest.mark.skipif(gpu_available(), reason="checks the no-GPU behaviour")
def test_auto_is_cpu_and_cuda_is_a_clear_error(tmp_path):
    path = write_archive(tmp_path / "a", random_matrix(10, 20, "float32"))
    assert isinstance(get_backend(path), CPUBackend)
    with pytest.raises(RuntimeError, match="no usable CUDA device") as e:
        get_backend(path, device="cuda")
    assert "pip install 'cupy-cuda13x[ctk]' kvikio-cu13" in str(e.value) and "scdl-gpu[" not in str(e.value)


def test_package_import_does_not_import_cupy():
    import subprocess
    import sys

    code = "import scdl_gpu, scdl_gpu.backend, sys; scdl_gpu.SingleCellMemMapDataset; print('cupy' in sys.modules, 'kvikio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_output_narrower_than_the_archive_is_refused(tmp_path):
    path = write_archive(tmp_path / "a", random_matrix(10, 20, "float32"))
    with pytest.raises(ValueError, match="narrower than the archive's 20 genes"):
        get_backend(path, device="cpu", options=BatchOptions(n_cols=10))
    assert get_backend(path, device="cpu", options=BatchOptions(n_cols=30)).batch([1]).shape == (1, 30)


@pytest.mark.parametrize("parallel_from", [0, 1 << 40])
def test_serial_and_parallel_gathers_equal_scipy(tmp_path, monkeypatch, parallel_from):
    """The compiled gather runs on the calling thread for small batches and over numba's threads for
    large ones; force each on the same requests (long rows: ~5,000 values)."""
    import scdl_gpu.backend._gather as gather

    monkeypatch.setattr(gather, "PARALLEL_MIN_VALUES", parallel_from)
    m = random_matrix(N_ROWS, 12_000, "uint16", seed=11, density=0.4)
    path = write_archive(tmp_path / "long", m, data_dtype="uint16")
    backend = get_backend(path, device="cpu")
    for rows in _row_sets(N_ROWS, seed=4) + [np.arange(N_ROWS)]:
        b = backend.batch(rows)
        indptr, indices, data = _take_rows(m, rows, "float32")
        np.testing.assert_array_equal(b.crow.numpy(), indptr)
        np.testing.assert_array_equal(b.col.numpy(), indices)
        np.testing.assert_array_equal(b.values.numpy(), data)


def test_batches_from_several_threads_are_each_correct(archive):
    """Concurrent batches (the gather releases the GIL) must not see each other's rows."""
    import threading

    path, m = archive
    backend = get_backend(path, device="cpu")
    sets = [np.random.default_rng(s).integers(0, N_ROWS, 25) for s in range(6)]
    expected = [_take_rows(m, rows, "float32") for rows in sets]
    errors = []

    def work(k):
        for _ in range(200):
            i = k % len(sets)
            b = backend.batch(sets[i])
            if not (np.array_equal(b.col.numpy(), expected[i][1]) and np.array_equal(b.crow.numpy(), expected[i][0])):
                errors.append(i)
            k += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("opts", [BatchOptions(), BatchOptions(target_sum=1e4, index_dtype="int64")], ids=["plain", "transform"])
def test_batches_compile_nothing_after_construction(archive, opts):
    """The backend compiles (or loads) every gather it will call when constructed, read-only maps
    included: no compile lands in an epoch's first batch."""
    from scdl_gpu.backend import _gather

    path, _ = archive
    backend = get_backend(path, device="cpu", options=opts)
    fns = (_gather._plan, _gather._gather_serial, _gather._gather_parallel)
    before = [len(f.signatures) for f in fns]
    backend.batch(np.arange(N_ROWS))
    backend.batch([3])
    assert [len(f.signatures) for f in fns] == before


def test_warm_up_follows_the_batch_index_dtype_not_the_archives(archive, monkeypatch):
    """An archive with more values than int32 holds still gets int32 batches of fewer: the warm-up
    must compile those (it compiled int64 from the archive's total, leaving int32 to the first batch)."""
    from scdl_gpu.backend import _batch, _gather

    path, m = archive
    limit = (300 + m.nnz) // 2  # width 300 < limit < the archive's values; one row is far below it
    assert 300 < limit < m.nnz
    monkeypatch.setattr(_batch, "INT32_MAX", limit)
    backend = get_backend(path, device="cpu")
    before = [len(f.signatures) for f in (_gather._gather_serial, _gather._gather_parallel)]
    assert backend.batch([N_ROWS // 2]).col.dtype == torch.int32
    assert [len(f.signatures) for f in (_gather._gather_serial, _gather._gather_parallel)] == before
