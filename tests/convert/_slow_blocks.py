"""Test helper for the cancel tests: every row block written takes ``DELAY_S`` longer, as blocks
of a large input do (16M values take a few tenths of a second), so a small input converts for
seconds and an exit soon after a signal shows the conversion stopped instead of finishing.

``install()`` patches this process; ``init_worker`` does it in conversion worker processes.
"""

from __future__ import annotations

import time

from scdl_gpu.archive import _rowfiles
from scdl_gpu.convert._many import _init_worker as _real_init_worker

DELAY_S = 0.02


def install() -> None:
    real = _rowfiles.RowFiles.append_rows
    if getattr(real, "slowed", False):
        return

    def slow(self, *args, **kwargs):
        time.sleep(DELAY_S)
        return real(self, *args, **kwargs)

    slow.slowed = True
    _rowfiles.RowFiles.append_rows = slow


def init_worker(*args) -> None:
    install()
    _real_init_worker(*args)
