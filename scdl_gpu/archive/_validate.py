"""Full integrity check of an archive: every file against its recorded checksum and against the others.

:func:`open_arrays` checks only what is cheap (file sizes, the two ends of ``row_ptr``) and stops
at the first problem. :func:`validate_archive` verifies the checksum manifest (``_checksums``),
reads every file the loader reads (arrays in bounded chunks, feature tables and names sidecars
batch by batch) and reports every problem it finds as one plain-English line, without raising
for a damaged archive.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ArchiveError
from ._atomic import _alive, _host, _owner
from ._checksums import MANIFEST_FILE, has_manifest, is_temporary_name, verify_manifest, write_manifest
from ._constants import DEFAULT_DTYPES, LAYOUT_FILE, FileNames
from ._chunked import ChunkedStorage, open_chunked
from ._feature_index import _BLOCK_RE, _NAMES_RE
from ._header import SCDLHeader
from ._memmap import map_raw, raw_length
from ._obsm import obsm_problems
from ._reader import load_feature_index, read_dtypes, row_order_of, unfilled_preallocation

__all__ = ["ValidationReport", "validate_archive", "validation_report", "write_checksums"]

_CSR = (FileNames.DATA, FileNames.ROWPTR, FileNames.COLPTR)
_NEIGHBORS = (FileNames.NEIGHBOR_INDICES_PTR, FileNames.NEIGHBOR_INDICES, FileNames.NEIGHBOR_VALUES)
# Loader warnings about layouts that are legitimate (not damage) and so are not problems.
# 0.1.3-wheel labels.npy: readable (upstream HEAD's deprecation notice), pickled ones just not unpickled.
_BENIGN_WARNINGS = ("holds pickled objects", "Found legacy labels.npy")
# Hidden siblings ``.<archive>.<kind>-<host>-<pid>-<token>`` that writers create beside the archive
# they replace (``_atomic``; older versions: ``.<archive>.<kind>-<token>``).
_SIBLING_KINDS = ("partial-", "old-", "journal-")
_DEFAULT_CHUNK = 1 << 24


@dataclass
class ValidationReport:
    """What :func:`validation_report` found: ``problems`` make an archive invalid, ``notes`` do not."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: every file of the archive, and only those, matched the checksums recorded when it was written
    checksums_verified: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_archive(path: str | Path, *, quick: bool = False, chunk: int = _DEFAULT_CHUNK) -> list[str]:
    """Check an archive completely; return one plain-English line per problem ([] = valid).

    The problems of :func:`validation_report` (which also returns notes, such as an archive
    carrying no checksums).
    """
    return validation_report(path, quick=quick, chunk=chunk).problems


def validation_report(path: str | Path, *, quick: bool = False, chunk: int = _DEFAULT_CHUNK) -> ValidationReport:
    """Check an archive completely: one plain-English line per problem, and notes that are not problems.

    Never raises for a damaged archive: each check that fails is reported and the checks that
    do not depend on it still run. Arrays are read ``chunk`` items at a time (memory stays
    bounded by a few chunks whatever the archive size); feature indices are loaded whole, as
    opening the dataset does.

    Checks: the checksum manifest (every file present, unchanged in size and, unless ``quick``,
    in content; no file added), run beside the structural checks; leftovers of interrupted
    writes (hidden ``.<name>.partial-*``/``.<name>.old-*`` siblings, ``*.partial`` and hidden
    ``*.tmp`` files inside); ``metadata.json`` (readable, ``num_rows`` equal to the rows of
    ``row_ptr.npy``), ``version.json`` (present, a JSON string), ``header.sch`` (decodable, array
    lengths equal to the files; a header-less legacy archive is fine and uses the default
    dtypes), array files (a whole number of items, ``data.npy`` and ``col_ptr.npy`` equally
    long), ``row_ptr.npy`` (starts at 0, never decreases, ends at the number of values), column
    indices (below the gene count of the var block each row belongs to; strictly increasing in
    each row when ``scdl_gpu.json`` records so), data values (no NaN or infinity), feature
    indices (every parquet table and names sidecar read in full and its Arrow data validated;
    rows equal the archive's rows; an absent or empty obs index is fine) and the neighbor arrays
    when present (complete, consistent CSR, indices below the number of rows), and the obsm
    arrays (``obsm/<key>.npy``: readable header, one row per archive row, size as declared).

    An archive without a manifest (bionemo-scdl's, or one written before checksums existed) is
    checked for structure only, which a ``notes`` line says.
    """
    if int(chunk) < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    path = Path(path)
    report = ValidationReport(path)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        report.problems.append(f"No SCDL archive at {path}: the path {what}.")
        _leftovers(path, report)  # a replacement killed between its two renames leaves no archive
        return report
    v = _Validator(path, int(chunk))
    _leftovers(path, report)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Checksums on their own thread: crc32c and the structural scans' NumPy calls release the GIL.
        verifying = pool.submit(_verify, path, not quick) if has_manifest(path) else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v.run()
        checksum_problems = verifying.result() if verifying is not None else []
    report.problems += checksum_problems
    for w in caught:
        msg = str(w.message)
        if not any(s in msg for s in _BENIGN_WARNINGS):
            v.problem(msg)
    report.problems += v.problems
    report.notes += v.notes
    if verifying is None:
        report.notes.append(
            f"{path} carries no checksums ({MANIFEST_FILE}; archives written by bionemo-scdl or an older "
            f"scdl_gpu have none): its structure was checked, but damage that keeps it well-formed cannot be "
            f"detected. `scdl-gpu validate --write-checksums` records them for an archive you trust."
        )
    elif quick:
        report.notes.append(f"Quick check: file names and sizes were compared with {MANIFEST_FILE}, contents were not.")
    else:
        report.checksums_verified = not checksum_problems
    return report


def write_checksums(path: str | Path, *, chunk: int = _DEFAULT_CHUNK) -> Path:
    """Record a checksum manifest for the archive at ``path`` once a full validation finds no problem.

    Returns the manifest's path. Raises ``ArchiveError`` listing the problems otherwise (an
    existing manifest is verified too: one that no longer matches is not silently replaced;
    delete it first if the archive was changed on purpose by a tool that does not update it).
    """
    report = validation_report(path, chunk=chunk)
    if report.problems:
        lines = "\n".join(f"  {p}" for p in report.problems)
        raise ArchiveError(f"Not recording checksums for {path}: validation found {len(report.problems)} problem(s):\n{lines}")
    return write_manifest(path)


def _verify(path: Path, contents: bool) -> list[str]:
    try:
        return verify_manifest(path, contents=contents)
    except Exception as e:  # never let a damaged archive escape as an exception
        return [f"{path / MANIFEST_FILE}: checksums cannot be verified: {type(e).__name__}: {e}"]


def _leftovers(path: Path, report: ValidationReport) -> None:
    """Files and directories that interrupted writes left beside or inside the archive: problems;
    the hidden sibling of a write still running on this machine: a note."""
    prefix = f".{path.name}."
    try:
        siblings = sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name[len(prefix) :].startswith(_SIBLING_KINDS))
    except OSError:
        siblings = []
    inside = []
    for root, dirnames, filenames in os.walk(path):
        for name in sorted(dirnames + filenames):
            if is_temporary_name(name) or (name.startswith(".") and any(f".{k}" in name for k in _SIBLING_KINDS)):
                inside.append(Path(root) / name)
        dirnames[:] = [d for d in dirnames if Path(root, d) not in inside]
    me = _host()
    for p in siblings + inside:
        owner = _owner(path, p.name) if p.parent == path.parent else None
        if owner is not None and owner[1] == me and _alive(owner[2]):
            report.notes.append(f"{p} belongs to a write of {path} still running (process {owner[2]}).")
            continue
        report.problems.append(
            f"{p} is left over from an interrupted write ({_size_text(p)}); it is no part of the archive and can be "
            f"deleted once no scdl_gpu process is writing {path}."
        )


def _size_text(p: Path) -> str:
    try:
        if p.is_dir():
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        else:
            size = p.stat().st_size
    except OSError:
        return "size unknown"
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size:,} bytes"


class _Validator:
    def __init__(self, path: Path, chunk: int) -> None:
        self.path = path
        self.chunk = chunk
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.n_rows: int | None = None  # from row_ptr.npy
        self.nnz: int | None = None  # from data.npy (or col_ptr.npy)
        self.row_ptr_ok = False
        self.dtypes: dict[str, str] | None = None
        self.header: SCDLHeader | None = None
        self.lengths: dict[FileNames, int | None] = {}
        self.reserved = False  # an unfilled preallocation: 0 rows, spare capacity (see _reader)
        self.storage: ChunkedStorage | None = None  # a chunked archive's chunks (check_chunks)
        self.global_row_ptr: np.ndarray | None = None

    def problem(self, msg: str) -> None:
        if msg not in self.problems:
            self.problems.append(msg)

    def _guard(self, what: str, check, *args):
        """Run one check; an ArchiveError or OSError it raises becomes a problem, not an exception."""
        try:
            return check(*args)
        except (ArchiveError, OSError) as e:
            self.problem(str(e))
        except Exception as e:  # never let a damaged archive escape as an exception
            self.problem(f"{what}: unexpected {type(e).__name__}: {e}")
        return None

    def run(self) -> None:
        p = self.path
        metadata = _read_json(p / FileNames.METADATA.value, self)
        version = _read_json(p / FileNames.VERSION.value, self)
        if version is not _MISSING and version is not _BROKEN and not isinstance(version, str):
            self.problem(f"{p / FileNames.VERSION.value} holds {version!r}, expected a JSON string such as \"0.1.3\".")
        self._guard("header.sch", self.check_header)
        if self.header is not None and self.header.is_chunked:
            self._guard("chunks", self.check_chunks)
            if self.storage is not None and self.storage.compressed:
                self.check_compressed()
        elif self.dtypes is not None:
            self._guard("array files", self.check_lengths)
            if isinstance(metadata, dict) and self.lengths.get(FileNames.ROWPTR):
                self._guard("array files", self.check_reserved, metadata)
            if self.lengths.get(FileNames.ROWPTR) is not None:
                self._guard(FileNames.ROWPTR.value, self.check_row_ptr)
        if self.dtypes is not None and self.lengths.get(FileNames.DATA):
            for fpath, n, _ in self._value_files(FileNames.DATA):
                self._guard(str(fpath), self.check_values, fpath, n)
        var = self._guard(FileNames.VAR_FEATURES.value, self._index, FileNames.VAR_FEATURES)
        self._guard(FileNames.OBS_FEATURES.value, self._index, FileNames.OBS_FEATURES)
        if var is not None and len(var) and self.lengths.get(FileNames.COLPTR):
            self._guard(FileNames.COLPTR.value, self.check_columns, var)
        self._guard(LAYOUT_FILE, self.check_layout)
        self._guard("neighbor arrays", self.check_neighbors)
        for msg in self._guard("obsm arrays", obsm_problems, p, self.n_rows) or []:
            self.problem(msg)
        if isinstance(metadata, dict):
            num_rows = metadata.get("num_rows")
            meta = p / FileNames.METADATA.value
            if not isinstance(num_rows, int) or isinstance(num_rows, bool):
                self.problem(f"{meta} has no integer num_rows: {metadata!r}.")
            elif self.n_rows is not None and num_rows != (0 if self.reserved else self.n_rows):
                self.problem(f"{meta} says num_rows is {num_rows} but {FileNames.ROWPTR.value} describes {self.n_rows} rows.")
        elif metadata is not _MISSING and metadata is not _BROKEN:
            self.problem(f"{p / FileNames.METADATA.value} holds {type(metadata).__name__}, expected a JSON object.")

    # -- header and file lengths ---------------------------------------------------------------
    def check_header(self) -> None:
        # read_dtypes decodes the header and checks its dtypes; no header = legacy defaults.
        self.dtypes, self.header = read_dtypes(self.path)

    def check_chunks(self) -> None:
        """A chunked archive: every chunk's files against its row_ptr, the header and ChunkedInfo
        (the open's checks, which read every row pointer); the first mismatch is the problem."""
        row_ptr, data, _, self.storage = open_chunked(self.path, self.header, self.dtypes)
        self.global_row_ptr, self.n_rows, self.nnz = row_ptr, len(row_ptr) - 1, data.size
        self.lengths = {FileNames.DATA: self.nnz, FileNames.COLPTR: self.nnz, FileNames.ROWPTR: self.n_rows + 1}
        self.row_ptr_ok = True

    def check_compressed(self) -> None:
        """Decode every chunk of a compressed archive: each frame's size, each array's size and its
        CRC-32C against the chunk's frame index (one problem per damaged chunk)."""
        for k in range(self.storage.num_chunks):
            self._guard(f"chunk {k}", self.storage.decoded, k)

    def _items(self, fpath: Path, dtype, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(position, items)`` of items ``[start, stop)`` of a value or column file, a chunk at a
        time: read from disk, or from the decoded chunk of a compressed archive."""
        if self.storage is None or not self.storage.compressed:
            yield from _chunks(fpath, dtype, start, stop, self.chunk)
            return
        k = int(fpath.parent.name.removeprefix("chunk_"))
        arr = self.storage.decoded(k)[0 if fpath.name.startswith("data.") else 1]
        for pos in range(start, stop, self.chunk):
            yield pos, arr[pos : min(pos + self.chunk, stop)]

    def _value_files(self, member: FileNames) -> list[tuple[Path, int, int]]:
        """``(file, items, first global position)`` holding the values (or columns) of the archive."""
        if self.storage is None:
            return [(self.path / member.value, self.lengths[member], 0)]
        off = self.storage.value_offsets
        return [(self.storage.file(k, member), int(off[k + 1] - off[k]), int(off[k])) for k in range(len(off) - 1)]

    def _ptr(self, row: int) -> int:
        if self.storage is not None:
            return int(self.global_row_ptr[row])
        return _read_one(self.path / FileNames.ROWPTR.value, self.dtypes[FileNames.ROWPTR.value], row)

    def check_lengths(self) -> None:
        rp_last = None
        try:
            n_ptr = self.lengths[FileNames.ROWPTR] = self._length(FileNames.ROWPTR, None)
            if n_ptr is not None and n_ptr < 1:
                self.problem(f"{self.path / FileNames.ROWPTR.value} is empty; it needs at least one entry (0).")
                self.lengths[FileNames.ROWPTR] = None
            elif n_ptr is not None:
                self.n_rows = n_ptr - 1
                rp_last = _read_one(self.path / FileNames.ROWPTR.value, self.dtypes[FileNames.ROWPTR.value], n_ptr - 1)
        except ArchiveError as e:
            self.problem(str(e))
        for member in (FileNames.DATA, FileNames.COLPTR):
            try:
                self.lengths[member] = self._length(member, rp_last)
            except ArchiveError as e:
                self.problem(str(e))
        n_data, n_col = self.lengths.get(FileNames.DATA), self.lengths.get(FileNames.COLPTR)
        if n_data is not None and n_col is not None and n_data != n_col:
            self.problem(
                f"{FileNames.DATA.value} holds {n_data} values but {FileNames.COLPTR.value} holds {n_col} "
                f"column indices; they must be equally long."
            )
        self.nnz = n_data if n_data is not None else n_col
        if self.header is not None:
            hpath = self.path / FileNames.HEADER.value
            for member in _CSR:
                n = self.lengths.get(member)
                info = self.header.get_array(member.name)
                if n is not None and info is not None and info.length != n:
                    self.problem(
                        f"{hpath} says {member.name} has {info.length} entries but {member.value} holds {n} "
                        f"{self.dtypes[member.value]} items."
                    )

    def check_reserved(self, metadata: dict) -> None:
        rp = self.path / FileNames.ROWPTR.value
        row_ptr = map_raw(rp, self.dtypes[FileNames.ROWPTR.value], self.lengths[FileNames.ROWPTR])
        self.reserved = unfilled_preallocation(self.path, self.header, metadata, self.dtypes, row_ptr)
        if self.reserved:
            self.notes.append(
                f"{self.path} is a preallocation nothing was written into (num_rows/num_elements, saved "
                f"unfilled): 0 rows; its {self.n_rows} reserved rows read as empty, {self.nnz} values of capacity."
            )

    def _length(self, member: FileNames, ptr_last: int | None) -> int | None:
        fpath = self.path / member.value
        if not fpath.is_file():
            self.problem(f"{fpath} is missing.")
            return None
        return _raw_length(fpath, self.dtypes[member.value], ptr_last)

    # -- row pointers, values, columns ----------------------------------------------------------
    def check_row_ptr(self) -> None:
        fpath = self.path / FileNames.ROWPTR.value
        dt = self.dtypes[FileNames.ROWPTR.value]
        ok, last = _check_indptr(fpath, dt, self.lengths[FileNames.ROWPTR], self.chunk, self)
        if last is not None and self.nnz is not None and last != self.nnz and not self.reserved:
            src = FileNames.DATA if self.lengths.get(FileNames.DATA) is not None else FileNames.COLPTR
            self.problem(f"{fpath} ends at {last} but {src.value} holds {self.nnz} values; the last entry must equal it.")
            ok = False
        self.row_ptr_ok = ok and self.nnz is not None

    def check_values(self, fpath: Path, n: int) -> None:
        dt = np.dtype(self.dtypes[FileNames.DATA.value])
        if dt.kind != "f":
            return
        n_nan = n_inf = 0
        first = None
        for pos, a in self._items(fpath, dt, 0, n):
            finite = np.isfinite(a)
            if finite.all():
                continue
            nan = np.isnan(a)
            n_nan += int(nan.sum())
            n_inf += int((~finite).sum()) - int(nan.sum())
            if first is None:
                first = pos + int(np.argmin(finite))
        if n_nan or n_inf:
            self.problem(
                f"{fpath} holds {n_nan} NaN and {n_inf} infinite value(s) (first at value position {first})."
            )

    def check_columns(self, var) -> None:
        dt = self.dtypes[FileNames.COLPTR.value]
        csum = np.asarray(var._cumulative_sum_index, dtype=np.int64)
        # A block without feature columns does not say how many genes it has: not checked.
        dims = {b: genes for b, genes in enumerate(var.column_dims()) if var._feature_arr[b]}
        if not dims:
            return
        if not self.row_ptr_ok or self.n_rows is None:
            # Rows cannot be mapped to values: check against the widest block only.
            blocks = [("the widest var block", 0, self.lengths[FileNames.COLPTR], max(dims.values()))]
        else:
            blocks = []
            for b, genes in dims.items():
                r0 = min(max(int(csum[b]), 0), self.n_rows)
                r1 = min(max(int(csum[b + 1]), r0), self.n_rows)
                if r1 > r0:
                    blocks.append((f"var block {b} (rows {r0} to {r1 - 1})", self._ptr(r0), self._ptr(r1), genes))
        files = self._value_files(FileNames.COLPTR)
        for where, v0, v1, genes in blocks:
            n_bad, first, largest, fpath = 0, None, 0, files[0][0] if files else self.path / FileNames.COLPTR.value
            for path, n, base in files:  # the block's values in each file (one file unless chunked)
                lo, hi = max(v0 - base, 0), min(v1 - base, n)
                for pos, a in self._items(path, dt, lo, hi) if lo < hi else ():
                    top = int(a.max())
                    if top < genes:
                        continue
                    bad = a >= genes
                    n_bad += int(bad.sum())
                    largest = max(largest, top)
                    if first is None:
                        first, fpath = pos + int(np.argmax(bad)), path
            if n_bad:
                self.problem(
                    f"{fpath} holds {n_bad} column index(es) not below the {genes} genes of {where}: "
                    f"largest {largest}, first at value position {first}."
                )

    # -- feature indices ---------------------------------------------------------------------------
    def _index(self, which: FileNames):
        d = self.path / which.value
        if which is FileNames.VAR_FEATURES and not d.is_dir():
            d = self.path / FileNames.FEATURES.value
        if not d.is_dir():
            return None  # no var index: columns are not checked; no obs index: fine
        if not self.check_feature_files(d):
            return None  # not loaded: the index reader would trip over the file just reported
        index = None
        try:
            index = load_feature_index(self.path, which)
        except (ArchiveError, OSError) as e:
            self.problem(str(e))
        except Exception as e:
            self.problem(f"{d}: cannot load the feature index: {type(e).__name__}: {e}")
        if index is None:
            return None
        rows = index.number_of_rows()
        if rows and self.n_rows is not None and rows != self.n_rows:
            self.problem(
                f"The feature index {d} covers {rows} rows but {FileNames.ROWPTR.value} describes {self.n_rows} rows."
            )
        self._header_index_length(d.name, rows)
        return index

    def check_feature_files(self, d: Path) -> bool:
        """Read every parquet table and names sidecar of ``d`` in full; False if one is damaged.

        Parquet page checksums are verified where the writer stored them, and every batch's Arrow
        data is validated (offsets in bounds, valid UTF-8) before anything converts it: damaged
        offsets in a sidecar crash pyarrow's conversions rather than raise.
        """
        ok = True
        for f in sorted(d.iterdir()):
            if not f.is_file():
                continue
            try:
                if _BLOCK_RE.match(f.name):
                    for batch in pq.ParquetFile(str(f), page_checksum_verification=True).iter_batches():
                        batch.validate(full=True)
                elif _NAMES_RE.match(f.name):
                    with pa.memory_map(str(f)) as src:
                        reader = pa.ipc.open_file(src)
                        field = reader.schema.field("name") if "name" in reader.schema.names else None
                        if field is None or not pa.types.is_string(field.type):
                            raise ArchiveError(f"names sidecar {f} has no string column 'name'.")
                        for i in range(reader.num_record_batches):
                            reader.get_batch(i).validate(full=True)
            except ArchiveError as e:
                self.problem(str(e))
                ok = False
            except Exception as e:  # pyarrow's errors, and anything else a damaged file provokes
                self.problem(f"{f} is damaged: {type(e).__name__}: {' '.join(str(e).split())}")
                ok = False
        return ok

    def _header_index_length(self, name: str, rows: int) -> None:
        info = self.header.get_feature_index(name) if self.header is not None else None
        if info is not None and info.length != rows:
            hpath = self.path / FileNames.HEADER.value
            self.problem(f"{hpath} says feature index {name} covers {info.length} rows but {name}/ covers {rows}.")

    # -- scdl_gpu.json -----------------------------------------------------------------------------------
    def check_layout(self) -> None:
        """Our writer's notes: well-formed; where they claim sorted rows, the rows are sorted."""
        fpath = self.path / LAYOUT_FILE
        if not fpath.is_file():
            return  # optional: archives written by other tools have none
        facts = _read_json(fpath, self)
        if facts is _BROKEN:
            return
        keys = ("n_rows", "nnz")
        if not (
            isinstance(facts, dict)
            and all(isinstance(facts.get(k), int) and not isinstance(facts.get(k), bool) for k in keys)
            and isinstance(facts.get("rows_sorted"), bool)
        ):
            self.problem(f"{fpath} holds {facts!r}; expected an object with integer n_rows and nnz and boolean rows_sorted.")
            return
        if row_order_of(facts) is None:
            self.problem(
                f"{fpath} records row_order {facts.get('row_order')!r} (seed {facts.get('shuffle_seed')!r}); expected "
                "'input', or 'shuffle' with a non-negative integer shuffle_seed."
            )
        if self.n_rows is None or self.nnz is None:
            return
        if (facts["n_rows"], facts["nnz"]) != (self.n_rows, self.nnz):
            # Readers ignore stale notes; another tool (bionemo-scdl) changed the arrays in place.
            self.notes.append(
                f"{fpath} describes {facts['n_rows']} rows and {facts['nnz']} values but the arrays hold "
                f"{self.n_rows} and {self.nnz}: its notes are out of date and unused."
            )
        elif facts["rows_sorted"] and self.row_ptr_ok and self.lengths.get(FileNames.COLPTR) == self.nnz:
            if self.storage is None:
                rp = map_raw(self.path / FileNames.ROWPTR.value, self.dtypes[FileNames.ROWPTR.value], self.n_rows + 1)
                self.check_sorted_rows(fpath, self.path / FileNames.COLPTR.value, rp, self.nnz)
            for k in range(self.storage.num_chunks if self.storage is not None else 0):
                rp = self.storage.row_ptr[k]
                self.check_sorted_rows(fpath, self.storage.file(k, FileNames.COLPTR), rp, int(rp[-1]),
                                       k * self.storage.chunk_size)

    def check_sorted_rows(self, layout: Path, fpath: Path, rp: np.ndarray, nnz: int, first_row: int = 0) -> None:
        """Every row's column indices strictly increase (loaders trusting ``rows_sorted`` skip the sort):
        the columns in ``fpath`` (``nnz``) of the rows ``rp`` points into, the first being ``first_row``."""
        n_bad, first, prev = 0, None, None
        for pos, a in self._items(fpath, self.dtypes[FileNames.COLPTR.value], 0, nnz):
            # bad[k]: a[k] does not exceed the value before it (across chunks too) ...
            bad = np.empty(len(a), dtype=bool)
            bad[0] = prev is not None and a[0] <= prev
            np.less_equal(a[1:], a[:-1], out=bad[1:])
            # ... unless a[k] starts a row
            lo, hi = np.searchsorted(rp, [pos, pos + len(a)], side="left")
            bad[(rp[lo:hi].astype(np.int64) - pos)] = False
            prev = a[-1]
            if bad.any():
                n_bad += int(bad.sum())
                first = pos + int(np.argmax(bad)) if first is None else first
        if n_bad:
            row = first_row + int(np.searchsorted(rp, first, side="right")) - 1
            self.problem(
                f"{fpath} holds {n_bad} column index(es) not above the one before it in the same row (first in "
                f"row {row}, at value position {first}), but {layout} records that every row strictly increases."
            )

    # -- neighbors -----------------------------------------------------------------------------------
    def check_neighbors(self) -> None:
        p = self.path
        present = [m for m in _NEIGHBORS if (p / m.value).is_file()]
        if not present:
            return
        if len(present) < len(_NEIGHBORS):
            missing = [m.value for m in _NEIGHBORS if m not in present]
            self.problem(f"Neighbor arrays in {p} are incomplete: {', '.join(missing)} missing.")
            return
        ptr_path = p / FileNames.NEIGHBOR_INDICES_PTR.value
        ptr_dt = DEFAULT_DTYPES[ptr_path.name]
        try:
            n_ptr = raw_length(ptr_path, ptr_dt)
        except ArchiveError as e:
            self.problem(str(e))
            n_ptr = None
        ptr_last = _read_one(ptr_path, ptr_dt, n_ptr - 1) if n_ptr else None
        lengths = {}
        for m in _NEIGHBORS[1:]:
            try:
                lengths[m] = _raw_length(p / m.value, DEFAULT_DTYPES[m.value], ptr_last)
            except ArchiveError as e:
                self.problem(str(e))
        n_idx, n_val = lengths.get(FileNames.NEIGHBOR_INDICES), lengths.get(FileNames.NEIGHBOR_VALUES)
        if n_idx is not None and n_val is not None and n_idx != n_val:
            self.problem(
                f"{p / FileNames.NEIGHBOR_INDICES.value} holds {n_idx} entries but "
                f"{FileNames.NEIGHBOR_VALUES.value} holds {n_val}; they must be equally long."
            )
        if n_ptr is not None:
            if n_ptr < 1:
                self.problem(f"{ptr_path} is empty; it needs at least one entry (0).")
            else:
                if self.n_rows is not None and n_ptr != self.n_rows + 1:
                    self.problem(
                        f"{ptr_path} has {n_ptr} entries but the archive has {self.n_rows} rows (expected {self.n_rows + 1})."
                    )
                _, last = _check_indptr(ptr_path, ptr_dt, n_ptr, self.chunk, self)
                if last is not None and n_idx is not None and last != n_idx:
                    self.problem(
                        f"{ptr_path} ends at {last} but {FileNames.NEIGHBOR_INDICES.value} holds {n_idx} entries; "
                        f"the last entry must equal it."
                    )
        if n_idx and self.n_rows is not None:
            fpath = p / FileNames.NEIGHBOR_INDICES.value
            n_bad, first, largest = 0, None, None
            for pos, a in _chunks(fpath, DEFAULT_DTYPES[fpath.name], 0, n_idx, self.chunk):
                bad = a >= self.n_rows
                if bad.any():
                    n_bad += int(bad.sum())
                    largest = max(largest or 0, int(a.max()))
                    first = pos + int(np.argmax(bad)) if first is None else first
            if n_bad:
                self.problem(
                    f"{fpath} holds {n_bad} neighbor index(es) not below the {self.n_rows} rows: "
                    f"largest {largest}, first at position {first}."
                )
        if n_val:
            fpath = p / FileNames.NEIGHBOR_VALUES.value
            n_bad = sum(int((~np.isfinite(a)).sum()) for _, a in _chunks(fpath, DEFAULT_DTYPES[fpath.name], 0, n_val, self.chunk))
            if n_bad:
                self.problem(f"{fpath} holds {n_bad} NaN or infinite weight(s).")


# -- helpers ------------------------------------------------------------------------------------------
_MISSING = object()
_BROKEN = object()


def _read_json(fpath: Path, v: _Validator):
    if not fpath.is_file():
        v.problem(f"{fpath} is missing.")
        return _MISSING
    try:
        return json.loads(fpath.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        v.problem(f"{fpath} is not valid JSON: {e}")
        return _BROKEN


def _raw_length(fpath: Path, dtype: str, ptr_last: int | None) -> int:
    """Items in a raw file; upstream's 1-byte stand-in for an empty array counts as 0 items when
    the pointer array that indexes it (``ptr_last`` = its last entry) says it is empty."""
    if ptr_last == 0 and fpath.stat().st_size < max(2, np.dtype(dtype).itemsize):
        return 0
    return raw_length(fpath, dtype)


def _chunks(fpath: Path, dtype, start: int, stop: int, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(position, items)`` for items ``[start, stop)`` of a raw little-endian file, ``chunk`` at a time."""
    dt = np.dtype(dtype).newbyteorder("<")
    with open(fpath, "rb") as f:
        pos = start
        while pos < stop:
            n = min(chunk, stop - pos)
            f.seek(pos * dt.itemsize)
            a = np.fromfile(f, dtype=dt, count=n)
            if len(a) != n:
                raise ArchiveError(f"{fpath} ended early: item {pos + len(a)} of {stop} could not be read.")
            yield pos, a
            pos += n


def _read_one(fpath: Path, dtype, i: int) -> int:
    return int(next(_chunks(fpath, dtype, i, i + 1, 1))[1][0])


def _check_indptr(fpath: Path, dtype, n: int, chunk: int, v: _Validator) -> tuple[bool, int | None]:
    """Scan a CSR pointer array: starts at 0, never decreases. Returns (ok, last entry)."""
    ok = True
    prev = None
    n_bad, first_bad = 0, None
    for pos, a in _chunks(fpath, dtype, 0, n, chunk):
        if pos == 0 and int(a[0]) != 0:
            v.problem(f"{fpath} starts at {int(a[0])}; the first entry must be 0.")
            ok = False
        if prev is not None and a[0] < prev:
            n_bad += 1
            first_bad = pos if first_bad is None else first_bad
        bad = np.flatnonzero(a[1:] < a[:-1])  # not np.diff: unsigned differences wrap around
        if bad.size:
            n_bad += int(bad.size)
            first_bad = pos + int(bad[0]) + 1 if first_bad is None else first_bad
        prev = a[-1]
    if n_bad:
        v.problem(f"{fpath} decreases at {n_bad} entr{'y' if n_bad == 1 else 'ies'} (first at entry {first_bad}); it must be non-decreasing.")
        ok = False
    return ok, None if prev is None else int(prev)
