"""Batch assembly backends: archive rows in, a CSR (or dense) batch of torch tensors out.

``get_backend(archive, device="auto")`` returns the GPU backend when CuPy reports a usable device,
else the CPU backend; both give the same batches. Nothing here imports CuPy or kvikio until a GPU
backend is constructed.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

from ._detect import gpu_available, kvikio_available, resolve_device
from ._residency import RESIDENCIES

if TYPE_CHECKING:
    from ._base import Backend
    from ._batch import Batch, BatchOptions

_LAZY = {"Backend": "._base", "Batch": "._batch", "BatchOptions": "._batch"}


def __getattr__(name: str):
    if name in _LAZY:  # lazily: they import torch, which the CLI and the orders do not need
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_backend(archive: str | os.PathLike, device: str = "auto", options: BatchOptions | None = None,
                residency: str = "auto", cache_bytes: int | None = None, **gpu_kwargs) -> Backend:
    """The backend for ``device`` (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``) over ``archive``.

    ``residency`` (``"auto"``, ``"device"``, ``"pinned"``, ``"stream"``): where a GPU backend keeps
    the rows it serves (see :mod:`scdl_gpu.backend._residency`); the CPU reads the archive's
    memory maps (``"auto"``/``"stream"``). ``gpu_kwargs`` (``resident_rows``, ``reader``,
    ``kvikio_threads``, ...) go to :class:`GPUBackend`. ``cache_bytes``: decoded chunks kept of a
    compressed archive (default 512 MiB; decoded on the host on either device).
    """
    if residency not in RESIDENCIES:
        raise ValueError(f"residency must be one of {RESIDENCIES}, got {residency!r}")
    if resolve_device(device) == "cuda":
        from ._gpu import GPUBackend

        return GPUBackend(archive, options, device=device if ":" in str(device) else None, residency=residency,
                          cache_bytes=cache_bytes, **gpu_kwargs)
    if residency in ("device", "pinned"):
        raise ValueError(f"residency={residency!r} needs a GPU backend (device='cuda'); the CPU reads the archive's maps")
    from ._cpu import CPUBackend

    return CPUBackend(archive, options, cache_bytes=cache_bytes)


__all__ = ["RESIDENCIES", "Backend", "Batch", "BatchOptions", "get_backend", "gpu_available", "kvikio_available", "resolve_device"]
