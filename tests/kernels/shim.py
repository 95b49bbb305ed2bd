"""Run a real kernel file (``kernels/csr_batch.cu``, ``kernels/gather.cu``, ``kernels/decode.cu``) on the CPU: g++ builds it with
``cuda_cpu_shim.h`` into a shared library whose ``extern "C"`` launchers walk a real grid (every block,
every thread, one after another) and call the kernel body; Python calls them through ctypes with NumPy
arrays.

``build(tmp_dir, file)`` compiles one file (about 3 s for csr_batch.cu); ``fixture(file)`` gives a
test module a session fixture that builds it once. ``Kernels`` has every launcher, but only that
file's resolve.
"""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
KERNEL_DIR = REPO / "kernels"
SHIM_HEADER = Path(__file__).resolve().parent / "cuda_cpu_shim.h"

# Short code -> (C++ type as in the kernels' instantiations, NumPy dtype).
TV = {
    "u8": ("uint8_t", np.uint8),
    "u16": ("uint16_t", np.uint16),
    "u32": ("uint32_t", np.uint32),
    "u64": ("unsigned long long", np.uint64),
    "f32": ("float", np.float32),
    "f64": ("double", np.float64),
}
TC = {k: TV[k] for k in ("u8", "u16", "u32", "u64")}
OV = {k: TV[k] for k in ("f32", "f64")}
OI = {"i32": ("int", np.int32), "i64": ("long long", np.int64)}
IT = {k: TV[k] for k in ("u8", "u16", "u32", "u64")}  # the decode kernels' unsigned item types
CODE = {np.dtype(dt): code for table in (TV, OI) for code, (_, dt) in table.items()}

# Each kernel's parameters: (C++ type, ctypes type); template parameters are written {TV} and so on.
P, LL, INT = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
ULLP = "const unsigned long long*"  # a table of device (here: host) addresses
PARAMS = {
    "keep_flags": [("const {TC}*", P), ("long long", LL), ("const long long*", P), ("int*", P)],
    "row_sums": [
        ("const {TV}*", P), ("const {TC}*", P), ("const long long*", P), ("long long", LL),
        ("const long long*", P), ("double*", P),
    ],
    "emit": [
        ("const {TV}*", P), ("const {TC}*", P), ("long long", LL), ("const long long*", P), ("long long", LL),
        ("const long long*", P), ("const long long*", P), ("const double*", P), ("int", INT),
        ("{OV}*", P), ("{OI}*", P),
    ],
    "densify": [
        ("const {TV}*", P), ("const {TC}*", P), ("long long", LL), ("const long long*", P), ("long long", LL),
        ("const long long*", P), ("const double*", P), ("int", INT), ("long long", LL), ("{OV}*", P),
    ],
    "gather": [
        ("const {TV}*", P), ("const {TC}*", P), ("long long", LL), ("const long long*", P), ("const long long*", P),
        ("long long", LL), ("long long", LL), ("{TV}*", P), ("{TC}*", P), ("int*", P),
    ],
    "gather_chunks": [
        (ULLP, P), (ULLP, P), ("const long long*", P), ("const long long*", P), ("const long long*", P),
        ("const long long*", P), ("const long long*", P), ("long long", LL), ("long long", LL), ("{TV}*", P),
        ("{TC}*", P), ("int*", P),
    ],
    "unshuffle": [("const unsigned char*", P), ("const long long*", P), (ULLP, P), ("const long long*", P), ("long long", LL)],
    "delta_sums": [(ULLP, P), ("const long long*", P), ("const long long*", P), ("long long", LL), ("long long", LL), ("{IT}*", P)],
    "delta_scan": [("const long long*", P), ("long long", LL), ("{IT}*", P)],
    "delta_apply": [
        (ULLP, P), ("const long long*", P), ("const long long*", P), ("long long", LL), ("long long", LL),
        ("const {IT}*", P),
    ],
    "crc32c_blocks": [(ULLP, P), ("const long long*", P), ("const unsigned int*", P), ("const unsigned int*", P),
                      ("long long", LL), ("unsigned int*", P)],
}
# The kernels each file defines; ``build`` makes one library per file.
FILES = {"csr_batch.cu": ("keep_flags", "row_sums", "emit", "densify"), "gather.cu": ("gather", "gather_chunks"),
         "decode.cu": ("unshuffle", "delta_sums", "delta_scan", "delta_apply", "crc32c_blocks")}
TEMPLATE = {
    "keep_flags": ("TC",),
    "row_sums": ("TV", "TC"),
    "emit": ("TV", "TC", "OV", "OI"),
    "densify": ("TV", "TC", "OV"),
    "gather": ("TV", "TC"),
    "gather_chunks": ("TV", "TC"),
    "unshuffle": ("IT",),
    "delta_sums": ("IT",),
    "delta_scan": ("IT",),
    "delta_apply": ("IT",),
    "crc32c_blocks": (),
}
TABLES = {"TV": TV, "TC": TC, "OV": OV, "OI": OI, "IT": IT}

PRELUDE = """
// One launch: a real 1-D grid walked block by block, thread by thread.
template <typename... A, typename... B>
static void scdl_shim_launch(void (*kernel)(A...), long long grid, int block, B... args)
{
    gridDim.x = (unsigned)grid;
    blockDim.x = (unsigned)block;
    for (long long b = 0; b < grid; ++b) {
        blockIdx.x = (unsigned)b;
        for (int t = 0; t < block; ++t) {
            threadIdx.x = (unsigned)t;
            kernel(args...);
        }
    }
}
"""


def symbol(kernel: str, *codes: str) -> str:
    return "launch_" + "_".join((kernel, *codes))


def _combos(kernel: str):
    return itertools.product(*(TABLES[t] for t in TEMPLATE[kernel]))


def wrapper_source(file: str) -> str:
    """The kernel file plus one ``extern "C"`` launcher per instantiation (single translation unit)."""
    out = [f'#include "{KERNEL_DIR / file}"', PRELUDE]
    for kernel in FILES[file]:
        params = PARAMS[kernel]
        for codes in _combos(kernel):
            types = {t: TABLES[t][c][0] for t, c in zip(TEMPLATE[kernel], codes)}
            decl = ", ".join(f"{ctype.format(**types)} a{k}" for k, (ctype, _) in enumerate(params))
            args = ", ".join(f"a{k}" for k in range(len(params)))
            targs = ", ".join(types[t] for t in TEMPLATE[kernel])
            name = f"scdl_{kernel}<{targs}>" if targs else f"scdl_{kernel}"
            out.append(
                f'extern "C" void {symbol(kernel, *codes)}(long long grid, int block, {decl})\n'
                f"{{ scdl_shim_launch({name}, grid, block, {args}); }}"
            )
    return "\n".join(out) + "\n"


def build(tmp_dir: Path, file: str) -> Kernels:
    """Compile the kernel file ``file`` (a name in ``FILES``) with g++ (skips the calling test when g++
    is missing)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not on PATH: cannot run the CUDA kernels on the CPU")
    stem = Path(file).stem
    src = tmp_dir / f"{stem}_shim.cpp"
    lib = tmp_dir / f"{stem}_shim.so"
    src.write_text(wrapper_source(file))
    cmd = [gxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
           "-include", str(SHIM_HEADER), str(src), "-o", str(lib)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"g++ failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stderr}")
    return Kernels(ctypes.CDLL(str(lib)))


def fixture(file: str):
    """A session-scoped pytest fixture that builds ``file`` once: ``kernels = shim.fixture("gather.cu")``."""

    @pytest.fixture(scope="session")
    def kernels(tmp_path_factory) -> Kernels:
        return build(tmp_path_factory.mktemp(f"{Path(file).stem}_shim"), file)

    return kernels


def _ptr(a: np.ndarray | None, dtype=None) -> int | None:
    """Address of a C-contiguous array (None -> nullptr); checks the dtype the kernel will read."""
    if a is None:
        return None
    assert a.flags.c_contiguous, "kernel arrays must be C-contiguous"
    if dtype is not None:
        assert a.dtype == np.dtype(dtype), f"expected {np.dtype(dtype)}, got {a.dtype}"
    return a.ctypes.data


@dataclass
class Kernels:
    """Launchers with the kernels' own argument order; outputs are written in place, as on the GPU.

    ``grid`` defaults to ``max(1, ceil(work / block))``: at least one block even when there is no
    work, so the tests exercise the kernels' ``i >= n`` guard (the real caller skips such launches).
    """

    lib: ctypes.CDLL

    def _fn(self, kernel: str, *codes: str):
        fn = getattr(self.lib, symbol(kernel, *codes))
        fn.argtypes = [LL, INT] + [ct for _, ct in PARAMS[kernel]]
        fn.restype = None
        return fn

    @staticmethod
    def _grid(work: int, block: int, grid: int | None) -> int:
        return max(1, -(-work // block)) if grid is None else grid

    def keep_flags(self, cols, remap, flags, *, block=128, grid=None):
        n = len(cols)
        fn = self._fn("keep_flags", CODE[cols.dtype])
        fn(self._grid(n, block, grid), block, _ptr(cols), n, _ptr(remap, np.int64), _ptr(flags, np.int32))

    def row_sums(self, vals, cols, in_ptr, remap, sums, *, block=128, grid=None):
        n_rows = len(in_ptr) - 1
        fn = self._fn("row_sums", CODE[vals.dtype], CODE[cols.dtype])
        fn(self._grid(n_rows, block, grid), block, _ptr(vals), _ptr(cols), _ptr(in_ptr, np.int64), n_rows,
           _ptr(remap, np.int64), _ptr(sums, np.float64))  # fmt: skip

    def emit(self, vals, cols, in_ptr, remap, pos, row_scale, log1p, out_vals, out_cols, *, block=128, grid=None):
        n, n_rows = int(in_ptr[-1]), len(in_ptr) - 1
        fn = self._fn("emit", CODE[vals.dtype], CODE[cols.dtype], CODE[out_vals.dtype], CODE[out_cols.dtype])
        fn(self._grid(n, block, grid), block, _ptr(vals), _ptr(cols), n, _ptr(in_ptr, np.int64), n_rows,
           _ptr(remap, np.int64), _ptr(pos, np.int64), _ptr(row_scale, np.float64), int(log1p),
           _ptr(out_vals), _ptr(out_cols))  # fmt: skip

    def densify(self, vals, cols, in_ptr, remap, row_scale, log1p, out, *, block=128, grid=None):
        n, n_rows = int(in_ptr[-1]), len(in_ptr) - 1
        assert out.ndim == 2 and out.shape[0] >= n_rows
        fn = self._fn("densify", CODE[vals.dtype], CODE[cols.dtype], CODE[out.dtype])
        fn(self._grid(n, block, grid), block, _ptr(vals), _ptr(cols), n, _ptr(in_ptr, np.int64), n_rows,
           _ptr(remap, np.int64), _ptr(row_scale, np.float64), int(log1p), out.shape[1], _ptr(out))  # fmt: skip

    def gather(self, data, cols, src_start, out_ptr, width, out_vals, out_cols, err, *, block=128, grid=None):
        n, n_rows = int(out_ptr[-1]), len(out_ptr) - 1
        assert len(src_start) >= n_rows and len(out_vals) >= n and len(out_cols) >= n and err.shape == (1,)
        fn = self._fn("gather", CODE[data.dtype], CODE[cols.dtype])  # 32 threads per row, as the backend launches
        fn(self._grid(32 * n_rows if n else 0, block, grid), block, _ptr(data), _ptr(cols), len(data), _ptr(src_start, np.int64),
           _ptr(out_ptr, np.int64), n_rows, width, _ptr(out_vals, data.dtype), _ptr(out_cols, cols.dtype),
           _ptr(err, np.int32))  # fmt: skip

    def gather_chunks(self, chunk_vals, chunk_cols, chunk_len, row_chunk, src_start, row_ptr, dst_start, width,
                      out_vals, out_cols, err, *, block=128, grid=None):
        """``chunk_vals``/``chunk_cols``: int64 tables of the chunks' addresses (see ``addresses``)."""
        n, n_rows = int(row_ptr[-1]), len(row_ptr) - 1
        fn = self._fn("gather_chunks", CODE[out_vals.dtype], CODE[out_cols.dtype])
        fn(self._grid(n, block, grid), block, _ptr(chunk_vals, np.int64), _ptr(chunk_cols, np.int64),
           _ptr(chunk_len, np.int64), _ptr(row_chunk, np.int64), _ptr(src_start, np.int64), _ptr(row_ptr, np.int64),
           _ptr(dst_start, np.int64), n_rows, width, _ptr(out_vals), _ptr(out_cols), _ptr(err, np.int32))  # fmt: skip

    def unshuffle(self, item, src, frame_src, frame_dst, item_ptr, *, block=128, grid=None):
        n_frames = len(item_ptr) - 1
        fn = self._fn("unshuffle", CODE[np.dtype(item)])
        fn(self._grid(int(item_ptr[-1]), block, grid), block, _ptr(src, np.uint8), _ptr(frame_src, np.int64),
           _ptr(frame_dst, np.int64), _ptr(item_ptr, np.int64), n_frames)  # fmt: skip

    def delta_sums(self, frame_ptr, item_ptr, seg_ptr, seg, seg_sums, *, block=128, grid=None):
        n_frames = len(item_ptr) - 1
        fn = self._fn("delta_sums", CODE[seg_sums.dtype])
        fn(self._grid(int(seg_ptr[-1]), block, grid), block, _ptr(frame_ptr, np.int64), _ptr(item_ptr, np.int64),
           _ptr(seg_ptr, np.int64), n_frames, seg, _ptr(seg_sums))  # fmt: skip

    def delta_scan(self, seg_ptr, seg_sums, *, block=128, grid=None):
        n_frames = len(seg_ptr) - 1
        fn = self._fn("delta_scan", CODE[seg_sums.dtype])
        fn(self._grid(n_frames, block, grid), block, _ptr(seg_ptr, np.int64), n_frames, _ptr(seg_sums))

    def delta_apply(self, frame_ptr, item_ptr, seg_ptr, seg, seg_sums, *, block=128, grid=None):
        n_frames = len(item_ptr) - 1
        fn = self._fn("delta_apply", CODE[seg_sums.dtype])
        fn(self._grid(int(seg_ptr[-1]), block, grid), block, _ptr(frame_ptr, np.int64), _ptr(item_ptr, np.int64),
           _ptr(seg_ptr, np.int64), n_frames, seg, _ptr(seg_sums))  # fmt: skip

    def crc32c_blocks(self, block_ptr, block_len, block_init, table, out, *, block=128, grid=None):
        n = len(block_ptr)
        fn = self._fn("crc32c_blocks")
        fn(self._grid(n, block, grid), block, _ptr(block_ptr, np.int64), _ptr(block_len, np.int64),
           _ptr(block_init, np.uint32), _ptr(table, np.uint32), n, _ptr(out, np.uint32))  # fmt: skip


def addresses(arrays) -> np.ndarray:
    """The host addresses of ``arrays`` as the int64 table a kernel reads as ``unsigned long long``."""
    return np.array([a.ctypes.data for a in arrays], dtype=np.int64)
