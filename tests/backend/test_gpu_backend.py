"""GPU backend (marker ``gpu``: skipped cleanly without a usable CUDA device).

Every kernel against its NumPy reference on fresh random inputs, batches equal to the CPU
backend's bit for bit, both read paths (kvikio and pinned host) equal, and the DLPack hand-off
sharing CuPy's buffers (zero copy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scdl_gpu.backend import BatchOptions, get_backend, kvikio_available
from scdl_gpu.backend import _reference as ref
from tests.backend.archives import DATA_DTYPES, random_matrix, write_archive

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=DATA_DTYPES)
def archive(request, tmp_path_factory):
    dtype = request.param
    m = random_matrix(80, 70_000 if dtype == "float32" else 300, dtype if dtype != "float16" else "float32", seed=5)
    if dtype == "float16":
        m.data = m.data.astype(np.float16).astype(np.float32)
    return write_archive(tmp_path_factory.mktemp(dtype) / "a", m, data_dtype=dtype)


def _rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, 33), np.arange(5, 60), np.array([0, 0, n - 1]), np.array([], np.int64)]


def _by_column(batch, name):
    """``name`` of ``batch`` on the host with each row's entries in column order (routes that copy rows
    as stored, kvikio's, leave an unsorted archive's rows unsorted and say so: ``sorted`` False)."""
    t = getattr(batch, name).cpu()
    if name not in ("col", "values") or batch.sorted:
        return t
    crow, col, out = batch.crow.cpu().numpy(), batch.col.cpu().numpy(), t.numpy().copy()
    for r in range(len(crow) - 1):
        a, b = crow[r], crow[r + 1]
        out[a:b] = out[a:b][np.argsort(col[a:b], kind="stable")]
    return torch.from_numpy(out)


def _same(cpu, gpu, exact=True):
    for name in ("crow", "col", "values", "dense"):
        c, g = getattr(cpu, name), getattr(gpu, name)
        assert (c is None) == (g is None), name
        if c is None:
            continue
        assert g.device.type == "cuda" and c.dtype == g.dtype, name
        c, g = _by_column(cpu, name), _by_column(gpu, name)
        if exact:
            torch.testing.assert_close(g, c, rtol=0, atol=0)
        else:  # log1p: CUDA's and glibc's double log1p may differ in the last bit before the float32
            # cast; row sums of non-integer values: the kernel adds in row order, NumPy pairwise
            torch.testing.assert_close(g, c, rtol=2.5e-7, atol=0)


OPTIONS = [
    BatchOptions(),
    BatchOptions(value_dtype="float64", index_dtype="int64"),
    BatchOptions(value_dtype="float16"),
    BatchOptions(dense=True),
    BatchOptions(target_sum=1e4),
    BatchOptions(target_sum=1e4, log1p=True, dense=True),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: f"{o.value_dtype}-dense{o.dense}-sum{o.target_sum}-log{o.log1p}")
@pytest.mark.parametrize("route", ["device", "pinned", "stream-host", "stream-kvikio"])
def test_gpu_batches_equal_cpu_batches(archive, opts, route):
    residency, _, reader = route.partition("-")
    if reader == "kvikio" and not kvikio_available():
        pytest.skip("kvikio not installed")
    cpu = get_backend(archive, device="cpu", options=opts)
    if opts.value_dtype == "float16" and np.abs(cpu.data.astype(np.float64)).max() > 65504:
        pytest.skip("values beyond float16's range")
    kw = dict(reader=reader, kvikio_min_span=0) if reader else {}
    with get_backend(archive, device="cuda", options=opts, residency=residency, **kw) as gpu:
        assert gpu.residency == residency
        exact = not opts.log1p and not (opts.target_sum and cpu.data.dtype.kind == "f")
        for rows in _rows(cpu.n_rows, 1):
            _same(cpu.batch(rows), gpu.batch(rows), exact=exact)


def test_gene_remap_on_gpu(archive):
    cpu0 = get_backend(archive, device="cpu")
    remap = np.full(cpu0.archive_cols, -1, np.int64)
    keep = np.random.default_rng(0).choice(cpu0.archive_cols, cpu0.archive_cols // 3, replace=False)
    remap[keep] = np.random.default_rng(1).permutation(len(keep))
    for opts in (BatchOptions(gene_remap=remap), BatchOptions(gene_remap=remap, dense=True, target_sum=100.0)):
        cpu = get_backend(archive, device="cpu", options=opts)
        for residency in ("device", "stream"):
            gpu = get_backend(archive, device="cuda", options=opts, residency=residency)
            for rows in _rows(cpu.n_rows, 2):
                _same(cpu.batch(rows), gpu.batch(rows))


def test_dlpack_hand_off_is_zero_copy():
    import cupy as cp

    from scdl_gpu.backend._assemble import assemble
    from scdl_gpu.backend._cuda import CudaKernels

    vals = cp.arange(1, 11, dtype=cp.uint16)
    cols = cp.arange(10, dtype=cp.uint16)[::-1].copy()
    in_ptr = cp.asarray([0, 4, 4, 10], dtype=cp.int64)
    out = assemble(CudaKernels("uint16", "uint16"), cp, vals, cols, in_ptr, BatchOptions(), 10)
    for arr in (out.crow, out.col, out.values):
        t = torch.from_dlpack(arr)
        assert t.data_ptr() == arr.data.ptr and t.device.type == "cuda"


@pytest.mark.parametrize("tv", ["uint8", "uint16", "uint32", "uint64", "float32", "float64"])
@pytest.mark.parametrize("tc", ["uint8", "uint16", "uint32", "uint64"])
def test_every_kernel_matches_its_reference(tv, tc):
    import cupy as cp

    from scdl_gpu.backend._cuda import CudaKernels

    rng = np.random.default_rng(hash((tv, tc)) % 2**32)
    n_cols = min(np.iinfo(tc).max, 5000) + 1
    lengths = rng.integers(0, 40, 50)
    lengths[[0, 7, -1]] = 0
    in_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(in_ptr[-1])
    cols = rng.integers(0, n_cols, n).astype(tc)
    cols[0] = n_cols - 1
    hi = np.iinfo(tv).max if np.dtype(tv).kind == "u" else 1e6
    vals = (rng.random(n) * min(hi, 2**40)).astype(tv)
    remap = np.where(rng.random(n_cols) < 0.6, rng.permutation(n_cols), -1).astype(np.int64)
    k = CudaKernels(tv, tc)
    d = {name: cp.asarray(a) for name, a in dict(vals=vals, cols=cols, in_ptr=in_ptr, remap=remap).items()}

    np.testing.assert_array_equal(k.keep_flags(d["cols"], d["remap"]).get(), ref.keep_flags(cols, remap))
    for rm in (None, remap):
        got = k.row_sums(d["vals"], d["cols"], d["in_ptr"], None if rm is None else d["remap"]).get()
        np.testing.assert_allclose(got, ref.row_sums(vals, cols, in_ptr, rm), rtol=1e-12)
    flags = ref.keep_flags(cols, remap)
    pos = ref.exclusive_scan(flags)[:n] if n else np.zeros(0, np.int64)
    scale = ref.row_scale_from_sums(ref.row_sums(vals, cols, in_ptr, remap), 1e4)
    for out_dtype in ("float32", "float64"):
        for index_dtype in ("int32", "int64"):
            gv, gc = k.emit(d["vals"], d["cols"], d["in_ptr"], d["remap"], cp.asarray(pos), cp.asarray(scale), False, out_dtype, index_dtype)
            rv, rc = ref.emit(vals, cols, in_ptr, remap, pos, scale, False, out_dtype, index_dtype)
            np.testing.assert_array_equal(gc.get(), rc)
            np.testing.assert_array_equal(gv.get(), rv)
        dense = k.densify(d["vals"], d["cols"], d["in_ptr"], d["remap"], cp.asarray(scale), True, n_cols, out_dtype).get()
        want = ref.densify(vals, cols, in_ptr, remap, scale, True, n_out_cols=n_cols, out_dtype=out_dtype)
        np.testing.assert_allclose(dense, want, rtol=2e-7 if out_dtype == "float32" else 1e-15)


@pytest.mark.parametrize("tv", ["uint8", "uint16", "uint32", "uint64", "float32", "float64"])
@pytest.mark.parametrize("tc", ["uint8", "uint16", "uint32", "uint64"])
def test_gather_kernel_matches_its_reference(tv, tc):
    import cupy as cp

    from scdl_gpu.backend._cuda import CudaKernels

    rng = np.random.default_rng(hash((tv, tc, "gather")) % 2**32)
    width = min(np.iinfo(tc).max, 5000) + 1
    lengths = rng.integers(0, 40, 60)
    lengths[[0, 9, -1]] = 0
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(ptr[-1])
    data = (rng.random(n) * 200).astype(tv)
    cols = rng.integers(0, width, n).astype(tc)
    rows = rng.integers(0, 60, 45)
    starts, out_ptr = ptr[rows], np.concatenate([[0], np.cumsum(lengths[rows])]).astype(np.int64)
    cols_bad = cols.copy()
    cols_bad[int(ptr[rows[3]])] = width if lengths[rows[3]] else cols_bad[0]
    for c, w in ((cols, width), (cols_bad, width)):
        err = cp.zeros(1, cp.int32)
        gv, gc = CudaKernels(tv, tc).gather(cp.asarray(data), cp.asarray(c), cp.asarray(starts), cp.asarray(out_ptr),
                                            int(out_ptr[-1]), w, err)
        rv, rc, rerr = ref.gather(data, c, starts, out_ptr, w)
        np.testing.assert_array_equal(gv.get(), rv)
        np.testing.assert_array_equal(gc.get(), rc)
        assert int(err.get()[0]) == rerr


def test_subnormals_survive_a_gpu_cast(tmp_path):
    """CuPy compiles with flush-to-zero, but the kernels' float<->double casts are pinned to the non-flushing
    PTX: CSR values are bit for bit the CPU's, subnormals included. Dense float32 output adds entries with
    atomicAdd, which flushes: a subnormal there is 0 or unchanged (README, "Batches on the GPU")."""
    import scipy.sparse as sp

    vals = np.array([1e-40, -3e-39, 1.5, 2.0**-126, 7e-45, 3.0e38], np.float32)
    m = sp.csr_matrix((vals, np.arange(6), [0, 3, 6]), shape=(2, 6))
    path = write_archive(tmp_path / "a", m, data_dtype="float32")
    cpu = get_backend(path, device="cpu").batch([0, 1]).values.numpy()
    dense = BatchOptions(dense=True)
    cpu_dense = get_backend(path, device="cpu", options=dense).batch([0, 1]).dense.numpy()
    for residency in ("device", "stream"):
        gpu = get_backend(path, device="cuda", residency=residency).batch([0, 1]).values.cpu().numpy()
        np.testing.assert_array_equal(gpu, cpu)
        got = get_backend(path, device="cuda", residency=residency, options=dense).batch([0, 1]).dense.cpu().numpy()
        sub = np.abs(cpu_dense) < np.finfo(np.float32).tiny
        np.testing.assert_array_equal(got[~sub], cpu_dense[~sub])
        assert np.all((got[sub] == 0) | (got[sub] == cpu_dense[sub]))


@pytest.mark.parametrize("residency", ["device", "pinned"])
def test_batches_gathered_together_equal_the_cpus(archive, residency):
    """``GPUBackend.batches`` (the resident loader's groups) against the CPU batch by batch."""
    for opts in (BatchOptions(), BatchOptions(dense=True, target_sum=1e4, log1p=True)):
        cpu = get_backend(archive, device="cpu", options=opts)
        with get_backend(archive, device="cuda", options=opts, residency=residency) as gpu:
            groups = _rows(cpu.n_rows, 4)
            exact = not opts.log1p
            for rows, got in zip(groups, gpu.batches(groups)):
                _same(cpu.batch(rows), got, exact=exact)


def test_an_atlas_on_the_gpu_equals_the_cpu(tmp_path):
    """The atlas's host route on a real device: batches copied to the GPU equal the host's."""
    from scdl_gpu.atlas import create_atlas
    from tests.atlas.members import make_members

    root = create_atlas(tmp_path / "atlas", [p for p, _ in make_members(tmp_path)]).root
    for opts in (BatchOptions(), BatchOptions(dense=True, target_sum=100.0, log1p=True)):
        gpu, cpu = get_backend(root, device="cuda", options=opts), get_backend(root, device="cpu", options=opts)
        rows = np.random.default_rng(0).integers(0, gpu.n_rows, 50)
        g, c = gpu.batch(rows), cpu.batch(rows)
        for name in ("crow", "col", "values", "dense"):
            a, b = getattr(g, name), getattr(c, name)
            assert (a is None) == (b is None)
            if a is not None:
                assert a.is_cuda and torch.equal(a.cpu(), b), name
