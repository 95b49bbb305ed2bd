"""Which device a backend runs on: the GPU only when CuPy says it is usable, never by surprise.

CuPy imports fine on machines without a driver and only fails at first device use, so the test
is ``cupy.is_available()`` (any exception counts as "no GPU"). ``SCDL_GPU_FORCE_CPU=1`` turns the
GPU off. Nothing here runs at package import.
"""

from __future__ import annotations

import functools
import os

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
