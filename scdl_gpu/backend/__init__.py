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
                residency: str = "auto", storage_options: dict | None = None, cache_bytes: int | None = None,
                **gpu_kwargs) -> Backend:
    """The backend for ``device`` (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``) over ``archive``.

    ``residency`` (``"auto"``, ``"device"``, ``"pinned"``, ``"stream"``): where a GPU backend keeps
    the rows it serves (see :mod:`scdl_gpu.backend._residency`); the CPU reads the archive's
    memory maps (``"auto"``/``"stream"``). ``gpu_kwargs`` (``resident_rows``, ``reader``,
    ``kvikio_threads``, ...) go to :class:`GPUBackend`.

    ``archive`` may be a URL (``s3://``, ``gs://``, ``https://``, ``file://``; ``storage_options``
    go to fsspec) or an open :class:`~scdl_gpu.archive.RemoteArchive`: its rows are read by range
    into host memory and gathered there (on a GPU, the host reader: kvikio reads local files only).

    An atlas (a directory, or a URL, with an ``atlas.json``) gets an
    :class:`~scdl_gpu.backend._atlas.AtlasBackend` (its batches assembled on the host); with
    ``device="cuda"`` they are copied to the GPU (``"auto"`` picks the CPU for an atlas).

    ``cache_bytes``: decoded chunks kept of a compressed archive (default 128 MiB; decoded on the
    host on either device).
    """
    if residency not in RESIDENCIES:
        raise ValueError(f"residency must be one of {RESIDENCIES}, got {residency!r}")
    from ..atlas import is_atlas, is_remote_atlas

    if (is_remote_atlas(archive, storage_options) if remote_location(archive) else is_atlas(archive)):
        return _atlas_backend(archive, device, options, residency, gpu_kwargs, storage_options)
    if resolve_device(device) == "cuda":
        from ._gpu import GPUBackend

        return GPUBackend(archive, options, device=device if ":" in str(device) else None, residency=residency,
                          storage_options=storage_options, cache_bytes=cache_bytes, **gpu_kwargs)
    if residency in ("device", "pinned"):
        raise ValueError(f"residency={residency!r} needs a GPU backend (device='cuda'); the CPU reads the archive's maps")
    from ._cpu import CPUBackend

    return CPUBackend(archive, options, storage_options=storage_options, cache_bytes=cache_bytes)


def remote_location(archive) -> bool:
    """True for an archive read through fsspec: a URL or an open ``RemoteArchive``."""
    from ..archive._remote import RemoteArchive
    from ..archive._urls import is_url

    return is_url(archive) or isinstance(archive, RemoteArchive)


def _atlas_backend(atlas, device: str, options, residency: str, gpu_kwargs: dict, storage_options: dict | None):
    """An atlas's batches are assembled on the host (:class:`~._atlas.AtlasBackend`); with
    ``device="cuda"`` (or ``"cuda:N"``) they are then copied to that GPU
    (:class:`~._atlas_gpu.AtlasGPUBackend`). ``"auto"`` picks the CPU for an atlas: its GPU route
    is the host route, not yet measured on a GPU."""
    on_gpu = str(device).lower().startswith("cuda")
    if not on_gpu:
        resolve_device(device)  # a bad device name is still an error
    if residency in ("device", "pinned") or gpu_kwargs:
        raise ValueError(f"residency={residency!r} / {sorted(gpu_kwargs)}: an atlas's batches are assembled on the "
                         "host from its members' maps (residency 'auto' or 'stream'), then copied to a GPU")
    if on_gpu:
        resolve_device(device)  # no usable GPU: a clear error before any member is opened
    from ._atlas import AtlasBackend

    if remote_location(atlas):
        host = AtlasBackend.open_remote(atlas, options, storage_options)
    elif storage_options:
        raise ValueError(f"storage_options are for atlases at a URL; {atlas} is a local path")
    else:
        host = AtlasBackend(atlas, options)
    if not on_gpu:
        return host
    from ._atlas_gpu import AtlasGPUBackend

    try:
        return AtlasGPUBackend(host, device if ":" in str(device) else None)
    except BaseException:
        host.close()
        raise


__all__ = ["RESIDENCIES", "Backend", "Batch", "BatchOptions", "get_backend", "gpu_available", "kvikio_available",
           "remote_location", "resolve_device"]
