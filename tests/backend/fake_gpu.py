"""A GPU made of NumPy, for testing the GPU backend's orchestration on a machine without one.

CuPy is replaced by a module whose arrays are NumPy arrays with CuPy's transfer methods, the CUDA
launchers by the NumPy references, and torch's CUDA streams and events by objects that keep a log:
which device and stream were current (per thread) at each launch and copy, which events were
waited on, which device memory was held and released. Events complete only when the test says so
(``World.finish_all()``) or when someone synchronizes on them, so "a copy still queued" can be
staged deliberately.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types

import numpy as np
import torch

from scdl_gpu.backend import _crc32c
from scdl_gpu.backend import _decode_reference as dref
from scdl_gpu.backend import _reference as ref


class World:
    """The shared state of the fake GPU: per-thread current device/stream, and logs."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.log: list[tuple] = []
        self.events: list[Event] = []
        self.free_bytes = 1 << 40
        self.lock = threading.Lock()

    def current(self) -> tuple[int, int]:
        return getattr(self.local, "device", 0), getattr(self.local, "stream", 0)

    def note(self, *entry) -> None:
        with self.lock:
            self.log.append(entry)

    def finish_all(self) -> None:
        for e in self.events:
            e.done = True


class Event:
    def __init__(self, world: World) -> None:
        self.world, self.done, self.stream = world, True, None
        world.events.append(self)

    def record(self, stream=None) -> None:
        self.stream = stream.cuda_stream if stream is not None else self.world.current()[1]
        self.done = False  # completes when the test finishes the queue, or someone waits on it

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.world.note("sync_event", id(self))
        self.done = True


class Stream:
    _next = [100]

    def __init__(self, world: World, device: int = 0, ptr: int | None = None) -> None:
        self.world, self.device = world, device
        if ptr is None:
            ptr = Stream._next[0]
            Stream._next[0] += 1
        self.cuda_stream = ptr

    def wait_event(self, ev) -> None:
        self.world.note("wait_event", self.cuda_stream, id(ev))

    def synchronize(self) -> None:
        self.world.note("sync_stream", self.cuda_stream)
        for e in self.world.events:
            if e.stream == self.cuda_stream:
                e.done = True

    @contextlib.contextmanager
    def _current(self):
        local = self.world.local
        old = getattr(local, "stream", 0), getattr(local, "device", 0)
        local.stream, local.device = self.cuda_stream, self.device
        try:
            yield self
        finally:
            local.stream, local.device = old

    def __enter__(self):
        self._cm = self._current()
        return self._cm.__enter__()

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


class Memory:
    """What ``array.data`` returns: a token for one array's device memory."""

    def __init__(self, world: World, nbytes: int) -> None:
        self.world, self.nbytes = world, nbytes


def make_world_modules(world: World):
    """``(cupy, cupyx, torch_cuda_patches)`` bound to ``world``."""

    class DeviceArray(np.ndarray):
        @property
        def data(self):  # noqa: D401 - CuPy's MemoryPointer stand-in (a NumPy memoryview would keep us alive)
            return Memory(world, self.nbytes)

        def set(self, host):
            world.note("h2d", *world.current(), host.ctypes.data, self.nbytes)
            self[...] = host

        def get(self, stream=None, out=None, blocking=True):
            world.note("d2h", *world.current(), self.nbytes, blocking)
            if out is None:
                return np.asarray(self).copy()
            out[...] = self  # the stand-in's kernels have run already: the bytes are final
            return out

    def dev(a):
        return np.asarray(a).view(DeviceArray)

    cp = types.ModuleType("cupy")
    for name in ("cumsum", "where", "float16", "float32", "float64", "int32", "int64", "count_nonzero", "uint16"):
        setattr(cp, name, getattr(np, name))
    cp.empty = lambda n, dtype=np.float64: dev(np.empty(n, dtype))
    cp.zeros = lambda n, dtype=np.float64: dev(np.zeros(n, dtype))
    cp.asarray = lambda a, dtype=None: dev(np.asarray(a, dtype=dtype))
    cp.ndarray = DeviceArray

    class Device:
        def __init__(self, index=None):
            self.index = self.id = world.current()[0] if index is None else index

        def synchronize(self):
            world.note("sync_device", self.index)

        def __enter__(self):
            self._old = getattr(world.local, "device", 0)
            world.local.device = self.index
            return self

        def __exit__(self, *exc):
            world.local.device = self._old

    runtime = types.SimpleNamespace(memGetInfo=lambda: (world.free_bytes, world.free_bytes))
    cp.cuda = types.SimpleNamespace(Device=Device, ExternalStream=lambda ptr, device=0: Stream(world, device, ptr),
                                    runtime=runtime)
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda n, dtype: np.empty(n, dtype)

    patches = {
        "Stream": lambda device=None: Stream(world, device or 0),
        "Event": lambda: Event(world),
        "current_stream": lambda device=None: Stream(world, device or 0, world.current()[1]),
        "current_device": lambda: world.current()[0],
        "stream": lambda s: s._current(),
    }
    return cp, cupyx, patches, dev


class ReferenceKernels:
    """The CUDA launchers' interface, answered by the NumPy references; logs device and stream."""

    world: World = None  # set by the fixture
    dev = None

    def __init__(self, value_dtype, col_dtype):
        self.value_dtype, self.col_dtype = value_dtype, col_dtype

    def _launch(self, name, vals=None, cols=None):
        if vals is not None:
            assert vals.dtype == self.value_dtype and cols.dtype == self.col_dtype  # staged as declared
        self.world.note("launch", *self.world.current(), name)

    def keep_flags(self, cols, remap):
        self._launch("keep_flags")
        return self.dev(ref.keep_flags(cols, remap))

    def row_sums(self, vals, cols, in_ptr, remap=None):
        self._launch("row_sums", vals, cols)
        return self.dev(ref.row_sums(vals, cols, in_ptr, remap))

    def emit(self, vals, cols, in_ptr, remap=None, pos=None, row_scale=None, log1p=False, out_dtype="float32",
             index_dtype="int32", n_out=None):
        self._launch("emit", vals, cols)
        out = ref.emit(vals, cols, in_ptr, remap, pos, row_scale, log1p, out_dtype, index_dtype)
        assert n_out is None or n_out == len(out[0])
        return tuple(self.dev(a) for a in out)

    def densify(self, vals, cols, in_ptr, remap=None, row_scale=None, log1p=False, n_out_cols=0, out_dtype="float32"):
        self._launch("densify", vals, cols)
        return self.dev(ref.densify(vals, cols, in_ptr, remap, row_scale, log1p, n_out_cols=n_out_cols, out_dtype=out_dtype))

    def gather(self, data, cols, src_start, out_ptr, n_out, width, err):
        self._launch("gather")
        v, c, bits = ref.gather(np.asarray(data), np.asarray(cols), src_start, out_ptr, width)
        assert len(v) == n_out
        err[0] |= bits
        return self.dev(v), self.dev(c)

    def gather_chunks(self, chunks, row_chunk, src_start, row_ptr, dst_start, out_vals, out_cols, width, err, upload):
        self._launch("gather_chunks")
        err[0] |= ref.gather_chunks([np.asarray(v) for v, _ in chunks], [np.asarray(c) for _, c in chunks], row_chunk,
                                    src_start, row_ptr, dst_start, width, out_vals, out_cols)


class ReferenceDecodeKernels:
    """``DecodeKernels`` answered by the NumPy twins of ``kernels/decode.cu`` (the CRC through the same
    block layout and host chaining as the real launcher)."""

    world: World = None

    def __init__(self, upload):
        self.upload = upload

    def unshuffle(self, src, frame_src, outs):
        self.world.note("launch", *self.world.current(), "unshuffle")
        dref.unshuffle(np.asarray(src), frame_src, outs)

    def delta(self, frames):
        self.world.note("launch", *self.world.current(), "delta")
        dref.delta_decode(frames)

    def crc32c(self, arrays):
        self.world.note("launch", *self.world.current(), "crc32c")
        nbytes = [a.nbytes for a in arrays]
        array, offset, length, start = _crc32c.block_layout(nbytes)
        raw = [np.asarray(a).view(np.uint8) for a in arrays]
        regs = dref.crc32c_blocks([raw[a][o : o + n] for a, o, n in zip(array, offset, length)], start)
        return _crc32c.chain(regs, nbytes)


def install(monkeypatch) -> World:
    """Replace CuPy, the launchers and torch's CUDA streams/events with the fake GPU."""
    world = World()
    cp, cupyx, patches, dev = make_world_modules(world)
    ReferenceKernels.world, ReferenceKernels.dev = world, staticmethod(dev)
    ReferenceDecodeKernels.world = world
    cuda_mod = types.ModuleType("scdl_gpu.backend._cuda")
    cuda_mod.CudaKernels = ReferenceKernels
    cuda_mod.DecodeKernels = ReferenceDecodeKernels
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setitem(sys.modules, "scdl_gpu.backend._cuda", cuda_mod)
    for name, fn in patches.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    import scdl_gpu.backend as backend
    from scdl_gpu.backend import _gpu, _pinned
    from scdl_gpu.loader import _loader

    for mod in (_gpu, backend, _loader):
        monkeypatch.setattr(mod, "resolve_device", lambda device: "cuda" if str(device).startswith("cuda") else "cpu")
    monkeypatch.setattr(_gpu, "kvikio_available", lambda: False)
    # the stand-in's device tensors are CPU tensors (see from_dlpack below)
    monkeypatch.setattr(_gpu.GPUBackend, "tensor_device", property(lambda self: torch.device("cpu")))
    monkeypatch.setattr(_pinned, "mapped_empty", lambda n, dtype: (lambda h: (h, h.view(cp.ndarray)))(np.empty(n, dtype)))
    # stand-in arrays are host memory; copying also lets them die at once, as a released batch would
    monkeypatch.setattr(torch, "from_dlpack", lambda a: torch.from_numpy(np.array(a)))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: world.note("record_stream", s.cuda_stream))
    monkeypatch.setitem(sys.modules, "nvidia.nvcomp", None)  # no nvCOMP unless a test installs fake_nvcomp
    return world
