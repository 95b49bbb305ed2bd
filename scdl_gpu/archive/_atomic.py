"""Publish archive directories atomically, and clean up after writers that were killed.

Every writer builds a complete sibling directory ``.<name>.partial-<host>-<pid>-<token>`` and
publishes it with :func:`exchange`: one ``renameat2(RENAME_EXCHANGE)`` swaps it with the
archive at ``<name>``, so at every instant ``<name>`` is the whole old or the whole new archive,
and readers that mapped the old files keep reading them (the inodes live on while mapped).
Where the kernel or filesystem refuses the exchange, a journal names both directories before
two renames; the next run (or an open that finds the path missing) finishes the swap from it.

The writer's host and pid are in every name it leaves beside the archive, so the next run on
the same path removes only what belongs to processes that are gone: two runs at once never
delete each other's work.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ArchiveError
from ._checksums import MANIFEST_FILE, is_temporary_name, write_manifest
from ._memmap import fsync_dir

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
# renameat2's syscall number where libc lacks the wrapper (glibc < 2.28, musl < 1.2.5).
_SYSCALL_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}
# What a kernel or filesystem answers when it cannot do the flag (NFS, some FUSE, old kernels).
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
# Leftovers named by an older scdl_gpu carry no owner; they are removed once nothing in them
# has changed for this long (no writer pauses that long between two writes).
UNOWNED_AGE_S = 600.0

_KINDS = ("partial", "old", "journal")
_OWNED = re.compile(r"^(partial|old|journal)-([A-Za-z0-9._]+)-(\d+)-([0-9a-f]{8})$")
_LEGACY = re.compile(r"^(partial|old)-([0-9a-f]{8})$")


# -- renameat2 ------------------------------------------------------------------------------------
def _load_renameat2():
    """``f(src: bytes, dst: bytes, flags) -> errno or 0``, or None where there is no renameat2."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int

        def call(src: bytes, dst: bytes, flags: int) -> int:
            return 0 if fn(_AT_FDCWD, src, _AT_FDCWD, dst, flags) == 0 else ctypes.get_errno()

        return call
    nr = _SYSCALL_RENAMEAT2.get(platform.machine())
    if nr is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def raw(src: bytes, dst: bytes, flags: int) -> int:
        # syscall() is variadic: pass every argument at full register width.
        rc = syscall(ctypes.c_long(nr), ctypes.c_long(_AT_FDCWD), ctypes.c_char_p(src),
                     ctypes.c_long(_AT_FDCWD), ctypes.c_char_p(dst), ctypes.c_ulong(flags))
        return 0 if rc == 0 else ctypes.get_errno()

    return raw


_renameat2 = _load_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> int:
    """renameat2 on two paths; returns 0 or the errno (ENOSYS where there is none)."""
    if _renameat2 is None:
        return errno.ENOSYS
    return _renameat2(os.fsencode(src), os.fsencode(dst), flags)


# -- names and owners -----------------------------------------------------------------------------
@functools.cache
def _host() -> str:
    """Where pids mean something: the host name, and the pid namespace (containers sharing a host
    name and a filesystem number their processes apart)."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
    try:
        host += f".ns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass
    return host


def sibling_name(path: Path, kind: str) -> Path:
    """A fresh hidden name beside ``path`` that records this process as its owner."""
    assert kind in _KINDS
    return path.parent / f".{path.name}.{kind}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` (on this host) still runs; unknown counts as alive."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:  # a killed child its parent has not reaped yet is gone for our purpose
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _owner(path: Path, name: str) -> tuple[str, str, int] | None:
    """``(kind, host, pid)`` when ``name`` is one of our hidden names beside ``path``."""
    prefix = f".{path.name}."
    if not name.startswith(prefix):
        return None
    m = _OWNED.match(name[len(prefix):])
    return None if m is None else (m.group(1), m.group(2), int(m.group(3)))


def _newest_mtime(p: Path) -> float:
    newest = p.lstat().st_mtime
    if p.is_dir() and not p.is_symlink():
        for root, dirs, files in os.walk(p):
            for n in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, n)).st_mtime)
                except OSError:
                    pass
    return newest


def remove_tree(p: Path) -> None:
    """Delete a directory, file or link (a link, never what it points to); another process
    deleting it at the same time is fine, anything that stays is logged."""
    try:
        if p.is_symlink() or not p.is_dir():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p, ignore_errors=True)
    except OSError:
        pass
    if os.path.lexists(p):
        log.warning("could not remove %s entirely; delete it by hand", p)


# -- cleanup --------------------------------------------------------------------------------------
def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers left beside the archive at ``path``; returns what was removed.

    Interrupted journaled exchanges are finished first; then ``.<name>.partial-*`` and
    ``.<name>.old-*`` directories whose owner (host and pid in the name) is gone are deleted.
    Leftovers of other hosts and of live processes are left alone. (Files in flight inside an
    archive, ``*.partial``, never reach a new archive: :func:`rebuilt` does not link them.)
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        names = sorted(os.listdir(path.parent))
    except OSError:
        return removed
    me = _host()
    journals = []
    for name in names:
        owner = _owner(path, name)
        if owner and owner[0] == "journal" and owner[1] == me and not _alive(owner[2]):
            journals.append(path.parent / name)
    for j in journals:  # first: finishing a swap renames a partial directory into place
        try:
            removed += _recover(j, path)
        except OSError as e:
            log.warning("cannot finish the interrupted exchange %s: %s", j, e)
    for name in names:
        p = path.parent / name
        if p in journals or not os.path.lexists(p):
            continue
        owner = _owner(path, name)
        if owner is not None:
            kind, host, pid = owner
            if host != me or _alive(pid):
                continue
            why = f"left by process {pid}, which is gone"
        else:
            prefix = f".{path.name}."
            if not name.startswith(prefix) or not _LEGACY.match(name[len(prefix):]):
                continue
            try:
                idle = time.time() - _newest_mtime(p)
            except OSError:
                continue
            if idle < UNOWNED_AGE_S:
                continue
            why = f"unchanged for {idle / 60:.0f} minutes, written by an older scdl_gpu"
        log.warning("removing %s: %s (a killed run's leftover)", p, why)
        remove_tree(p)
        removed.append(p)
    return removed


def recover_interrupted(path: str | os.PathLike) -> None:
    """Finish a journaled exchange of ``path`` whose writer died between its two renames.

    Called by opens that find ``path`` missing; failures (a read-only directory) are ignored.
    """
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    me = _host()
    for name in names:
        owner = _owner(path, name)
        if owner and owner[0] == "journal" and owner[1] == me and not _alive(owner[2]):
            try:
                _recover(path.parent / name, path)
            except OSError as e:
                log.debug("cannot finish the interrupted exchange %s: %s", name, e)


def _recover(journal: Path, path: Path) -> list[Path]:
    """Complete the swap ``journal`` describes (or roll it back if the new side is gone)."""
    try:
        entry = json.loads(journal.read_text())
        new, old = path.parent / entry["new"], path.parent / entry["old"]
    except FileNotFoundError:
        return []  # another process finished it
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("removing %s: an unreadable exchange journal of a killed run", journal)
        journal.unlink(missing_ok=True)
        return [journal]
    # Trust only names this module would write for this path: never a path elsewhere.
    for p, kind in ((new, "partial"), (old, "old")):
        owner = _owner(path, p.name)
        if owner is None or owner[0] != kind or p.parent != path.parent:
            log.warning("removing %s: it names %s, not a %s directory of %s", journal, p.name, kind, path)
            journal.unlink(missing_ok=True)
            return [journal]
    if not os.path.lexists(path) and (os.path.lexists(new) or os.path.lexists(old)):
        # Killed between the renames: the new side is complete (the journal is written after it).
        source = new if os.path.lexists(new) else old
        try:
            os.rename(source, path)
            fsync_dir(path.parent)
            log.warning("finished the interrupted replacement of %s from %s", path, journal.name)
        except OSError:
            if not os.path.lexists(path):  # else another process recovered it first
                raise
    removed = []
    for p in (new, old):  # whichever side did not end up at path
        if os.path.lexists(p):
            remove_tree(p)
            removed.append(p)
    journal.unlink(missing_ok=True)
    fsync_dir(path.parent)
    log.warning("removed %s and what it named: a killed run's exchange journal", journal)
    return removed + [journal]


def new_partial_dir(path: str | os.PathLike) -> Path:
    """Clean up after killed writers of ``path``, then create this writer's sibling directory."""
    path = Path(path)
    clean_leftovers(path)
    d = sibling_name(path, "partial")
    d.mkdir()
    return d


# -- exchange -------------------------------------------------------------------------------------
@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, so no KeyboardInterrupt lands between two renames.

    Python runs signal handlers in the main thread only; other threads are never interrupted.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(s)
        if handler is None:  # installed outside Python: leave it alone
            continue
        previous[s] = handler
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for s in caught[:1]:
            signal.raise_signal(s)  # the handler that was there runs now


def exchange(new_dir: str | os.PathLike, path: str | os.PathLike, replace: bool = True) -> None:
    """Put the complete directory ``new_dir`` (a sibling of ``path``) at ``path``, atomically.

    An existing ``path`` is swapped out by ``renameat2(RENAME_EXCHANGE)`` and then deleted
    (``replace=False`` refuses it with ``FileExistsError`` instead). Where the exchange is not
    supported, a journal is written before the two renames (see :func:`clean_leftovers`).
    """
    new_dir, path = Path(new_dir), Path(path)
    if new_dir.parent != path.parent:
        raise ValueError(f"{new_dir} must be a sibling of {path} to replace it atomically")
    with _signals_deferred():
        old = _swap(new_dir, path, replace)
    fsync_dir(path.parent)
    if old is not None:
        remove_tree(old)


def _swap(new_dir: Path, path: Path, replace: bool) -> Path | None:
    """Do the renames; returns where the old archive now is (to delete), or None."""
    if not os.path.lexists(path):
        err = _rename2(new_dir, path, _RENAME_NOREPLACE)
        if err == 0:
            return None
        if err in _UNSUPPORTED:
            if not os.path.lexists(path):
                os.rename(new_dir, path)
                return None
        elif err != errno.EEXIST:
            raise OSError(err, f"cannot rename {new_dir} to {path}: {os.strerror(err)}")
    if not replace:
        raise FileExistsError(f"Output archive already exists: {path}")
    err = _rename2(new_dir, path, _RENAME_EXCHANGE)
    if err == 0:
        old = sibling_name(path, "old")
        os.rename(new_dir, old)  # new_dir's name holds the old archive now
        return old
    if err not in _UNSUPPORTED:
        raise OSError(err, f"cannot exchange {new_dir} with {path}: {os.strerror(err)}")
    return _journaled_swap(new_dir, path)


def _journaled_swap(new_dir: Path, path: Path) -> Path:
    journal = sibling_name(path, "journal")
    old = sibling_name(path, "old")
    with open(journal, "w") as f:
        json.dump({"path": path.name, "new": new_dir.name, "old": old.name}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)
    os.rename(path, old)
    try:
        os.rename(new_dir, path)
    except BaseException:
        os.rename(old, path)
        journal.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    journal.unlink()
    log.debug("replaced %s through the journal %s (renameat2 exchange unsupported here)", path, journal.name)
    return old


# -- rebuilding an archive beside itself ----------------------------------------------------------
def _link_or_copy(name: str, src_dir_fd: int, dst: Path) -> None:
    try:
        os.link(name, dst, src_dir_fd=src_dir_fd, follow_symlinks=False)
        return
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    src_fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=src_dir_fd)
    try:
        with os.fdopen(src_fd, "rb", closefd=False) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out, 16 << 20)
    finally:
        os.close(src_fd)


def _link_tree(src_fd: int, dst: Path, omit: Collection[str]) -> None:
    """Hard-link every file under the directory ``src_fd`` into ``dst`` (relative to ``src_fd``,
    so every file comes from one directory whatever replaces the archive's path meanwhile)."""
    for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=src_fd):
        rel = Path(dirpath)
        top = rel == Path(".")
        for name in list(dirnames) + filenames:
            if top and (name in omit or name == MANIFEST_FILE):
                continue
            if is_temporary_name(name) or name.startswith(".nfs"):
                continue  # files in flight of killed writers stay behind with the old archive
            target = dst / rel / name
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=dirfd), target)
            elif stat.S_ISDIR(st.st_mode):
                target.mkdir()
            else:
                _link_or_copy(name, dirfd, target)
        if top:
            dirnames[:] = [d for d in dirnames if d not in omit and not is_temporary_name(d)]


def same_directory(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the directory open as ``fd`` (its inode cannot be reused
    while ``fd`` holds it, and our writers never move a replaced directory back)."""
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextmanager
def rebuilt(
    path: str | os.PathLike, omit: Collection[str] = (), check: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """A complete copy of the archive at ``path`` to change, published atomically when the block ends.

    Yields a sibling directory holding hard links to every file of the archive (one directory
    generation) but the top-level entries in ``omit``, the checksum manifest and files in flight.
    Linked files are shared with the published archive: replace them (write a new file, then
    rename it over the link, or unlink the link first), never write into them. When the block
    ends normally the checksums are recorded and the directory is exchanged in; on an exception
    it is deleted and the archive is untouched. ``check(source)``, if given, may refuse the
    source directory (the one the links come from) by raising before anything is written.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if check is not None:
            pinned = Path(f"/proc/self/fd/{fd}")
            check(pinned if pinned.is_dir() else path)
        tmp = new_partial_dir(path)
        try:
            _link_tree(fd, tmp, set(omit))
            yield tmp
            write_manifest(tmp)
            fsync_dir(tmp)
            if not same_directory(path, fd):
                raise ArchiveError(f"{path} was replaced by another writer meanwhile; this change was not applied")
            exchange(tmp, path)
        except BaseException:
            remove_tree(tmp)
            raise
    finally:
        os.close(fd)


def mapped_file_matches(arr: np.ndarray, path: str | os.PathLike) -> bool:
    """Whether the memory-mapped ``arr`` maps the file now at ``path`` (the same inode).

    Anything that cannot be told (not a map, an empty array, no ``/proc``) counts as a match.
    """
    if not isinstance(arr, np.memmap) or arr.size == 0:
        return True
    try:
        inode = os.stat(path).st_ino
    except OSError:
        return False
    try:
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
    except OSError:
        return True
    addr = arr.ctypes.data
    for line in maps:
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= addr < hi:
            return int(fields[4]) == inode
    return True
