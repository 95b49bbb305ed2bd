"""This process's memory as the kernel counts it (no torch, no CuPy: any layer may use it)."""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def host_memory() -> tuple[int, int]:
    """This process's resident set and its anonymous part (resident minus file-backed pages, such as
    the archive's mapped page cache), in bytes; zeros where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        resident, shared = int(fields[1]), int(fields[2])
        return resident * _PAGE, (resident - shared) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0, 0
