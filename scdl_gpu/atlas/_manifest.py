"""``atlas.json``: which member archives an atlas holds, and how each one's genes map onto one vocabulary.

An atlas is a directory::

    atlas.json         the manifest (this module): members, row counts, checksums, the gene
                       vocabulary, the obs schema; replaced atomically, never edited in place
    columns/<m>-<crc>.npy  opt-in: a flat member's columns already mapped onto the vocabulary
                       (atlas/_columns.py), so a batch copies them without the map lookup
    maps/<crc>.npy     each member's column map (int32, one entry per member gene: its column in
                       the vocabulary, or -1 when the vocabulary drops it); named by content, so a
                       manifest being replaced never changes a map another reader still uses
    members/<name>/    members converted into the atlas (members may also live elsewhere)

Members are never rewritten: alignment happens at load time through the maps. Global row ``g``
is row ``g - offsets[m]`` of member ``m = searchsorted(offsets, g, "right") - 1``.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np

from ..archive._memmap import fsync_dir
from ..archive._parse import read_npy
from ..errors import ArchiveError, ArchiveNotFoundError

MANIFEST = "atlas.json"
MAPS_DIR = "maps"
MEMBERS_DIR = "members"
FORMAT = "scdl_gpu-atlas"
VERSION = 1
VOCAB_MODES = ("union", "intersection", "list")


@dataclass(frozen=True)
class AtlasMember:
    """One member archive as the manifest records it."""

    name: str
    path: str  # relative to the atlas directory, absolute, or a URL
    n_rows: int
    n_values: int
    n_genes: int  # the member's own width (its column map's length)
    data_dtype: str
    col_dtype: str
    column_map: str  # relative path of the member's map file
    map_checksum: str  # crc32c of the map file's bytes
    kept: int  # member genes the vocabulary keeps (map >= 0)
    monotone: bool  # kept genes stay in increasing order: sorted member rows stay sorted
    rows_sorted: bool  # the member's writer recorded strictly increasing columns in every row
    checksum: str | None  # the member's recorded files checksum (scdl_gpu_checksums.json), if any
    obs: dict[str, str] = field(default_factory=dict)  # obs column -> "category" | a numpy dtype
    # the member's columns mapped onto the vocabulary (atlas/_columns.py), when materialized:
    # relative path, crc32c of the file's bytes, its dtype; absent from older manifests
    mapped_columns: str | None = None
    mapped_checksum: str | None = None
    mapped_dtype: str | None = None


@dataclass
class Atlas:
    """A parsed, checked manifest. ``root`` is the atlas directory."""

    root: Path
    members: list[AtlasMember]
    genes: np.ndarray  # object array of gene ids: column j of every batch is genes[j]
    vocab_mode: str
    gene_key: str | None
    obs_schema: dict[str, str]
    offsets: np.ndarray = field(init=False)  # int64, len(members) + 1: each member's first global row
    #: where member i's files are read instead of its recorded path: a remote member's local mirror
    local_members: dict[int, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum([m.n_rows for m in self.members], dtype=np.int64)]).astype(np.int64)

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_values(self) -> int:
        return sum(m.n_values for m in self.members)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member_path(self, i: int) -> Path:
        """Where member ``i`` lives (relative paths are relative to the atlas directory), or where
        its files are mirrored (``local_members``)."""
        if i in self.local_members:
            return self.local_members[i]
        p = Path(self.members[i].path)
        return p if p.is_absolute() else self.root / p

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(member, local row)`` of each global row id (``IndexError`` outside the atlas)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            bad = rows[(rows < 0) | (rows >= self.n_rows)][0]
            raise IndexError(f"row {int(bad)} out of range for an atlas of {self.n_rows} rows")
        member = np.searchsorted(self.offsets, rows, side="right") - 1
        return member, rows - self.offsets[member]

    def column_map(self, i: int) -> np.ndarray:
        """Member ``i``'s column map, read and checked (length, range, checksum, recorded facts)."""
        m = self.members[i]
        path = self.root / m.column_map
        try:
            raw = path.read_bytes()
        except FileNotFoundError as e:
            raise ArchiveNotFoundError(f"{path}: the column map of atlas member {m.name!r} is missing") from e
        if f"{google_crc32c.value(raw):08x}" != m.map_checksum:
            raise ArchiveError(f"{path}: the column map of member {m.name!r} does not match its checksum in {MANIFEST}")
        arr = read_npy(path)
        if arr.dtype != np.int32 or arr.ndim != 1 or len(arr) != m.n_genes:
            raise ArchiveError(f"{path}: expected {m.n_genes} int32 entries, found {arr.dtype} of shape {arr.shape}")
        if arr.size and (arr.min() < -1 or arr.max() >= self.n_genes):
            raise ArchiveError(f"{path}: entries outside [-1, {self.n_genes})")
        if int((arr >= 0).sum()) != m.kept or map_facts(arr)[1] != m.monotone:
            raise ArchiveError(f"{path}: the map disagrees with what {MANIFEST} records for member {m.name!r}")
        return arr


def map_facts(column_map: np.ndarray) -> tuple[int, bool]:
    """(kept genes, whether the kept genes' vocabulary columns increase with the member's)."""
    kept = column_map[column_map >= 0]
    return int(kept.size), bool(np.all(np.diff(kept) > 0))


def is_atlas(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def archives_of(path: str | os.PathLike) -> list[Path]:
    """The archive directories a source reads: an atlas's members (manifest checked), else ``path``."""
    if is_atlas(path):
        atlas = read_manifest(path)
        return [atlas.member_path(i) for i in range(len(atlas.members))]
    return [Path(path)]


def read_manifest(path: str | os.PathLike) -> Atlas:
    """Parse and check ``atlas.json`` under ``path`` (members themselves are opened by their readers)."""
    root = Path(path)
    file = root / MANIFEST
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArchiveNotFoundError(f"{root} is not an atlas: {MANIFEST} is missing") from e
    except (OSError, ValueError, RecursionError) as e:
        raise ArchiveError(f"{file}: not a readable atlas manifest: {e}") from e
    try:
        if doc.get("format") != FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, not {FORMAT!r}")
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r} is not one this reader knows ({VERSION})")
        members = [AtlasMember(**m) for m in doc["members"]]
        genes = np.asarray(doc["genes"], dtype=object)
        atlas = Atlas(root, members, genes, doc["vocab_mode"], doc.get("gene_key"), dict(doc.get("obs_schema", {})))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ArchiveError(f"{file}: malformed atlas manifest: {e}") from e
    _check(atlas, file, doc)
    return atlas


def _check(atlas: Atlas, file: Path, doc: dict) -> None:
    names = atlas.names
    if len(set(names)) != len(names):
        raise ArchiveError(f"{file}: member names repeat")
    if atlas.vocab_mode not in VOCAB_MODES:
        raise ArchiveError(f"{file}: vocab_mode {atlas.vocab_mode!r} is not one of {VOCAB_MODES}")
    if len(set(atlas.genes)) != len(atlas.genes):
        raise ArchiveError(f"{file}: the gene vocabulary repeats ids")
    for m in atlas.members:
        if min(m.n_rows, m.n_values, m.n_genes, m.kept) < 0 or m.kept > m.n_genes:
            raise ArchiveError(f"{file}: member {m.name!r} records impossible sizes")
        if len({m.mapped_columns is None, m.mapped_checksum is None, m.mapped_dtype is None}) != 1:
            raise ArchiveError(f"{file}: member {m.name!r} records only part of its mapped columns")
    if doc.get("n_rows") != atlas.n_rows or doc.get("n_genes") != atlas.n_genes:
        raise ArchiveError(f"{file}: n_rows/n_genes disagree with the members and vocabulary it lists")


def write_manifest(atlas: Atlas) -> Path:
    """Replace ``atlas.json`` atomically (temporary file, fsync, rename): readers see the old
    manifest or the new one, never half of one."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "n_rows": atlas.n_rows,
        "n_genes": atlas.n_genes,
        "vocab_mode": atlas.vocab_mode,
        "gene_key": atlas.gene_key,
        "obs_schema": atlas.obs_schema,
        "members": [asdict(m) for m in atlas.members],
        "genes": [str(g) for g in atlas.genes],
    }
    return _replace_file(atlas.root / MANIFEST, json.dumps(doc, indent=1).encode())


def write_map(root: Path, column_map: np.ndarray) -> tuple[str, str]:
    """Store a column map under ``maps/`` named by its content; returns (relative path, checksum)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(column_map, dtype=np.int32), allow_pickle=False)
    raw = buf.getvalue()
    crc = f"{google_crc32c.value(raw):08x}"
    rel = f"{MAPS_DIR}/{crc}-{len(column_map)}.npy"
    target = root / rel
    if not (target.is_file() and target.read_bytes() == raw):
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_file(target, raw)
    return rel, crc


def _replace_file(target: Path, raw: bytes) -> Path:
    return replace_with(target, lambda f: f.write(raw))


def replace_with(target: Path, write) -> Path:
    """Write ``target`` through ``write(file)`` into a temporary sibling, fsync it, rename it over
    ``target``: readers see the old file or the new one, never part of one."""
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return target
