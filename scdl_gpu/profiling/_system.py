"""What a result was measured on: machine, device and library versions (for every JSON we write)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
from pathlib import Path


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        return None


def gpu_name() -> str | None:
    try:
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # no CuPy, no driver, no device: nothing to name
        return None


def system_info(device: str) -> dict:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        platform=platform.platform(), cpu=_cpu_model(), cpus=cpus, ram_gib=_ram_gib(), python=platform.python_version(),
        device=device, gpu=gpu_name() if device == "cuda" else None,
        versions={p: _version(p) for p in ("scdl-gpu", "numpy", "scipy", "torch", "cupy-cuda13x", "cupy-cuda12x",
                                           "kvikio-cu13", "kvikio-cu12") if _version(p)},
    )
