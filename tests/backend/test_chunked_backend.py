"""Batches over a chunked archive, and over a compressed one, equal those over its flat source, bit
for bit: the CPU backend, the GPU backend's Python side (fake GPU: every residency, the host route),
and the loader in every order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scdl_gpu import SingleCellLoader, partition_scdl
from scdl_gpu.archive._compressed import compress_archive
from scdl_gpu.backend import BatchOptions, get_backend
from scdl_gpu.backend._gather import PARALLEL_MIN_VALUES
from scdl_gpu.errors import ArchiveError
from tests.backend import fake_gpu
from tests.backend.archives import random_matrix, write_archive

N = 61  # rows: chunks of 8 leave a last chunk of 5
LAYOUTS = ["chunked", "compressed"]


def _pair(tmp_path, dtype="float32", n_cols=40, density=0.2, chunk_size=8, small=False, layout="chunked"):
    m = random_matrix(N, n_cols, "float32" if dtype == "float16" else dtype, seed=5, density=density)
    if small:  # integer extremes overflow float16 outputs (a warning, flat or chunked)
        m.data = (m.data.astype(np.uint64) % 1000).astype(m.dtype) if m.dtype.kind == "u" else m.data
    flat = write_archive(tmp_path / f"flat-{dtype}", m, data_dtype=dtype)
    chunked = tmp_path / f"{layout}-{dtype}-{chunk_size}"
    if layout == "compressed":  # frames of 64 bytes: most chunks decode several
        compress_archive(flat, chunked, chunk_size=chunk_size, frame_bytes=64)
    else:
        partition_scdl(flat, chunked, chunk_size=chunk_size)
    return flat, chunked


def _assert_same(a, b):
    for name in ("crow", "col", "values", "dense"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.sorted == b.sorted


OPTIONS = [BatchOptions(), BatchOptions(dense=True), BatchOptions(target_sum=10.0, log1p=True),
           BatchOptions(value_dtype="float16"), BatchOptions(index_dtype="int64", value_dtype="float64")]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["uint8", "uint64", "float16", "float32", "float64"])
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "dense", "transforms", "half", "wide"])
def test_cpu_batches_equal_the_flat_archive(tmp_path, dtype, opts, layout):
    flat, chunked = _pair(tmp_path, dtype, small=opts.value_dtype == "float16", layout=layout)
    f, c = get_backend(flat, device="cpu", options=opts), get_backend(chunked, device="cpu", options=opts)
    assert c.chunks is not None and c.width == f.width
    rng = np.random.default_rng(1)
    batches = [np.array([], np.int64), np.array([60]), np.array([0]), np.arange(N), np.arange(N)[::-1],
               rng.integers(0, N, 200), np.array([7, 8, 7, 56, 55])]  # across chunk boundaries, repeats
    for rows in batches:
        _assert_same(f.batch(rows), c.batch(rows))


def test_the_parallel_gather_path(tmp_path):
    """Batches above PARALLEL_MIN_VALUES values take the parallel compiled gather."""
    flat, chunked = _pair(tmp_path, "float32", n_cols=3000, density=0.3, chunk_size=4)
    f, c = get_backend(flat, device="cpu"), get_backend(chunked, device="cpu")
    rows = np.random.default_rng(2).permutation(N)
    a, b = f.batch(rows), c.batch(rows)
    assert a.values.numel() >= PARALLEL_MIN_VALUES
    _assert_same(a, b)
    # a damaged column in chunk 10: found by the parallel pass, named by chunk file
    cols = chunked / "chunk_00010" / "col_ptr.npy"
    bad = np.fromfile(cols, np.dtype(c.col_ptr.dtype).newbyteorder("<"))
    bad[3] = 5000
    cols.write_bytes(bad.astype(bad.dtype.newbyteorder("<")).tobytes())
    damaged = get_backend(chunked, device="cpu")
    with pytest.raises(ArchiveError, match=r"chunk_00010/col_ptr.npy: row 4[0-3] holds column 5000"):
        damaged.batch(rows)


@pytest.mark.parametrize("order", ["sequential", "random", "block"])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
@pytest.mark.parametrize("output", ["csr", "dense"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_loader_batches_equal_the_flat_archive(tmp_path, order, batch_size, output, layout):
    flat, chunked = _pair(tmp_path, layout=layout)
    kw = dict(batch_size=batch_size, shuffle=order, block_size=3, seed=4, device="cpu", output=output)
    fl, cl = SingleCellLoader(flat, **kw), SingleCellLoader(chunked, **kw)
    assert len(fl) == len(cl)
    for epoch in (0, 1):
        fl.set_epoch(epoch)
        cl.set_epoch(epoch)
        n = 0
        for a, b in zip(fl, cl, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                x, y = a[key], b[key]
                if isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr:
                    for part in ("crow_indices", "col_indices", "values"):
                        assert torch.equal(getattr(x, part)(), getattr(y, part)())
                elif isinstance(x, torch.Tensor):
                    assert torch.equal(x, y), key
            n += 1
        assert n == len(fl)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("residency", ["device", "pinned", "stream"])
def test_gpu_backend_host_route_equals_the_cpu(monkeypatch, tmp_path, residency, layout):
    fake_gpu.install(monkeypatch)
    flat, chunked = _pair(tmp_path, "uint16", small=True, layout=layout)
    for opts in (BatchOptions(), BatchOptions(dense=True, log1p=True)):
        g = get_backend(chunked, device="cuda", options=opts, residency=residency, reader="host")
        cpu = get_backend(flat, device="cpu", options=opts)
        assert g.residency == residency and not g._use_kvikio(g.plan(np.arange(N)))
        for rows in (np.arange(N), np.random.default_rng(3).integers(0, N, 30), np.array([], np.int64)):
            a, b = g.batch(rows), cpu.batch(rows)
            for name in ("crow", "col", "values", "dense"):
                x, y = getattr(a, name), getattr(b, name)
                assert (x is None) == (y is None)
                if x is not None:
                    torch.testing.assert_close(x, y, rtol=2.5e-7 if opts.log1p else 0, atol=0)
        g.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_archive_of_zero_rows(tmp_path, layout):
    import scipy.sparse as sp

    flat = write_archive(tmp_path / "flat", sp.csr_matrix((0, 5), dtype=np.float32))
    (compress_archive if layout == "compressed" else partition_scdl)(flat, tmp_path / "c", chunk_size=4)
    b = get_backend(tmp_path / "c", device="cpu")
    assert b.n_rows == 0 and b.batch([]).values.numel() == 0
    with pytest.raises(IndexError):
        b.batch([0])
