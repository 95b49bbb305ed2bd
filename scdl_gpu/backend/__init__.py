"""Batch assembly backends: archive rows in, a CSR (or dense) batch of torch tensors out.

``get_backend(archive, device="auto")`` returns the GPU backend when CuPy reports a usable device,
else the CPU backend; both give the same batches. Nothing here imports CuPy or kvikio until a GPU
backend is constructed.
"""

from __future__ import annotations

import os

from ._base import Backend
from ._batch import Batch, BatchOptions
from ._detect import gpu_available, kvikio_available, resolve_device


def get_backend(archive: str | os.PathLike, device: str = "auto", options: BatchOptions | None = None, **gpu_kwargs) -> Backend:
    """The backend for ``device`` (``"auto"``, ``"cpu"`` or ``"cuda"``) over the archive at ``archive``.

    ``gpu_kwargs`` (``reader``, ``kvikio_threads``, ...) go to :class:`GPUBackend`.
    """
    if resolve_device(device) == "cuda":
        from ._gpu import GPUBackend

        return GPUBackend(archive, options, **gpu_kwargs)
    from ._cpu import CPUBackend

    return CPUBackend(archive, options)


__all__ = ["Backend", "Batch", "BatchOptions", "get_backend", "gpu_available", "kvikio_available", "resolve_device"]
