"""measure(): counts, time to first batch, memory peaks; the ceilings' bookkeeping."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from scdl_gpu.profiling._ceilings import bound, memcpy_bandwidth, read_bandwidth
from scdl_gpu.profiling._measure import host_rss, measure


def test_measure_counts_every_timed_cell_and_includes_set_up_in_the_first_batch():
    ticks = []

    def make():
        time.sleep(0.05)  # set-up, inside the first batch's time
        k = 0
        while True:
            k += 1
            yield {"X": torch.zeros(5 if k % 2 else 3, 4)}

    t = measure(make, "cpu", seconds=0.1, warmup=2, on_batch=lambda: ticks.append(1))
    assert t.first_batch_s >= 0.05
    assert t.batches == len(ticks) > 0
    # batches alternate 5, 3 rows after 1 + 2 untimed ones (5, 3, 5): the timed ones start with 3
    assert t.cells == sum(3 if i % 2 == 0 else 5 for i in range(t.batches))
    assert t.cells_per_s == pytest.approx(t.cells / t.seconds) and t.batches_per_s == pytest.approx(t.batches / t.seconds)
    assert t.host_rss_peak_bytes >= host_rss() // 2 > 0 and t.device_mem_peak_bytes is None


def test_measure_sees_a_memory_peak():
    def make():
        while True:
            big = np.ones(64 << 20, np.uint8)  # 64 MiB touched, then freed
            time.sleep(0.03)
            yield torch.zeros(int(big[0]), 2)

    before = host_rss()
    t = measure(make, "cpu", seconds=0.1, warmup=0)
    assert t.host_rss_peak_bytes >= before + (48 << 20) and t.host_anon_peak_bytes >= 48 << 20


def test_measure_closes_the_stream_on_error():
    closed = []

    def make():
        try:
            yield torch.zeros(2, 2)
            raise RuntimeError("bad batch")
        finally:
            closed.append(True)

    with pytest.raises(RuntimeError, match="bad batch"):
        measure(make, "cpu", seconds=0.1, warmup=1)
    assert closed == [True]


def test_read_bandwidth_reads_every_byte(tmp_path):
    files = [tmp_path / "a", tmp_path / "b"]
    files[0].write_bytes(b"x" * 3_000_000)
    files[1].write_bytes(b"y" * 123)
    warm = read_bandwidth(files)
    assert warm["bytes"] == 3_000_123 and warm["bytes_per_s"] > 0
    cold = read_bandwidth(files, cold=True)
    assert cold["bytes"] == 3_000_123 and "posix_fadvise" in cold["note"]
    assert read_bandwidth(files, max_bytes=1000)["bytes"] == 1000


def test_bound_is_the_slowest_applicable_ceiling():
    c = {"page_cache_read": {"bytes_per_s": 10e9}, "h2d": {"bytes_per_s": 25e9}, "cold_read": {"bytes_per_s": 1e9}}
    assert bound(c, "cpu") == ("page_cache_read", 10e9)
    assert bound(dict(c, h2d={"bytes_per_s": 5e9}), "cuda") == ("h2d", 5e9)
    assert bound({}, "cpu") == ("none", None)
    assert memcpy_bandwidth(1 << 20, repeats=1)["bytes_per_s"] > 0


def test_read_bandwidth_best_of_repeats(tmp_path):
    f = tmp_path / "a"
    f.write_bytes(b"z" * 100_000)
    r = read_bandwidth([f], repeats=3)
    assert r["bytes"] == 100_000 and r["bytes_per_s"] > 0
