"""An atlas on a GPU: each batch assembled on the host by :class:`~._atlas.AtlasBackend` (members
planned, gathered, remapped, checked), then copied to the device through pinned staging on the
backend's own stream and handed to torch by DLPack.

This is the host route the GPU backend takes for random rows of one archive (compiled host gather,
one copy per array); a CUDA remap kernel reading resident members is the step after it. With the
loader's default ``prefetch`` on a GPU (2) the host work of the next batches overlaps the training
step. Imports CuPy when constructed, never at package import.
"""

from __future__ import annotations

import dataclasses

import torch

from ._atlas import AtlasBackend
from ._base import finished
from ._batch import Batch
from ._device import OnDevice

_ARRAYS = ("crow", "col", "values", "dense")


class AtlasGPUBackend(OnDevice):
    """:class:`AtlasBackend`'s batches as CUDA tensors on ``device`` (``"cuda"`` or ``"cuda:N"``).
    Everything else (rows, width, groups, files, options, hints) is the host backend's."""

    device = "cuda"
    residency = "stream"

    def __init__(self, host: AtlasBackend, device: str | None = None) -> None:
        from ._device import DeviceContext  # CuPy only now (get_backend checked that a GPU is usable)

        self.host = host
        self.ctx = DeviceContext(device)
        self.cp = self.ctx.cp

    def __getattr__(self, name: str):
        if name == "host":  # not set yet (a failed constructor): no recursion
            raise AttributeError(name)
        return getattr(self.host, name)

    @property
    def stages(self):
        return self.host.stages

    @stages.setter
    def stages(self, clock) -> None:
        self.host.stages = clock

    def batch(self, rows) -> Batch:
        with self.ctx.activate():
            self.ctx.collect()
            b = self.host.batch(rows)
            with self.stages("h2d"):
                return dataclasses.replace(b, **{name: self._upload(name, getattr(b, name)) for name in _ARRAYS
                                                 if getattr(b, name) is not None})

    def batches(self, groups) -> list[Batch]:  # not the host's: its batches stay on the host
        return [self.batch(rows) for rows in groups]

    def batches_ahead(self, groups):
        return finished(self.batches(groups))

    def _upload(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """``t`` (a host tensor) on the device, through this backend's pinned staging buffer ``name``."""
        host = t.numpy()
        dev = self.ctx.upload(name, host.reshape(-1))
        self.ctx.keep_until_released(dev)
        return torch.from_dlpack(dev).reshape(host.shape)

    def will_need(self, rows) -> None:
        self.host.will_need(rows)

    def close(self) -> None:
        self.host.close()

    def __repr__(self) -> str:
        return f"AtlasGPUBackend({self.host!r}, device=cuda:{self.ctx.index})"


__all__ = ["AtlasGPUBackend"]
