"""One GPU backend's hold on its device: which GPU, which stream, and how memory crosses threads.

- **Device**: captured once (``"cuda:N"``, else torch's current device in the constructing thread)
  and made current by :meth:`DeviceContext.activate` in every thread that works for the backend:
  the CUDA current device is per host thread, so a prefetch thread would otherwise run on GPU 0.
- **Stream**: the backend's own torch stream, wrapped for CuPy, so CuPy kernels and torch ops of
  one batch are ordered on it. A batch is handed to the consumer with an event its stream waits
  on (:meth:`handoff`), whatever stream the consumer is on.
- **Outputs that outlive the batch call**: CuPy memory handed to torch by DLPack returns to
  CuPy's pool when the tensor dies, while the consumer's stream may still have reads of it queued.
  :meth:`keep_until_released` holds the memory until an event recorded on the releasing thread's
  current stream has passed (torch's ``record_stream`` rule, by hand).
- **Pinned staging**: host buffers reused batch after batch; :meth:`staging` waits for the event
  of the copies that last read a buffer before handing it out again (``ndarray.set`` copies
  asynchronously and does not keep its source alive).

Imports CuPy and torch's CUDA side only when constructed.
"""

from __future__ import annotations

import threading
import warnings
import weakref

import numpy as np
import torch


def device_index(device: str | None) -> int:
    """``"cuda:N"`` -> N; ``"cuda"``/``None`` -> torch's current device of the calling thread."""
    if device is not None and ":" in str(device):
        return int(str(device).split(":", 1)[1])
    return torch.cuda.current_device()


def _cupy_view(cp, ptr: int, index: int):
    """CuPy's handle on torch's stream ``ptr`` of device ``index``, owning nothing. CuPy 14 deprecates
    ``ExternalStream`` (a DeprecationWarning: an error under our tests) for ``Stream.from_external``, but the
    ``Stream`` that returns destroys the stream when collected (CuPy 14.2's ``Stream.__del__``): torch's pooled
    stream would go with it, and the next backend to draw it from the pool hangs. So the non-owning
    ``ExternalStream``, its notice silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cp.cuda.ExternalStream(ptr, index)


class DeviceContext:
    def __init__(self, device: str | None = None) -> None:
        import cupy as cp

        self.cp = cp
        self.index = device_index(device)
        with cp.cuda.Device(self.index):
            self.torch_stream = torch.cuda.Stream(device=self.index)
            self.stream = _cupy_view(cp, self.torch_stream.cuda_stream, self.index)
        self._held: list[tuple[torch.cuda.Event, object]] = []
        self._held_lock = threading.Lock()
        self._staging: dict[str, tuple[np.ndarray, torch.cuda.Event | None]] = {}
        self._handed: tuple[torch.cuda.Event, int] | None = None  #: the last hand-off's (event, consumer stream)

    # -- making the device and stream current ----------------------------------------------------
    def activate(self):
        """A context that makes this device and stream current for CuPy and torch in this thread."""
        return _Active(self)

    # -- hand-off -----------------------------------------------------------------------------------
    def record(self) -> torch.cuda.Event:
        ev = torch.cuda.Event()
        ev.record(self.torch_stream)
        return ev

    def handoff(self, ready: torch.cuda.Event, tensors) -> None:
        """In the consumer's thread: its current stream waits for the batch, and torch-allocated
        tensors are marked as used there (so their memory is not reused under its reads).

        A batch handed over with the event of the batch before, to the same stream, is of the same
        group (the event is recorded once per group): its tensors are views of the ones already
        marked, so nothing is done (``tensors`` is not even iterated)."""
        consumer = torch.cuda.current_stream(self.index)
        if consumer.cuda_stream == self.torch_stream.cuda_stream:
            return
        if self._handed is not None and self._handed[0] is ready and self._handed[1] == consumer.cuda_stream:
            return
        consumer.wait_event(ready)
        for t in tensors:
            t.record_stream(consumer)  # no-op for DLPack memory: keep_until_released covers that
        self._handed = (ready, consumer.cuda_stream)

    def keep_until_released(self, array) -> None:
        """Hold ``array``'s device memory past its death until the releasing thread's stream is
        past every queued use of it."""
        weakref.finalize(array, self._release, array.data)

    def _release(self, memptr) -> None:
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.index))
        with self._held_lock:
            self._held.append((ev, memptr))

    def collect(self) -> int:
        """Drop held memory whose streams have passed it; returns how many blocks are still held."""
        with self._held_lock:
            self._held = [(ev, m) for ev, m in self._held if not ev.query()]
            return len(self._held)

    # -- pinned staging -------------------------------------------------------------------------------
    def staging(self, name: str, n: int, dtype) -> np.ndarray:
        """A pinned host buffer of ``n`` items for ``name``, safe to overwrite: the copies that read
        it last have finished. Grown by doubling, never shrunk."""
        import cupyx

        buf, last_read = self._staging.get(name, (None, None))
        if last_read is not None:
            last_read.synchronize()  # synchronize! (only when the previous copy is still queued)
        nbytes = int(n) * np.dtype(dtype).itemsize
        if buf is None or buf.nbytes < nbytes:
            size = max(nbytes, 2 * (buf.nbytes if buf is not None else 0), 1 << 16)
            buf = cupyx.empty_pinned(size, np.uint8)
        self._staging[name] = (buf, None)
        return buf[:nbytes].view(dtype)

    def drop_staging(self, *names: str) -> None:
        """Let the staging buffers ``names`` go (once their copies are done: call after a synchronize)."""
        for name in names:
            self._staging.pop(name, None)

    def staged(self, name: str) -> None:
        """Mark ``name``'s staging buffer as read by copies queued on the stream just now."""
        buf, _ = self._staging[name]
        self._staging[name] = (buf, self.record())

    def upload(self, name: str, host: np.ndarray):
        """``host`` (1-D) copied to a new device array through the pinned staging buffer ``name``
        (not CuPy's pinned pool, whose blocks are handed out again while their copies may be queued)."""
        buf = self.staging(name, len(host), host.dtype)
        buf[...] = host
        dev = self.cp.empty(len(host), host.dtype)
        dev.set(buf)
        self.staged(name)
        return dev

    def synchronize(self) -> None:
        self.stream.synchronize()


class OnDevice:
    """The loader's hand-off hooks of a backend that works on ``self.ctx`` (a :class:`DeviceContext`):
    the producing thread runs on the backend's device and stream, each batch is handed over with
    an event the consumer's stream waits on."""

    ctx: DeviceContext

    def producing(self):
        return self.ctx.activate()

    def ready_event(self):
        return self.ctx.record()

    def handoff(self, ready, tensors) -> None:
        self.ctx.handoff(ready, tensors)

    @property
    def tensor_device(self) -> torch.device:
        """The torch device of this backend's batches."""
        return torch.device("cuda", self.ctx.index)


class _Active:
    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    def __enter__(self):
        ctx = self.ctx
        self._device = ctx.cp.cuda.Device(ctx.index)
        self._device.__enter__()
        self._torch = torch.cuda.stream(ctx.torch_stream)
        self._torch.__enter__()
        ctx.stream.__enter__()
        return ctx

    def __exit__(self, *exc) -> None:
        self.ctx.stream.__exit__(*exc)
        self._torch.__exit__(*exc)
        self._device.__exit__(*exc)
