"""``device_report`` (``scdl-gpu info --device``): what a user checks after installing for a GPU.

A stand-in ``cupy`` module plays a machine with a driver (two GPUs) and one whose driver is too old
for the runtime, so every branch runs here without a GPU.
"""

from __future__ import annotations

import sys
import types

import pytest

from scdl_gpu.backend import _detect
from scdl_gpu.cli import main


def _fake_cupy(available: bool, driver: int = 13000, error: Exception | None = None) -> types.ModuleType:
    def count():
        if error:
            raise error
        return 2

    rt = types.SimpleNamespace(
        runtimeGetVersion=lambda: 13000,
        driverGetVersion=lambda: driver,
        getDeviceCount=count,
        getDeviceProperties=lambda k: {"name": b"NVIDIA H200", "totalGlobalMem": 141 * 2**30, "major": 9, "minor": 0},
    )
    return types.SimpleNamespace(is_available=lambda: available, cuda=types.SimpleNamespace(runtime=rt))


@pytest.fixture
def fresh_detection(monkeypatch):
    monkeypatch.delenv("SCDL_GPU_FORCE_CPU", raising=False)
    for f in (_detect.gpu_available, _detect.kvikio_available):
        f.cache_clear()
    yield monkeypatch
    for f in (_detect.gpu_available, _detect.kvikio_available):
        f.cache_clear()


def test_a_machine_with_gpus(fresh_detection):
    fresh_detection.setitem(sys.modules, "cupy", _fake_cupy(True))
    r = _detect.device_report()
    assert r["auto"] == "cuda" and r["cuda_runtime"] == "13.0" and r["cuda_driver"] == "13.0"
    assert [d["name"] for d in r["devices"]] == ["NVIDIA H200"] * 2 and r["devices"][0]["compute_capability"] == "9.0"
    # this machine's torch is a CPU build: the report says why batches could not reach torch on the GPU
    assert "torch does not" in r["why"]
    text = _detect.format_device_report(r)
    assert "GPU 1: NVIDIA H200, 141.0 GiB, compute capability 9.0" in text


def test_a_driver_too_old_for_the_runtime(fresh_detection):
    err = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")
    fresh_detection.setitem(sys.modules, "cupy", _fake_cupy(False, driver=12040, error=err))
    r = _detect.device_report()
    assert r["auto"] == "cpu" and r["devices"] == [] and r["cuda_driver"] == "12.4"
    assert "InsufficientDriver" in r["why"]


def test_force_cpu_wins(fresh_detection):
    fresh_detection.setitem(sys.modules, "cupy", _fake_cupy(True))
    fresh_detection.setenv("SCDL_GPU_FORCE_CPU", "1")
    r = _detect.device_report()
    assert r["auto"] == "cpu" and r["why"] == "SCDL_GPU_FORCE_CPU is set"


def test_the_cli(fresh_detection, capsys):
    fresh_detection.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    assert main(["info", "--device"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('device="auto" picks: cpu (CuPy is not installed') and "torch CUDA build:" in out
    assert main(["info"]) == 1 and "needs an archive" in capsys.readouterr().err
