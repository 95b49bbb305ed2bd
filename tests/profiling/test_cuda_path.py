"""bench and profile down their ``cuda`` paths, without a GPU: CuPy's event, stream, memory and
NVTX calls answered by a stand-in (the GPU backend's stand-in of ``tests/backend``), so what this
checks is our orchestration: device syncs and events around each stage, NVTX ranges balanced,
the h2d ceiling and device-memory peaks reported. The real calls run on a GPU machine."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from scdl_gpu.profiling import run_bench, run_profile
from tests.backend import fake_gpu
from tests.backend.archives import random_matrix, write_archive


@pytest.fixture
def fake_cuda(monkeypatch):
    world = fake_gpu.install(monkeypatch)
    cp = sys.modules["cupy"]
    log = []

    class Event:
        clock = 0.0

        def record(self, stream=None):
            Event.clock += 1.0
            self.t = Event.clock

        def synchronize(self):
            log.append("event-sync")

    class Device(cp.cuda.Device):  # the world's device context, logging syncs here too
        def synchronize(self):
            log.append("sync")

    class Stream:
        def synchronize(self):
            log.append("stream-sync")

    cuda = types.SimpleNamespace(
        Event=Event, Device=Device, get_current_stream=lambda: Stream(), ExternalStream=cp.cuda.ExternalStream,
        get_elapsed_time=lambda a, b: (b.t - a.t) * 0.5,  # ms
        runtime=types.SimpleNamespace(memGetInfo=lambda: (60 << 30, 80 << 30),
                                      getDeviceProperties=lambda i: {"name": b"Stand-in GPU"}),
        nvtx=types.SimpleNamespace(available=True, RangePush=lambda name: log.append(f"push {name}"),
                                   RangePop=lambda: log.append("pop")),
    )
    monkeypatch.setattr(cp, "cuda", cuda, raising=False)
    monkeypatch.setattr(cp, "uint8", np.uint8, raising=False)
    monkeypatch.setattr(cp, "copyto", np.copyto, raising=False)
    world.free_bytes = 60 << 30
    device_array = type(cp.empty(1, np.uint8))
    monkeypatch.setattr(device_array, "set", lambda self, host, stream=None: self.__setitem__(Ellipsis, host))
    return log


def test_profile_on_cuda_times_h2d_and_events_and_balances_nvtx(fake_cuda, tmp_path):
    path = write_archive(tmp_path / "a", random_matrix(80, 120, "uint16", seed=2), data_dtype="uint16")
    r = run_profile(path, device="cuda", shuffle="random", batch_size=16, prefetch=0, seconds=0.2, warmup=1,
                    residency="stream")
    stages = {s["stage"]: s for s in r["stages"]}
    assert list(stages) == ["sample", "read", "h2d", "kernels", "dlpack", "collate"]
    for s in stages.values():
        assert s["device_ms_per_batch"] == pytest.approx(0.5 * s["calls"] / r["batches"])  # one event pair per call
    pushes = [e for e in fake_cuda if e.startswith("push")]
    assert len(pushes) == fake_cuda.count("pop") > 0
    assert r["system"]["gpu"] == "Stand-in GPU" and r["settings"]["device"] == "cuda"


def test_bench_on_cuda_reports_h2d_bound_and_device_memory(fake_cuda, tmp_path):
    path = write_archive(tmp_path / "a", random_matrix(80, 120, "uint16", seed=3), data_dtype="uint16")
    r = run_bench(path, device="cuda", shuffles=["block"], batch_sizes=[16], seconds=0.1, warmup=0, cold=False,
                  residencies=["stream"])
    assert set(r["ceilings"]) == {"page_cache_read", "memcpy", "h2d", "hbm_copy"}
    h2d = r["ceilings"]["h2d"]["bytes_per_s"]
    assert h2d == pytest.approx((256 << 20) / 0.5e-3)  # best of the timed copies: one event tick = 0.5 ms
    assert r["ceilings"]["hbm_copy"]["bytes_per_s"] == pytest.approx((512 << 20) / 0.5e-3)
    assert r["bound"]["name"] == min(("page_cache_read", r["ceilings"]["page_cache_read"]["bytes_per_s"]),
                                     ("h2d", h2d), key=lambda x: x[1])[0]
    x = r["results"][0]
    assert x["device"] == "cuda" and x["device_mem_peak_bytes"] == 20 << 30 and x["device_mem_added_bytes"] == 0
    assert "sync" in fake_cuda  # the window ends on a device synchronisation
