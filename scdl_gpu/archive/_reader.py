"""Open an archive: decide its dtypes, check every file against the others, map the arrays.

Checks are cheap (file sizes and the two ends of ``row_ptr``), so opening a 100M-row archive
stays instant; :func:`validate_archive`-style full scans belong to the CLI. Every file is parsed
under :func:`~scdl_gpu.archive._parse.parsing`: a damaged one raises ``ArchiveError`` naming it.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ArchiveError, ArchiveNotFoundError, HeaderSerializationError
from ._constants import DEFAULT_DTYPES, FLOAT_ORDER, INT_ORDER, LAYOUT_FILE, FileNames
from ._chunked import ChunkedStorage, open_chunked
from ._feature_index import ObservedFeatureIndex, RowFeatureIndex, VariableFeatureIndex
from ._header import SCDLHeader
from ._memmap import map_raw, map_values, raw_length
from ._parse import parsing, read_json
from ._generation import pinned_open

log = logging.getLogger(__name__)

_CSR_FILES = (FileNames.DATA, FileNames.ROWPTR, FileNames.COLPTR)


@dataclass
class ArchiveArrays:
    """The mapped arrays of one archive and what was learned while checking them."""

    path: Path
    data: np.ndarray
    row_ptr: np.ndarray
    col_ptr: np.ndarray
    dtypes: dict[str, str]
    header: SCDLHeader | None
    metadata: dict
    neighbors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)
    reserved: bool = False  # an unfilled preallocation: see unfilled_preallocation
    #: the chunks of a chunked archive (``data``/``col_ptr`` are then :class:`ChunkedVector` and
    #: ``row_ptr`` the global pointers, in memory); None for a flat one
    chunks: ChunkedStorage | None = None

    @property
    def n_rows(self) -> int:
        return 0 if self.reserved else len(self.row_ptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.data)


def read_dtypes(path: Path) -> tuple[dict[str, str], SCDLHeader | None]:
    """dtypes of the three CSR arrays: from ``header.sch``, or upstream's defaults when absent.

    A header that exists but cannot be decoded is an error (upstream silently falls back to the
    defaults and then reads downcast archives as garbage).
    """
    dtypes = dict(DEFAULT_DTYPES)
    hpath = path / FileNames.HEADER.value
    if not hpath.exists():
        log.info("%s has no header.sch; using the pre-header default dtypes", path)
        return dtypes, None
    try:
        with parsing(hpath, "header"):
            header = SCDLHeader.load(str(hpath))
    except HeaderSerializationError as e:
        raise ArchiveError(f"{hpath} is corrupted: {e}") from e
    for member in _CSR_FILES:
        info = header.get_array(member.name)
        if info is None:
            raise ArchiveError(f"{hpath} does not describe the {member.name} array ({member.value})")
        name = info.dtype.numpy_dtype_string
        allowed = INT_ORDER + FLOAT_ORDER if member is FileNames.DATA else INT_ORDER
        if name not in allowed:
            raise ArchiveError(f"{hpath}: {member.name} has dtype {name}; expected one of {allowed}")
        dtypes[member.value] = name
    return dtypes, header


@pinned_open  # one directory generation, no symlinks out of the archive (see _generation.py)
def open_arrays(path: str | Path, writable: bool = False, load_neighbors: bool = False) -> ArchiveArrays:
    """Check an archive directory and memory-map its arrays (read-only unless ``writable``).

    Raises
    ------
    ArchiveNotFoundError
        The directory, ``metadata.json`` or an array file is missing.
    ArchiveError
        A file is truncated, mistyped or disagrees with the others; the message names it.
    """
    path = Path(path)
    if not path.is_dir():
        raise ArchiveNotFoundError(f"No SCDL archive at {path}")
    meta_path = path / FileNames.METADATA.value
    if not meta_path.is_file():
        raise ArchiveNotFoundError(f"the metadata file {meta_path} does not exist; not an SCDL archive?")
    metadata = read_json(meta_path)
    if not isinstance(metadata, dict):
        raise ArchiveError(f"{meta_path}: expected a JSON object, got {type(metadata).__name__}")
    dtypes, header = read_dtypes(path)
    notes: list[str] = []
    chunks, reserved = None, False
    if header is not None and header.is_chunked:
        if writable:
            raise ArchiveError(f"{path} is a chunked archive; it opens read-only")
        row_ptr, data, col_ptr, chunks = open_chunked(path, header, dtypes)
    else:
        row_ptr, data, col_ptr, reserved = _open_flat(path, header, metadata, dtypes, writable)
    n_rows = len(row_ptr) - 1
    for member in (FileNames.VAR_FEATURES, FileNames.OBS_FEATURES, FileNames.FEATURES):
        fdir = path / member.value
        if fdir.is_dir() and (fdir / "cumulative_sum_index.npy").exists():
            # An index with blocks must cover every row (a 0-row index with blocks too: each row's
            # gene count comes from it); one without blocks is upstream's empty obs index.
            blocks, rows = RowFeatureIndex.peek_blocks_and_rows(str(fdir))
            if blocks and rows != n_rows:
                raise ArchiveError(
                    f"The number of rows in the feature index {fdir} ({rows}) does not correspond to "
                    f"the number of rows in the row_index ({n_rows})"
                )

    if header is not None and chunks is None:  # a chunked archive's lengths were checked at open
        expect = {FileNames.DATA: len(data), FileNames.COLPTR: len(col_ptr), FileNames.ROWPTR: len(row_ptr)}
        for member, n in expect.items():
            declared = header.get_array(member.name).length
            if declared != n:
                # Upstream re-saves stale headers after mutating reopened archives; the files
                # agree with each other, so read them and say so.
                msg = f"{path / FileNames.HEADER.value} says {member.name} has {declared} entries; {member.value} has {n}"
                notes.append(msg)
                warnings.warn(f"Stale header: {msg}. Reading the files.", UserWarning, stacklevel=3)

    neighbors = _open_neighbors(path, n_rows, writable) if load_neighbors else None
    return ArchiveArrays(
        path=path,
        data=data,
        row_ptr=row_ptr,
        col_ptr=col_ptr,
        dtypes=dtypes,
        header=header,
        metadata=metadata,
        neighbors=neighbors,
        warnings=notes,
        chunks=chunks,
        reserved=reserved,
    )


def _open_flat(path: Path, header, metadata: dict, dtypes: dict[str, str], writable: bool):
    """``(row_ptr, data, col_ptr, reserved)`` of a flat archive, mapped and checked against each
    other (an unfilled preallocation's value files keep their reserved length)."""
    rp_path = path / FileNames.ROWPTR.value
    n_rowptr = raw_length(rp_path, dtypes[FileNames.ROWPTR.value])
    if n_rowptr < 1:
        raise ArchiveError(f"{rp_path} is empty; it needs at least one entry (0)")
    with parsing(rp_path):
        row_ptr = map_raw(rp_path, dtypes[FileNames.ROWPTR.value], n_rowptr, writable)
    nnz = int(row_ptr[-1])
    if int(row_ptr[0]) != 0:
        raise ArchiveError(f"{rp_path} starts at {int(row_ptr[0])}, expected 0")
    reserved = unfilled_preallocation(path, header, metadata, dtypes, row_ptr)
    data, col_ptr = (
        map_values(path / m.value, dtypes[m.value], raw_length(path / m.value, dtypes[m.value]) if reserved else nnz,
                   FileNames.ROWPTR.value, writable)
        for m in (FileNames.DATA, FileNames.COLPTR)
    )
    return row_ptr, data, col_ptr, reserved


def unfilled_preallocation(path: Path, header, metadata: dict, dtypes: dict, row_ptr: np.ndarray) -> bool:
    """True for upstream's ``SingleCellMemMapDataset(path, num_rows=, num_elements=)`` saved before
    anything was written: every row empty (``row_ptr`` all 0), no row counted (``metadata.json``,
    no gene table) and ``data.npy``/``col_ptr.npy`` as long as the header says (their capacity).
    Such an archive is empty; its reserved rows read as empty rows, as upstream. Anything else
    with values beyond ``row_ptr``'s end is damage."""
    if header is None or metadata.get("num_rows") != 0 or len(row_ptr) < 2 or int(row_ptr[-1]) != 0:
        return False
    for member in (FileNames.DATA, FileNames.COLPTR):
        info = header.get_array(member.name)
        if info.length == 0 or raw_length(path / member.value, dtypes[member.value]) != info.length:
            return False
    var = path / FileNames.VAR_FEATURES.value
    if (var / "cumulative_sum_index.npy").exists() and RowFeatureIndex.peek_blocks_and_rows(str(var))[1]:
        return False
    return not np.any(row_ptr)


def _open_neighbors(path: Path, n_rows: int, writable: bool):
    names = (FileNames.NEIGHBOR_INDICES_PTR, FileNames.NEIGHBOR_INDICES, FileNames.NEIGHBOR_VALUES)
    missing = [m.value for m in names if not (path / m.value).is_file()]
    if len(missing) == len(names):
        return None
    if missing:  # a graph with a file gone is damage, not an archive without a graph
        raise ArchiveNotFoundError(f"{path / missing[0]} is missing; the archive holds the other neighbor arrays")
    ptr_path = path / FileNames.NEIGHBOR_INDICES_PTR.value
    n_ptr = raw_length(ptr_path, DEFAULT_DTYPES[ptr_path.name])
    if n_ptr != n_rows + 1:
        raise ArchiveError(f"{ptr_path} has {n_ptr} entries; the archive has {n_rows} rows (expected {n_rows + 1})")
    with parsing(ptr_path):
        indptr = map_raw(ptr_path, DEFAULT_DTYPES[ptr_path.name], n_ptr, writable)
    nnz = int(indptr[-1])
    # Every cell's span is read as it is: checked once here (cheaper than the index scan below).
    if int(indptr[0]) != 0 or bool(np.any(indptr[1:] < indptr[:-1])):
        raise ArchiveError(f"{ptr_path} must start at 0 and never decrease; the archive is damaged")
    out = [indptr]
    for m in names[1:]:
        fpath = path / m.value
        dt = DEFAULT_DTYPES[m.value]
        if nnz == 0 and fpath.stat().st_size < max(2, np.dtype(dt).itemsize):
            out.append(np.empty(0, dt))
            continue
        n = raw_length(fpath, dt)
        if n != nnz:
            raise ArchiveError(f"{fpath} holds {n} entries but {ptr_path.name} ends at {nnz}")
        with parsing(fpath):
            out.append(map_raw(fpath, dt, n, writable))
    if nnz and int(out[1].max()) >= n_rows:
        raise ArchiveError(f"{path / FileNames.NEIGHBOR_INDICES.value} points past the last of {n_rows} rows")
    return tuple(out)


def load_feature_index(path: str | Path, which: FileNames):
    """The archive's var or obs index; ``features/`` stands in for var in the oldest layouts."""
    path = Path(path)
    cls = VariableFeatureIndex if which is FileNames.VAR_FEATURES else ObservedFeatureIndex
    d = path / which.value
    if which is FileNames.VAR_FEATURES and not d.is_dir():
        d = path / FileNames.FEATURES.value
    if not d.is_dir():
        return cls()
    with parsing(d, "feature index"):  # each file has its own guard; this one catches the rest
        return cls.load(str(d), pickled_labels_ok=True)  # the wheel's CLI archives still open


def layout_facts(path: str | Path) -> dict:
    """The writer's notes in ``scdl_gpu.json``; ``{}`` when absent or unreadable (they are hints)."""
    try:
        facts = json.loads((Path(path) / LAYOUT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return facts if isinstance(facts, dict) else {}


def rows_sorted(path: str | Path, n_rows: int, nnz: int) -> bool:
    """True when the archive's writer recorded that every row's columns are strictly increasing,
    and the arrays are still the ones it wrote (same rows and values); False when unknown."""
    facts = layout_facts(path)
    return facts.get("rows_sorted") is True and facts.get("n_rows") == n_rows and facts.get("nnz") == nnz


def row_order_of(facts: dict) -> dict | None:
    """``{"row_order": "input" | "shuffle" | None, "shuffle_seed": int | None}`` from the notes;
    None when malformed. Notes without a row order are an input-order archive of ours; no notes
    at all (archives other tools wrote): not recorded."""
    order, seed = facts.get("row_order"), facts.get("shuffle_seed")
    if order is None and seed is None:
        return {"row_order": "input" if facts else None, "shuffle_seed": None}
    if order == "input" and seed is None:
        return {"row_order": order, "shuffle_seed": None}
    if order == "shuffle" and isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
        return {"row_order": order, "shuffle_seed": seed}
    return None
