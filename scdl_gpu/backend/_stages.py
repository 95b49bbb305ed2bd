"""The stage names of the loading pipeline and the no-op recorder every backend starts with.

Backends and the loader wrap each step in ``with self.stages("read"):``. This module is the
bottom of that contract, so the backend imports nothing from ``profiling/`` (which sits above it
and swaps in a timing :class:`~scdl_gpu.profiling.StageClock`). Stages do not nest: each step of
a batch is timed once.
"""

from __future__ import annotations

import contextlib

STAGES = ("sample", "read", "h2d", "kernels", "dlpack", "collate")
"""Pipeline order. ``read``: rows from the archive into host or device memory (memmap gather, or
kvikio); ``h2d``: host staging to the device; ``kernels``: cast, transforms and CSR/dense assembly
(CUDA kernels on the GPU, their NumPy references on the CPU); ``dlpack``: hand-off to torch;
``collate``: the loader's batch dict (column-order check, obs codes, row ids)."""


class NoStages:
    """The recorder in normal use: every stage is a shared no-op context."""

    enabled = False
    _null = contextlib.nullcontext()

    def __call__(self, name: str) -> contextlib.AbstractContextManager:
        return self._null


NO_STAGES = NoStages()
