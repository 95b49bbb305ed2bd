"""Open an archive as one generation, and never through a link that leads out of it.

``open_arrays`` reads ``header.sch`` and then maps the arrays by name. If a writer exchanged the
directory in between (``cast``, ``--overwrite``, an in-place ``save``), the header of one
generation could describe the bytes of the next: a uint32 header over float32 values reads as
garbage that every size check accepts. :func:`pinned_open` closes that window without
touching the reader: it opens the directory before the first read and, once everything is
mapped, checks that the path still names that same directory. The open descriptor keeps the
directory's inode from being reused, and writers only ever swap a new directory in (never an
old one back), so "same directory before and after" means every file came from it. If it
changed, the open is simply repeated; already-open readers are unaffected either way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from ..errors import ArchiveError
from ._atomic import recover_interrupted, same_directory

#: Set to 1 to open archives whose members are symbolic links to files outside the archive.
ALLOW_LINKS_ENV = "SCDL_GPU_ALLOW_EXTERNAL_LINKS"
_allow_links: ContextVar[bool] = ContextVar("scdl_gpu_allow_external_links", default=False)
_ATTEMPTS = 20


@contextmanager
def allow_external_links() -> Iterator[None]:
    """Inside this block, archives may hold symbolic links to files outside them (a shared
    ``data.npy``, say); outside it, such an archive is refused at open."""
    token = _allow_links.set(True)
    try:
        yield
    finally:
        _allow_links.reset(token)


def check_member_links(path: str | os.PathLike) -> None:
    """Refuse an archive holding a symbolic link that resolves outside it (``ArchiveError``).

    Links between members of the archive are fine. Unless allowed (:func:`allow_external_links`
    or ``SCDL_GPU_ALLOW_EXTERNAL_LINKS=1``), a link out of the archive would let a damaged or
    hostile archive make reads (and the next in-place write) reach any file of the machine.
    """
    if _allow_links.get() or os.environ.get(ALLOW_LINKS_ENV, "") not in ("", "0"):
        return
    root = os.path.realpath(path)
    stack = [os.fspath(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # unreadable: the open itself names the problem
        for e in entries:
            if e.is_symlink():
                target = os.path.realpath(e.path)
                if os.path.commonpath([root, target]) != root:
                    raise ArchiveError(
                        f"{e.path} is a symbolic link to {target}, outside the archive {path}; refusing to "
                        f"follow it (set {ALLOW_LINKS_ENV}=1 or use scdl_gpu.archive._generation.allow_external_links() "
                        "to allow links out of archives)"
                    )
            elif e.is_dir(follow_symlinks=False):
                stack.append(e.path)


def pinned_open(open_fn):
    """Decorate ``open_arrays(path, ...)``: one directory generation, no links out (see above)."""

    @functools.wraps(open_fn)
    def open_pinned(path, *args, **kwargs):
        p = Path(path)
        if not os.path.lexists(p):
            recover_interrupted(p)  # a journaled exchange whose writer died between its renames
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return open_fn(path, *args, **kwargs)  # missing or not a directory: it says so
            try:
                check_member_links(p)
                try:
                    result = open_fn(path, *args, **kwargs)
                except (ArchiveError, OSError):
                    if same_directory(p, fd):
                        raise
                    continue  # replaced mid-open: the error may come from mixing two generations
                if same_directory(p, fd):
                    return result
            finally:
                os.close(fd)
        raise ArchiveError(f"{p} was replaced {_ATTEMPTS} times while being opened; try again when its writer is done")

    return open_pinned
