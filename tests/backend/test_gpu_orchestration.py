"""The GPU backend's Python side (planning, pinned-host staging, assembly, hand-off) run without a GPU.

CuPy is replaced by a NumPy stand-in and the CUDA launchers by the NumPy references, so what this
checks is the backend's own logic: which arrays are staged, in which dtypes, how they flow through
``assemble`` and into ``Batch``. The kernels themselves are checked by ``tests/kernels`` (shim and
compilers) and, on a GPU machine, by ``test_gpu_backend.py``.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from scdl_gpu.backend import BatchOptions, get_backend
from scdl_gpu.backend import _reference as ref
from tests.backend.archives import random_matrix, write_archive


class _DeviceArray(np.ndarray):
    """A NumPy array with CuPy's host-transfer methods."""

    def set(self, host):
        self[...] = host

    def get(self):
        return np.asarray(self)


def _fake_cupy() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    for name in ("zeros", "cumsum", "where", "float16", "float32", "float64", "int32", "int64", "count_nonzero"):
        setattr(cp, name, getattr(np, name))
    cp.empty = lambda n, dtype=np.float64: np.empty(n, dtype).view(_DeviceArray)
    cp.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype).view(_DeviceArray)
    return cp


class _ReferenceKernels:
    """The CUDA launchers' interface, answered by the NumPy references."""

    def __init__(self, value_dtype, col_dtype):
        self.value_dtype, self.col_dtype = value_dtype, col_dtype

    def _check(self, vals, cols):
        assert vals.dtype == self.value_dtype and cols.dtype == self.col_dtype  # staged as declared

    def keep_flags(self, cols, remap):
        return ref.keep_flags(cols, remap)

    def row_sums(self, vals, cols, in_ptr, remap=None):
        self._check(vals, cols)
        return ref.row_sums(vals, cols, in_ptr, remap)

    def emit(self, vals, cols, in_ptr, remap=None, pos=None, row_scale=None, log1p=False, out_dtype="float32",
             index_dtype="int32", n_out=None):
        self._check(vals, cols)
        out = ref.emit(vals, cols, in_ptr, remap, pos, row_scale, log1p, out_dtype, index_dtype)
        assert n_out is None or n_out == len(out[0])
        return out

    def densify(self, vals, cols, in_ptr, remap=None, row_scale=None, log1p=False, n_out_cols=0, out_dtype="float32"):
        self._check(vals, cols)
        return ref.densify(vals, cols, in_ptr, remap, row_scale, log1p, n_out_cols=n_out_cols, out_dtype=out_dtype)


@pytest.fixture
def fake_gpu(monkeypatch):
    cp = _fake_cupy()
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda n, dtype: np.empty(n, dtype)
    cuda_mod = types.ModuleType("scdl_gpu.backend._cuda")
    cuda_mod.CudaKernels = _ReferenceKernels
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setitem(sys.modules, "scdl_gpu.backend._cuda", cuda_mod)
    import scdl_gpu.backend as backend
    from scdl_gpu.backend import _gpu

    monkeypatch.setattr(_gpu, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(backend, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(_gpu, "kvikio_available", lambda: False)
    monkeypatch.setattr(torch, "from_dlpack", lambda a: torch.from_numpy(np.array(a)))  # stand-in arrays are host memory
    return _gpu


@pytest.mark.parametrize("dtype", ["uint16", "float16", "uint64", "float64"])
@pytest.mark.parametrize(
    "opts",
    [BatchOptions(), BatchOptions(value_dtype="float16"), BatchOptions(dense=True, target_sum=100.0, log1p=True),
     BatchOptions(index_dtype="int64", value_dtype="float64")],
    ids=["plain", "half", "dense-transforms", "wide"],
)
def test_gpu_backend_logic_matches_cpu(fake_gpu, tmp_path, dtype, opts):
    m = random_matrix(40, 90, dtype if dtype != "float16" else "float32", seed=9)
    if dtype == "float16":
        m.data = m.data.astype(np.float16).astype(np.float32)
    elif dtype.startswith("uint"):
        m.data = (m.data % 1000).astype(dtype)  # sums meaningful, and within float16's range
    path = write_archive(tmp_path / "a", m, data_dtype=dtype)
    gpu = get_backend(path, device="cuda", options=opts)
    assert type(gpu).__name__ == "GPUBackend" and gpu.reader == "host"
    cpu = get_backend(path, device="cpu", options=opts)
    rng = np.random.default_rng(0)
    for rows in (rng.integers(0, 40, 25), np.arange(3, 30), np.array([], np.int64), np.array([7, 7])):
        g, c = gpu.batch(rows), cpu.batch(rows)
        for name in ("crow", "col", "values", "dense"):
            a, b = getattr(g, name), getattr(c, name)
            assert (a is None) == (b is None)
            if a is not None:
                assert a.dtype == b.dtype, name
                torch.testing.assert_close(a, b, rtol=2.5e-7 if opts.log1p else 0, atol=0)
    gpu.close()


def test_gpu_backend_with_a_gene_remap(fake_gpu, tmp_path):
    m = random_matrix(30, 50, "uint16", seed=2)
    path = write_archive(tmp_path / "a", m)
    remap = np.full(50, -1, np.int64)
    remap[::2] = np.arange(25)[::-1]
    opts = BatchOptions(gene_remap=remap)
    g = get_backend(path, device="cuda", options=opts).batch(np.arange(30))
    c = get_backend(path, device="cpu", options=opts).batch(np.arange(30))
    assert g.shape == c.shape == (30, 25)
    for name in ("crow", "col", "values"):
        torch.testing.assert_close(getattr(g, name), getattr(c, name), rtol=0, atol=0)
