"""Timing a stream of batches: cells/s, batches/s, time to first batch, host and device memory peaks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from .._memory import host_memory


def host_rss() -> int:
    return host_memory()[0]


def device_used(device: str) -> Callable[[], int] | None:
    """Bytes in use on the current CUDA device (all allocators: CuPy's pool and torch's), or None."""
    if device != "cuda":
        return None
    import cupy as cp

    def used() -> int:
        free, total = cp.cuda.runtime.memGetInfo()
        return int(total - free)

    return used


def synchronize(device: str) -> None:
    """Wait until every launched device operation is done (so delivered tensors are complete)."""
    if device == "cuda":
        import cupy as cp

        cp.cuda.Device().synchronize()


class PeakSampler:
    """Samples host RSS (and device memory) every ``interval`` seconds in a thread; keeps the peaks."""

    def __init__(self, device: str, interval: float = 0.01) -> None:
        self._device_used = device_used(device)
        self.host_peak, self.anon_peak = host_memory()
        self.device_base = self._device_used() if self._device_used else 0
        self.device_peak = self.device_base
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scdl-peak-sampler", daemon=True)

    def _sample(self) -> None:
        rss, anon = host_memory()
        self.host_peak, self.anon_peak = max(self.host_peak, rss), max(self.anon_peak, anon)
        if self._device_used is not None:
            self.device_peak = max(self.device_peak, self._device_used())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class Throughput:
    """One timed window. ``wait_s``: time the consumer spent inside ``next()`` (all of it when the
    consumer does nothing else). ``first_batch_s``: from creating the stream to its first batch, synced.
    Memory peaks are absolute: host RSS (which counts the archive's mapped pages) and its anonymous
    part (the loader's own buffers), and device memory in use on the whole device."""

    cells: int
    batches: int
    seconds: float
    cells_per_s: float
    batches_per_s: float
    wait_s: float
    first_batch_s: float
    host_rss_peak_bytes: int
    host_anon_peak_bytes: int
    device_mem_peak_bytes: int | None
    device_mem_added_bytes: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def batch_rows(batch) -> int:
    """Cells in a batch: a loader dict (``X``) or a tensor."""
    x = batch["X"] if isinstance(batch, dict) else batch
    return int(x.shape[0])


def measure(make_stream: Callable[[], Iterator], device: str, seconds: float, warmup: int = 3,
            on_batch: Callable[[], None] | None = None, on_window: Callable[[], None] | None = None) -> Throughput:
    """Time ``make_stream()``'s batches: the first (set-up included), ``warmup`` more untimed, then as
    many as fit in ``seconds``; the device is synchronised before the clock stops, so every counted
    batch is complete. ``on_window`` is called just before the timed window (to start a stage
    clock), ``on_batch`` after each timed batch (a progress bar)."""
    with PeakSampler(device) as peaks:
        t0 = time.perf_counter()
        stream = make_stream()
        try:
            batch_rows(next(stream))
            synchronize(device)
            first = time.perf_counter() - t0
            for _ in range(warmup):
                next(stream)
            synchronize(device)
            if on_window is not None:
                on_window()
            cells = n = 0
            wait = 0.0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                w = time.perf_counter()
                cells += batch_rows(next(stream))
                wait += time.perf_counter() - w
                n += 1
                if on_batch is not None:
                    on_batch()
            synchronize(device)
            dt = time.perf_counter() - t0
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    dev_peak = peaks.device_peak if device == "cuda" else None
    return Throughput(cells=cells, batches=n, seconds=dt, cells_per_s=cells / dt, batches_per_s=n / dt, wait_s=wait,
                      first_batch_s=first, host_rss_peak_bytes=peaks.host_peak, host_anon_peak_bytes=peaks.anon_peak,
                      device_mem_peak_bytes=dev_peak,
                      device_mem_added_bytes=None if dev_peak is None else max(dev_peak - peaks.device_base, 0))


def loader_stream(loader) -> Iterator[dict]:
    """A loader's batches across epochs, forever (each pass is the next epoch); closing it stops
    the loader's prefetch thread."""
    while True:
        it = iter(loader)
        try:
            yield from it
        finally:
            it.close()
