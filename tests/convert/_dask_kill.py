"""Test helper: a Dask worker plugin that kills the worker process in the middle of one member.

While the counter file holds a positive number, the worker writing member ``member`` exits
(``os._exit``, no cleanup, as an out-of-memory kill or a preemption) right after appending a row
block of it (row inputs: CSR, dense, 10x HDF5), and the counter goes down by one. Workers the
nanny restarts get the plugin again.
"""

from __future__ import annotations

import os
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

EXIT_CODE = 17


def take(counter: Path) -> bool:
    """Whether a kill is left (and use it up)."""
    left = int(counter.read_text())
    if left <= 0:
        return False
    counter.write_text(str(left - 1))
    return True


class KillMidMember(WorkerPlugin):
    name = "scdl-test-kill-mid-member"

    def __init__(self, member: str, counter: str) -> None:
        self.member, self.counter = member, counter

    def setup(self, worker) -> None:
        from scdl_gpu.archive import _rowfiles

        real = getattr(_rowfiles.RowFiles.append_rows, "real", _rowfiles.RowFiles.append_rows)
        mine, counter = f".{self.member}.scdl.partial-", Path(self.counter)

        def append_rows(files, *args, **kwargs):
            real(files, *args, **kwargs)
            if mine in str(files.directory) and take(counter):
                os._exit(EXIT_CODE)

        append_rows.real = real
        _rowfiles.RowFiles.append_rows = append_rows

    def teardown(self, worker) -> None:
        from scdl_gpu.archive import _rowfiles

        _rowfiles.RowFiles.append_rows = getattr(_rowfiles.RowFiles.append_rows, "real", _rowfiles.RowFiles.append_rows)
