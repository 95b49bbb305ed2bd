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
                residency: str = "auto", storage_options: dict | None = None, **gpu_kwargs) -> Backend:
    """The backend for ``device`` (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``) over ``archive``.

    ``residency`` (``"auto"``, ``"device"``, ``"pinned"``, ``"stream"``): where a GPU backend keeps
    the rows it serves (see :mod:`scdl_gpu.backend._residency`); the CPU reads the archive's
    memory maps (``"auto"``/``"stream"``). ``gpu_kwargs`` (``resident_rows``, ``reader``,
    ``kvikio_threads``, ...) go to :class:`GPUBackend`.

    ``archive`` may be a URL (``s3://``, ``gs://``, ``https://``, ``file://``; ``storage_options``
    go to fsspec) or an open :class:`~scdl_gpu.archive.RemoteArchive`: the CPU backend reads its
    rows by range (``device="auto"`` picks the CPU for it; no GPU reader reads object storage yet).
    """
    if residency not in RESIDENCIES:
        raise ValueError(f"residency must be one of {RESIDENCIES}, got {residency!r}")
    device = device_for(archive, device)
    if resolve_device(device) == "cuda":
        from ._gpu import GPUBackend

        return GPUBackend(archive, options, device=device if ":" in str(device) else None, residency=residency, **gpu_kwargs)
    if residency in ("device", "pinned"):
        raise ValueError(f"residency={residency!r} needs a GPU backend (device='cuda'); the CPU reads the archive's maps")
    from ._cpu import CPUBackend

    return CPUBackend(archive, options, storage_options=storage_options)


def remote_location(archive) -> bool:
    """True for an archive read through fsspec: a URL or an open ``RemoteArchive``."""
    from ..archive._remote import RemoteArchive
    from ..archive._urls import is_url

    return is_url(archive) or isinstance(archive, RemoteArchive)


def device_for(archive, device: str) -> str:
    """``device`` as it applies to ``archive``: a remote archive is read on the CPU (``"auto"``
    picks it; ``"cuda"`` is an error until a GPU reader reads object storage)."""
    if not remote_location(archive):
        return device
    if device == "auto":
        return "cpu"
    if str(device).lower().startswith("cuda"):
        from ..archive._urls import redact

        raise ValueError(f"{redact(getattr(archive, 'url', archive))} is read on the CPU (device='cpu'): no GPU reader "
                         "reads object storage yet; move the batches to the GPU, or copy the archive to local disk")
    return device


__all__ = ["RESIDENCIES", "Backend", "Batch", "BatchOptions", "device_for", "get_backend", "gpu_available",
           "kvikio_available", "remote_location", "resolve_device"]
