"""Per-stage timing of the loading pipeline, with NVTX ranges so Nsight shows the same stages.

The stage names and the no-op default recorder live below the backend (``backend/_stages.py``);
``scdl-gpu profile`` swaps in a :class:`StageClock` for :data:`NO_STAGES`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from ..backend._stages import NO_STAGES, STAGES, NoStages  # noqa: F401  (re-exported)


class StageClock:
    """Accumulates wall time per stage (and device time, measured with CUDA events, on the GPU).

    ``sync`` waits for the device before and after each stage so that its wall time is its own
    work, not the queue of earlier launches: profiling serialises the pipeline, so its batches/s
    are lower than ``scdl-gpu bench``'s. Thread-safe: stages run in the prefetch thread.
    """

    enabled = True

    def __init__(self, sync: Callable[[], None] | None = None, nvtx: tuple[Callable, Callable] | None = None,
                 event: Callable[[], object] | None = None, elapsed_ms: Callable[[object, object], float] | None = None) -> None:
        self.wall_s: dict[str, float] = defaultdict(float)
        self.device_s: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._sync, self._nvtx, self._event, self._elapsed_ms = sync, nvtx, event, elapsed_ms
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self._sync is not None:
            self._sync()
        if self._nvtx is not None:
            self._nvtx[0](name)
        start = self._event() if self._event is not None else None
        t0 = time.perf_counter()
        try:
            yield
        finally:
            stop = self._event() if self._event is not None else None
            if self._sync is not None:
                self._sync()
            dt = time.perf_counter() - t0
            if self._nvtx is not None:
                self._nvtx[1]()
            dev = self._elapsed_ms(start, stop) / 1e3 if start is not None else 0.0
            with self._lock:
                self.wall_s[name] += dt
                self.device_s[name] += dev
                self.calls[name] += 1

    @classmethod
    def for_device(cls, device: str) -> "StageClock":
        """A clock for ``"cpu"`` (wall time only) or ``"cuda"`` (device syncs, CUDA events, NVTX)."""
        if device != "cuda":
            return cls()
        import cupy as cp

        def event():
            e = cp.cuda.Event()
            e.record()
            return e

        def elapsed_ms(a, b) -> float:
            b.synchronize()
            return cp.cuda.get_elapsed_time(a, b)

        nv = getattr(cp.cuda, "nvtx", None)  # CuPy built without NVTX has no ranges to push
        nvtx = (nv.RangePush, nv.RangePop) if nv is not None and getattr(nv, "available", True) else None
        return cls(sync=cp.cuda.Device().synchronize, nvtx=nvtx, event=event, elapsed_ms=elapsed_ms)
