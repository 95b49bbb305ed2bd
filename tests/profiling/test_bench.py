"""run_bench / run_profile on a real (bundled) archive: what they measure and report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scdl_gpu import SingleCellLoader
from scdl_gpu.archive import open_arrays
from scdl_gpu.profiling import StageClock, format_bench, format_profile, run_bench, run_profile

BENCH_FIELDS = {"shuffle": str, "batch_size": int, "prefetch": int, "device": str, "cells": int, "batches": int,
                "seconds": float, "cells_per_s": float, "batches_per_s": float, "wait_s": float, "first_batch_s": float,
                "host_rss_peak_bytes": int, "host_anon_peak_bytes": int, "bytes_per_s": float, "fraction_of_bound": float}


def test_bench_grid_and_schema(bundled_archive):
    r = run_bench(bundled_archive, device="cpu", shuffles=["random", "block"], batch_sizes=[8, 32], prefetch=[0, 2],
                  seconds=0.2, warmup=1)
    json.loads(json.dumps(r))  # JSON-ready as it is
    assert r["schema"] == "scdl-gpu-bench/1" and r["kind"] == "bench"
    assert [(x["shuffle"], x["batch_size"], x["prefetch"]) for x in r["results"]] == [
        (s, b, p) for s in ("random", "block") for b in (8, 32) for p in (0, 2)]
    a = r["archive"]
    assert a["n_rows"] == open_arrays(bundled_archive).n_rows
    assert a["bytes_per_cell"] > 0 and set(a["dtypes"]) == {"data.npy", "col_ptr.npy", "row_ptr.npy"}
    for x in r["results"]:
        for key, typ in BENCH_FIELDS.items():
            assert isinstance(x[key], typ), (key, x[key])
        assert x["device_mem_peak_bytes"] is None and x["device_mem_added_bytes"] is None  # CPU run
        assert x["batches"] > 0 and x["cells"] >= x["batches"]  # the last batch of an epoch may be short
        assert x["cells"] <= x["batches"] * x["batch_size"]
        assert np.isclose(x["cells_per_s"], x["cells"] / x["seconds"]) and x["first_batch_s"] > 0
        assert np.isclose(x["fraction_of_bound"], x["bytes_per_s"] / r["bound"]["bytes_per_s"])
    c = r["ceilings"]
    files = [bundled_archive / "data.npy", bundled_archive / "col_ptr.npy"]
    assert c["page_cache_read"]["bytes"] == sum(f.stat().st_size for f in files)
    assert c["cold_read"]["bytes"] == c["page_cache_read"]["bytes"] and "posix_fadvise" in c["cold_read"]["note"]
    assert c["memcpy"]["bytes_per_s"] > 0 and "h2d" not in c
    assert r["bound"]["name"] == "page_cache_read"
    assert r["system"]["device"] == "cpu" and r["system"]["gpu"] is None
    text = format_bench(r)
    assert "cells/s" in text and "of bound" in text and text.count("\n") >= 2 + len(r["results"])


def test_bench_without_ceilings(bundled_archive):
    r = run_bench(bundled_archive, device="cpu", shuffles=["sequential"], batch_sizes=[16], seconds=0.1, warmup=0,
                  ceilings=False)
    assert r["ceilings"] == {} and r["bound"]["bytes_per_s"] is None
    assert r["results"][0]["fraction_of_bound"] is None
    assert "of bound" in format_bench(r)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_profile_stages(bundled_archive, prefetch):
    r = run_profile(bundled_archive, device="cpu", shuffle="random", batch_size=16, prefetch=prefetch, seconds=0.3, warmup=1)
    json.loads(json.dumps(r))
    assert r["schema"] == "scdl-gpu-profile/1" and r["batches"] > 0
    names = [s["stage"] for s in r["stages"]]
    # pipeline order; no h2d on the CPU, and no kernels stage: a plain batch is one compiled gather
    assert names == ["sample", "read", "dlpack", "collate"]
    for s in r["stages"]:
        # the clock starts with the window: up to `prefetch` batches queued before it, and the one then
        # being built, are consumed in the window without all their stages timed
        assert s["ms_per_batch"] > 0 and s["calls"] >= r["batches"] - 1 - prefetch and s["device_ms_per_batch"] is None
    assert np.isclose(r["stages_ms_per_batch"], sum(s["ms_per_batch"] for s in r["stages"]))
    if prefetch == 0:  # the stages run inside the consumer's wait
        assert r["stages_ms_per_batch"] <= r["consumer_wait_ms_per_batch"]
    assert r["consumer_wait_ms_per_batch"] <= r["ms_per_batch"]
    text = format_profile(r)
    assert all(n in text for n in names) and "consumer wait" in text


def test_profiling_leaves_batches_unchanged(bundled_archive):
    plain = SingleCellLoader(bundled_archive, batch_size=7, shuffle="random", seed=3, device="cpu", prefetch=0)
    timed = SingleCellLoader(bundled_archive, batch_size=7, shuffle="random", seed=3, device="cpu", prefetch=0)
    timed.stages = clock = StageClock()
    for a, b in zip(plain, timed):
        assert torch_equal(a["X"], b["X"]) and a["rows"].tolist() == b["rows"].tolist()
    assert clock.calls["read"] == len(timed)


def torch_equal(a, b) -> bool:
    return bool((a.to_dense() == b.to_dense()).all())


def test_bench_grids_residencies(bundled_archive):
    # "stream" needs SingleCellLoader(residency=...); on the CPU every residency is bounded by the page cache
    r = run_bench(bundled_archive, device="cpu", residencies=["auto", "stream"], shuffles=["block"], batch_sizes=[8, 16],
                  seconds=0.1, warmup=0, cold=False)
    assert [(x["residency"], x["batch_size"]) for x in r["results"]] == [(s, b) for s in ("auto", "stream") for b in (8, 16)]
    assert r["settings"]["residencies"] == ["auto", "stream"]
    assert set(r["bounds"]) == {"auto", "stream"} and {b["name"] for b in r["bounds"].values()} == {"page_cache_read"}
    for x in r["results"]:
        assert x["bound"] == "page_cache_read" and x["cells_per_s"] > 0
        assert x["residency_used"] == "stream"  # where the CPU loader reads from, "auto" included
        assert np.isclose(x["fraction_of_bound"], x["bytes_per_s"] / r["bounds"][x["residency"]]["bytes_per_s"])
    lines = format_bench(r).splitlines()
    at = next(i for i, line in enumerate(lines) if "cells/s" in line and "shuffle" in line)
    assert lines[at].split()[0] == "residency"  # a column: what was asked, and where "auto" went
    assert [line.split("  ")[0].strip() for line in lines[at + 2:]] == ["auto (stream)"] * 2 + ["stream"] * 2


def test_bound_follows_the_residency():
    from scdl_gpu.profiling._ceilings import bound

    ceil = {"page_cache_read": {"bytes_per_s": 8e9}, "h2d": {"bytes_per_s": 50e9}, "hbm_copy": {"bytes_per_s": 2e12},
            "memcpy": {"bytes_per_s": 20e9}}
    assert bound(ceil, "cuda", "device") == ("hbm_copy", 2e12)
    assert bound(ceil, "cuda", "pinned") == ("h2d", 50e9)
    assert bound(ceil, "cuda", "stream") == bound(ceil, "cuda", "auto") == ("page_cache_read", 8e9)  # the lesser
    assert bound({**ceil, "page_cache_read": {"bytes_per_s": 90e9}}, "cuda", "stream") == ("h2d", 50e9)
    assert all(bound(ceil, "cpu", r) == ("page_cache_read", 8e9) for r in ("auto", "stream"))
    assert bound({}, "cuda", "device") == ("none", None)


def test_residency_reaches_the_loader(bundled_archive):
    from scdl_gpu.profiling._bench import open_loader

    for residency in ("auto", "stream"):
        loader = open_loader(bundled_archive, "cpu", "block", 8, 0, residency=residency)
        assert loader.residency == "stream" and loader.partition == "global"  # the CPU reads its maps
        loader.close()
    with pytest.raises(ValueError, match="needs a GPU backend"):
        open_loader(bundled_archive, "cpu", "block", 8, 0, residency="device")


def test_format_bench_names_each_residencys_bound(bundled_archive):
    r = run_bench(bundled_archive, device="cpu", shuffles=["block"], batch_sizes=[8], seconds=0.1, warmup=0, cold=False)
    x = r["results"][0]
    bps = r["bound"]["bytes_per_s"]
    r["bounds"] = {"device": dict(name="hbm_copy", bytes_per_s=100 * bps, cells_per_s=100 * r["bound"]["cells_per_s"]),
                   "pinned": dict(r["bound"], name="h2d")}
    r["results"] = [dict(x, residency="device", residency_used=None), dict(x, residency="auto", residency_used="pinned")]
    text = format_bench(r)
    assert "bounds   device: hbm copy" in text and "pinned: h2d" in text
    assert "auto (pinned)" in text  # where "auto" put the archive, when the loader says



def test_bench_separates_one_off_warm_up_from_first_batch(bundled_archive, monkeypatch):
    """A one-off cost (as a JIT compile is) lands in ``warmup_s``, not in the first configuration's first batch."""
    import time

    from scdl_gpu.profiling import _bench

    paid = []

    def stream_with_one_off_cost(loader):
        if not paid:
            paid.append(1)
            time.sleep(1.0)
        yield from real_stream(loader)

    real_stream = _bench.loader_stream
    monkeypatch.setattr(_bench, "loader_stream", stream_with_one_off_cost)
    r = run_bench(bundled_archive, device="cpu", shuffles=["block", "random"], batch_sizes=[16], seconds=0.1, warmup=0,
                  ceilings=False)
    assert r["warmup_s"] >= 1.0
    assert all(x["first_batch_s"] < 1.0 for x in r["results"])
    assert "warm-up " in format_bench(r) and "ms once" in format_bench(r)


def test_profile_progress_bar_advances_with_the_window(bundled_archive, monkeypatch):
    import tqdm.auto

    seen = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            out = super().update(n)
            seen.append(self.n)
            return out

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    run_profile(bundled_archive, device="cpu", shuffle="block", batch_size=8, prefetch=0, seconds=0.7, warmup=0, progress=True)
    inside = [n for n in seen[:-1]]  # updates during the window; the last one completes the bar
    assert inside and 0 < inside[0] < 0.7 and inside == sorted(inside)
    assert seen[-1] == pytest.approx(0.7)
