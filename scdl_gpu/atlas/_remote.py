"""An atlas at a URL (``s3://bucket/prefix/atlas``, any fsspec URL), open read-only.

Opening fetches ``atlas.json`` and every member's column map into a private local directory and
reads them with :func:`~._manifest.read_manifest` and :meth:`~._manifest.Atlas.column_map`
unchanged, so a remote manifest gets every check a local one does; the messages name the URL.

Members are located against the atlas URL: a relative path resolves inside the atlas (a ``..``
that leads above the atlas URL is refused: a manifest may not reach into the rest of its bucket
unasked), an absolute URL is read as given (with the atlas's ``storage_options`` when it has the
atlas's protocol, else with its protocol's own defaults), and an absolute local path is refused
(it names a file on the machine that wrote the manifest, not one next to the atlas).

Each member opens as a :class:`~scdl_gpu.archive._remote.RemoteArchive`. One cache budget
(``cache_bytes``) is split across the members in proportion to their value and column bytes as the
manifest records them, so an atlas that fits the budget is read once, as a single archive is.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
import weakref
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..archive._remote import DEFAULT_BLOCK_BYTES, DEFAULT_CACHE_BYTES, RemoteArchive, _filesystem, naming_urls
from ..archive._urls import is_url, redact, scrubber
from ..errors import ArchiveError, ArchiveNotFoundError
from ._manifest import MANIFEST, Atlas, read_manifest

__all__ = ["RemoteAtlas", "is_remote_atlas"]


def is_remote_atlas(url, storage_options: dict | None = None) -> bool:
    """True when ``url`` is a URL with an ``atlas.json`` (an atlas, not an archive)."""
    if not is_url(url):
        return False
    shown, scrub = redact(url.rstrip("/")), scrubber(url)
    fs, root = _filesystem(url, storage_options or {}, shown, scrub)
    try:
        fs.invalidate_cache(root.rstrip("/"))  # a listing cached by an earlier open may be stale
        return bool(fs.isfile(f"{root.rstrip('/')}/{MANIFEST}"))
    except FileNotFoundError:
        return False
    except Exception as e:  # network, credentials
        raise ArchiveError(f"Cannot reach {shown}: {type(e).__name__}: {scrub(e)}") from None


class RemoteAtlas:
    """An atlas at a URL: its manifest and column maps mirrored locally, its members opened remote.

    Attributes: ``url`` (credentials redacted), ``local`` (the private mirror of ``atlas.json`` and
    ``maps/``; removed on :meth:`close`), ``atlas`` (the :class:`~._manifest.Atlas`, rooted at
    ``local``, whose ``member_path(i)`` is member ``i``'s own mirror once members are open),
    ``member_urls`` (redacted), ``members`` (the open :class:`RemoteArchive` of each, or empty with
    ``open_members=False``: the manifest alone, for a summary).

    Raises ``ArchiveNotFoundError`` when no atlas (or a member) is at its URL, ``ArchiveError`` for
    a damaged manifest, map or member, or a member path that leads out of the atlas; every message
    names URLs, never the mirror or a credential.
    """

    def __init__(self, url: str, storage_options: dict | None = None, *, cache_dir: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 open_members: bool = True) -> None:
        if not is_url(url):
            raise ValueError(f"{redact(url)!r} is not a URL (scheme://...); open a local atlas by its path")
        self.url = redact(url.rstrip("/"))
        self._raw = url.rstrip("/")
        self._options = dict(storage_options or {})
        self._scrub = scrubber(url)
        self.fs, root = _filesystem(url, self._options, self.url, self._scrub)
        self._root = root.rstrip("/")
        self.members: list[RemoteArchive] = []
        self.local = Path(tempfile.mkdtemp(prefix="scdl-remote-atlas-", dir=cache_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.local), True)
        try:
            self._fetch([MANIFEST], required=True)
            with self.naming_url():
                self.atlas = read_manifest(self.local)
                maps = [self._inside(m.column_map, f"the column map of member {m.name!r}") for m in self.atlas.members]
            self._fetch(sorted(set(maps)), required=False)  # a missing one: column_map() says so, naming it
            self._raw_urls = [self._member_url(i) for i in range(len(self.atlas.members))]
            self.member_urls = [redact(u) for u in self._raw_urls]
            if open_members:
                self._open_members(cache_dir, cache_bytes, block_bytes)
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------------------
    def _fetch(self, rels: list[str], required: bool) -> None:
        """Copy the atlas's files ``rels`` into the mirror (a missing one is skipped unless ``required``)."""
        if not rels:
            return
        try:
            got = self.fs.cat([f"{self._root}/{r}" for r in rels], on_error="return")
        except Exception as e:
            raise ArchiveError(f"Cannot read {self.url}: {type(e).__name__}: {self._scrub(e)}") from None
        if len(rels) == 1 and not isinstance(got, dict):
            got = {f"{self._root}/{rels[0]}": got}
        by_rel = {r: got.get(f"{self._root}/{r}", FileNotFoundError(r)) for r in rels}
        for rel, buf in by_rel.items():
            if isinstance(buf, FileNotFoundError):
                if required:
                    raise ArchiveNotFoundError(f"No atlas at {self.url} (it holds no {rel})")
                continue
            if isinstance(buf, BaseException):
                raise ArchiveError(f"Cannot read {self.url}/{rel}: {type(buf).__name__}: {self._scrub(buf)}")
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(buf)

    def _inside(self, rel: str, what: str) -> str:
        """``rel`` as a plain path inside the atlas; anything else is refused."""
        if is_url(rel) or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute():
            raise ArchiveError(f"{self.url}/{MANIFEST}: {what} is the absolute path {self._scrub(rel)!r}; in a remote "
                               "atlas it must be a path inside the atlas")
        norm = posixpath.normpath(rel)
        if "\\" in rel or norm in (".", "") or norm == ".." or norm.startswith("../"):
            raise ArchiveError(f"{self.url}/{MANIFEST}: {what} is {rel!r}, which leads out of the atlas at {self.url} "
                               "(give a member outside it as an absolute URL)")
        return norm

    def _member_url(self, i: int) -> str:
        m = self.atlas.members[i]
        if is_url(m.path):
            return m.path.rstrip("/")
        if Path(m.path).is_absolute() or PureWindowsPath(m.path).is_absolute():
            raise ArchiveError(f"{self.url}/{MANIFEST}: member {m.name!r} is the local path {m.path!r}, which no reader "
                               "of a remote atlas can open; list it by a path inside the atlas or by its URL")
        return f"{self._raw}/{self._inside(m.path, f'member {m.name!r}')}"

    def _open_members(self, cache_dir, cache_bytes: int, block_bytes: int) -> None:
        """Open every member by its URL, each with its share of ``cache_bytes``."""
        sizes = np.array([m.n_values * (np.dtype(m.data_dtype).itemsize + np.dtype(m.col_dtype).itemsize)
                          for m in self.atlas.members], np.float64)
        shares = (cache_bytes * sizes / max(sizes.sum(), 1)).astype(np.int64) if len(sizes) else sizes
        protocol = self._raw.split("://", 1)[0]
        for i, url in enumerate(self._raw_urls):
            options = self._options if url.split("://", 1)[0] == protocol else {}
            self.members.append(RemoteArchive(url, options, cache_dir=cache_dir, cache_bytes=int(shares[i]),
                                              block_bytes=block_bytes))
            self.atlas.local_members[i] = self.members[-1].local

    # -- use ----------------------------------------------------------------------------------------
    def naming_url(self):
        """Run readers of the mirrors inside: their errors and warnings name the atlas's and members' URLs."""
        mirrors = {r.local: r.url for r in self.members}
        mirrors[self.local] = self.url
        return naming_urls(mirrors)

    def close(self) -> None:
        """Close every member and remove the mirror."""
        for r in self.members:
            r.close()
        self._cleanup()

    def __enter__(self) -> "RemoteAtlas":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteAtlas({self.url!r}, members={len(getattr(self, 'member_urls', []))})"

