"""Read-ahead hints: files asked into the page cache before a reader needs them."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor


def read_ahead(paths) -> None:
    """Ask the kernel to read ``paths`` into the page cache, whole, without waiting for the disk
    (``posix_fadvise(WILLNEED)``). A hint: a missing file, or a platform without the call, is
    passed over."""
    advise = getattr(os, "posix_fadvise", None)
    for p in paths if advise is not None else ():
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


_reader: list = [None, None]  # (pid, executor): a forked child makes its own


def read_ahead_later(paths) -> None:
    """:func:`read_ahead` on a thread of its own, so the caller never waits while the kernel queues
    the reads (``WILLNEED`` on a cold file blocks until its reads are submitted: ~2 ms a batch of
    four compressed chunks on a VM disk)."""
    if _reader[0] != os.getpid():
        _reader[:] = [os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="scdl-read-ahead")]
    _reader[1].submit(read_ahead, list(paths))
