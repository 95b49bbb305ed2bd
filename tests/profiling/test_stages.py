"""StageClock: accumulation, device hooks (sync, events, NVTX) and thread safety; the no-op default."""

from __future__ import annotations

import threading

from scdl_gpu.backend._base import Backend
from scdl_gpu.profiling import NO_STAGES, STAGES, StageClock


def test_default_is_a_shared_no_op():
    assert Backend.stages is NO_STAGES and not NO_STAGES.enabled
    with NO_STAGES("read"):
        pass
    assert NO_STAGES("read") is NO_STAGES("kernels")
    assert STAGES == ("sample", "read", "h2d", "kernels", "dlpack", "collate")


def test_clock_accumulates_and_calls_device_hooks_in_order():
    log = []
    clock = StageClock(sync=lambda: log.append("sync"), nvtx=(lambda n: log.append(f"push {n}"), lambda: log.append("pop")),
                       event=lambda: log.append("event") or len(log), elapsed_ms=lambda a, b: 2.0)
    for _ in range(3):
        with clock("kernels"):
            log.append("work")
    assert log[:7] == ["sync", "push kernels", "event", "work", "event", "sync", "pop"]
    assert clock.calls["kernels"] == 3 and clock.wall_s["kernels"] > 0
    assert clock.device_s["kernels"] == 3 * 2.0 / 1e3


def test_clock_records_a_stage_that_raises():
    clock = StageClock()
    try:
        with clock("read"):
            raise OSError("disk")
    except OSError:
        pass
    assert clock.calls["read"] == 1


def test_clock_is_thread_safe():
    clock = StageClock()

    def work():
        for _ in range(2000):
            with clock("read"):
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.calls["read"] == 8000


def test_cpu_clock_has_no_device_hooks():
    clock = StageClock.for_device("cpu")
    with clock("read"):
        pass
    assert clock.device_s["read"] == 0.0
