"""Which device a backend runs on: the GPU only when CuPy says it is usable, never by surprise.

CuPy imports fine on machines without a driver and only fails at first device use, so the test
is ``cupy.is_available()`` (any exception counts as "no GPU"). ``SCDL_GPU_FORCE_CPU=1`` turns the
GPU off. Nothing here runs at package import.
"""

from __future__ import annotations

import functools
import os

from .._hints import GPU

from .._hints import GPU


@functools.cache
def gpu_available() -> bool:
    if os.environ.get("SCDL_GPU_FORCE_CPU", "") not in ("", "0"):
        return False
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


@functools.cache
def kvikio_available() -> bool:
    if not gpu_available():
        return False
    try:
        import kvikio  # noqa: F401

        return True
    except Exception:
        return False


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when usable else ``"cpu"``; an unusable explicit ``"cuda"`` raises."""
    device = str(device).lower()
    if device == "auto":
        return "cuda" if gpu_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not gpu_available():
            raise RuntimeError(
                f"device={device!r} was asked for but no usable CUDA device was found: on a machine with an "
                f"NVIDIA driver, {GPU}; or use device='cpu' / 'auto'"
                + (" (SCDL_GPU_FORCE_CPU is set)" if os.environ.get("SCDL_GPU_FORCE_CPU", "") not in ("", "0") else "")
            )
        return "cuda"
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _cuda_version(v: int) -> str:
    """CUDA encodes versions as 1000 * major + 10 * minor (13000 = 13.0)."""
    return f"{v // 1000}.{v % 1000 // 10}"


def device_report() -> dict:
    """What this machine offers the loader, for ``scdl-gpu info --device``: the packages that
    decide it, what CuPy sees (driver, runtime, devices) and what ``device="auto"`` will pick.

    Nothing here fails: a missing package or driver is reported, with the reason, as a value.
    """
    report: dict = {
        "force_cpu": os.environ.get("SCDL_GPU_FORCE_CPU", "") not in ("", "0"),
        "packages": {
            name: _version(dist)
            for name, dist in (("cupy", "cupy-cuda13x"), ("cupy (CUDA 12)", "cupy-cuda12x"), ("kvikio", "kvikio-cu13"),
                               ("kvikio (CUDA 12)", "kvikio-cu12"), ("torch", "torch"), ("numba", "numba"))
        },
        "devices": [],
    }
    try:
        import cupy

        rt = cupy.cuda.runtime
        report["cuda_runtime"] = _cuda_version(rt.runtimeGetVersion())
        report["cuda_driver"] = _cuda_version(rt.driverGetVersion()) if rt.driverGetVersion() else None
        for k in range(rt.getDeviceCount()):
            p = rt.getDeviceProperties(k)
            name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
            report["devices"].append({"id": k, "name": name, "memory_gib": round(p["totalGlobalMem"] / 2**30, 1),
                                      "compute_capability": f"{p['major']}.{p['minor']}"})
    except Exception as e:  # no CuPy, no driver, or a driver older than the runtime
        report["cuda_error"] = f"{type(e).__name__}: {e}".strip()
    try:
        import torch

        report["torch_cuda"] = torch.version.cuda
        report["torch_sees_gpu"] = bool(torch.cuda.is_available())
    except Exception as e:
        report["torch_cuda"] = None
        report["torch_sees_gpu"] = False
        report["torch_error"] = f"{type(e).__name__}: {e}"
    report["auto"] = "cuda" if gpu_available() else "cpu"
    report["reader"] = "kvikio" if kvikio_available() else "host (memmap + copy)"
    report["why"] = _why(report)
    return report


def _why(r: dict) -> str:
    if r["force_cpu"]:
        return "SCDL_GPU_FORCE_CPU is set"
    if r["auto"] == "cuda":
        if not r["torch_sees_gpu"]:
            return "CuPy sees a GPU but torch does not (a CPU build of torch?): batches cannot reach torch on the device"
        return "CuPy sees a usable GPU"
    if r.get("cuda_error", "").startswith(("ModuleNotFoundError", "ImportError")):
        return f"CuPy is not installed: {GPU}"
    return f"CuPy finds no usable GPU ({r.get('cuda_error') or 'cupy.is_available() is False'})"


def format_device_report(r: dict) -> str:
    lines = [f"device=\"auto\" picks: {r['auto']} ({r['why']})", f"reader: {r['reader']}"]
    for name, v in r["packages"].items():
        if v or "CUDA 12" not in name:
            lines.append(f"{name}: {v or 'not installed'}")
    if "cuda_runtime" in r:
        lines.append(f"CUDA runtime (CuPy): {r['cuda_runtime']}, driver supports: {r.get('cuda_driver') or 'no driver'}")
    lines.append(f"torch CUDA build: {r['torch_cuda'] or 'none (CPU build)'}; torch sees a GPU: {r['torch_sees_gpu']}")
    for d in r["devices"]:
        lines.append(f"GPU {d['id']}: {d['name']}, {d['memory_gib']} GiB, compute capability {d['compute_capability']}")
    return "\n".join(lines)
