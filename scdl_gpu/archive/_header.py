"""``header.sch``: the binary schema header of an SCDL memmap archive (spec §2.4).

The bytes written are identical to bionemo-scdl 0.1.3 ``SCDLHeader.serialize()`` for the same
content. Reading is stricter than upstream so that a damaged header is reported instead of being
half-parsed: truncation anywhere, a partial feature-index count and bad flag bytes are errors.
Every failure is a :class:`~scdl_gpu.errors.HeaderSerializationError`.

Upstream's chunked layout (bionemo-framework PR #1424) appends a trailer after the feature
indices: one ``has_chunked_info`` byte, then, when it is 1, :class:`ChunkedInfo` (chunk_size u32,
num_chunks u32, total_rows u64, big-endian like every other field). A damaged trailer is an error;
bytes that are not a trailer this reader knows are kept count of (``unknown_trailing_bytes``) and
:meth:`SCDLHeader.load` warns once per file, so archives from newer writers still open.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
import operator
import os
import secrets
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Sequence

from ..errors import HeaderSerializationError
from ._constants import CHUNKED_BACKENDS, ArrayDType, Backend, FileNames

__all__ = [
    "CORE_HEADER_SIZE", "CURRENT_SCDL_VERSION", "MAX_NAME_BYTES", "SCDL_MAGIC_NUMBER", "ArrayInfo",
    "ChunkedInfo", "FeatureIndexInfo", "SCDLHeader", "SCDLVersion", "build_archive_header", "feature_index_info",
]

SCDL_MAGIC_NUMBER = b"SCDL"
#: magic(4) + version(3) + endianness(1) + backend u32 + array_count u32
CORE_HEADER_SIZE = 16
#: Longest array / feature-index name upstream's ``validate()`` accepts, in UTF-8 bytes.
MAX_NAME_BYTES = 1024
_NETWORK = 1  # the only endianness code the format has; everything is big-endian
_U32_MAX, _U64_MAX = 2**32 - 1, 2**64 - 1
# Smallest encodings of a descriptor (empty name, no shape, no files): lets the reader reject an
# absurd count up front instead of looping over garbage.
_MIN_ARRAY_BYTES = 4 + 8 + 4 + 1
_MIN_INDEX_BYTES = 4 + 8 + 4 + 4 + 1
# Upstream emits the three CSR arrays in this order, named by enum member (not file) name.
_ARRAY_ORDER = (FileNames.DATA, FileNames.ROWPTR, FileNames.COLPTR)
_HSE = HeaderSerializationError  # every failure in this module is one of these
_CHUNKED_INFO = struct.Struct(">IIQ")  # chunk_size, num_chunks, total_rows
_warned_trailers: set[tuple[str, int]] = set()  # (file, byte count) already warned about
_warned_lock = threading.Lock()


def _uint(value: object, what: str, limit: int) -> int:
    """Coerce ``value`` (int or numpy integer) to an ``int`` in ``[0, limit]``."""
    try:
        v = operator.index(value)
    except TypeError:
        raise _HSE(f"{what} must be an integer, got {type(value).__name__}") from None
    if v < 0:
        raise _HSE(f"{what} cannot be negative: {v}")
    if v > limit:
        raise _HSE(f"{what} must be at most {limit}, got {v}")
    return v


def _backend(value: object) -> Backend:
    try:
        return Backend(value)
    except ValueError:
        raise _HSE(f"unknown backend {value!r}, expected one of {[int(b) for b in Backend]}") from None


def _dtype(value: object, what: str) -> ArrayDType:
    try:
        return ArrayDType(value)
    except ValueError:
        raise _HSE(f"{what}: unknown dtype code {value!r}, expected one of {[int(d) for d in ArrayDType]}") from None


def _check_str(value: object, what: str, limit: int | None = None) -> str:
    if not isinstance(value, str):
        raise _HSE(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip():  # upstream rejects whitespace-only names as empty too
        raise _HSE(f"{what} cannot be empty")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:  # lone surrogates
        raise _HSE(f"{what} is not encodable as UTF-8: {e}") from None
    if limit is not None and n > limit:
        raise _HSE(f"{what} is {n} UTF-8 bytes, at most {limit} allowed: {value[:40]!r}...")
    return value


def _check_shape(shape: object, what: str) -> tuple[int, ...] | None:
    if shape is None:
        return None
    try:
        dims = tuple(_uint(d, f"{what} shape dimension {i}", _U32_MAX) for i, d in enumerate(shape))  # type: ignore
    except TypeError:
        raise _HSE(f"{what} shape must be a sequence of ints, got {type(shape).__name__}") from None
    if not dims:
        raise _HSE(f"{what} shape cannot be empty when specified")
    if 0 in dims:
        raise _HSE(f"{what} shape dimension {dims.index(0)} must be positive: 0")
    return dims


def _pack_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def _pack_shape(shape: tuple[int, ...] | None) -> bytes:
    return b"\x00" if shape is None else b"\x01" + struct.pack(f">I{len(shape)}I", len(shape), *shape)


class _Reader:
    """Bounds-checked big-endian cursor: every shortfall becomes a HeaderSerializationError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise _HSE(f"header truncated: expected {n} byte(s) for {what} at offset {self.pos}, found {self.left}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def count(self, what: str, min_each: int) -> int:
        at, n = self.pos, self.u32(what)
        if n * min_each > self.left:
            raise _HSE(f"{what} at offset {at} is {n}, which needs at least {n * min_each} bytes, found {self.left}")
        return n

    def string(self, what: str) -> str:
        raw = self.take(self.count(f"byte length of {what}", 1), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _HSE(f"{what} at offset {self.pos - len(raw)} is not valid UTF-8: {e}") from None

    def shape(self, what: str) -> tuple[int, ...] | None:
        flag = self.take(1, f"has_shape of {what}")[0]
        if flag not in (0, 1):
            raise _HSE(f"has_shape of {what} at offset {self.pos - 1}: expected 0 or 1, found {flag}")
        if flag == 0:
            return None
        ndims = self.count(f"ndims of {what}", 4)
        return struct.unpack(f">{ndims}I", self.take(4 * ndims, f"shape of {what}"))


@dataclass(frozen=True)
class SCDLVersion:
    """Schema version stored in header bytes 4-6 (not the package version)."""

    major: int = 0
    minor: int = 0
    point: int = 0

    def __post_init__(self) -> None:
        for part in ("major", "minor", "point"):
            _uint(getattr(self, part), f"version {part}", 255)  # one byte each on disk

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.point}"


CURRENT_SCDL_VERSION = SCDLVersion(0, 1, 0)


@dataclass
class _Descriptor:
    """Fields and codec shared by array and feature-index descriptors (only the latter has files)."""

    name: str
    length: int
    dtype: ArrayDType

    _kind: ClassVar[str] = "descriptor"
    _has_files: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalise the fields (they are mutable, so serialize re-runs this)."""
        self.name = _check_str(self.name, f"{self._kind} name", MAX_NAME_BYTES)
        what = f"{self._kind} {self.name!r}"
        self.length = _uint(self.length, f"{what} length", _U64_MAX)
        self.dtype = _dtype(self.dtype, what)
        self.shape = _check_shape(self.shape, what)  # type: ignore[attr-defined]

    def _files(self) -> list[str]:
        return getattr(self, "index_files", [])

    def serialize(self) -> bytes:
        """Encode: name, length u64, dtype u32, [files_count u32, files], has_shape u8 [+ ndims u32, dims]."""
        self.validate()
        out = [_pack_str(self.name), struct.pack(">QI", self.length, self.dtype)]
        if self._has_files:
            out += [struct.pack(">I", len(self._files())), *map(_pack_str, self._files())]
        return b"".join(out) + _pack_shape(self.shape)  # type: ignore[attr-defined]

    @classmethod
    def _read(cls, r: _Reader, what: str) -> _Descriptor:
        start = r.pos
        name = r.string(f"name of {what}")
        kw: dict = {"length": int.from_bytes(r.take(8, f"length of {what}"), "big")}
        kw["dtype"] = _dtype(r.u32(f"dtype of {what}"), f"dtype of {what} at offset {r.pos - 4}")
        if cls._has_files:
            n_files = r.count(f"files_count of {what}", 4)
            kw["index_files"] = [r.string(f"file path {k} of {what}") for k in range(n_files)]
        kw["shape"] = r.shape(what)
        try:
            return cls(name, **kw)
        except HeaderSerializationError as e:  # e.g. an empty name or a zero dimension in the bytes
            raise _HSE(f"{what} at offset {start}: {e}") from None

    def calculate_size(self) -> int:
        """Encoded size in bytes."""
        shape = self.shape  # type: ignore[attr-defined]
        files = 4 + sum(4 + len(f.encode("utf-8")) for f in self._files()) if self._has_files else 0
        return 4 + len(self.name.encode("utf-8")) + 12 + files + (1 if shape is None else 5 + 4 * len(shape))


@dataclass
class ArrayInfo(_Descriptor):
    """One array descriptor: ``name`` (enum member name, e.g. ``"DATA"``), element count, dtype."""

    shape: tuple[int, ...] | None = None

    _kind: ClassVar[str] = "array"


@dataclass
class FeatureIndexInfo(_Descriptor):
    """One feature-index descriptor; ``length`` is the number of rows the index covers."""

    index_files: list[str] = field(default_factory=list)
    shape: tuple[int, ...] | None = None

    _kind: ClassVar[str] = "feature index"
    _has_files: ClassVar[bool] = True

    def validate(self) -> None:
        """As the base, plus every index file path must be a non-empty str."""
        super().validate()
        if isinstance(self.index_files, (str, bytes)):  # a bare str would be split into characters
            raise _HSE(f"index_files of {self.name!r} must be a list of str, not a string")
        what = f"feature index {self.name!r} file path"
        self.index_files = [_check_str(f, f"{what} {i}") for i, f in enumerate(self.index_files)]


@dataclass(frozen=True)
class ChunkedInfo:
    """The trailer of a chunked archive's header: rows per chunk, chunk count, rows in all.

    The last chunk holds the remainder, so ``num_chunks == ceil(total_rows / chunk_size)``
    (0 chunks for 0 rows)."""

    chunk_size: int
    num_chunks: int
    total_rows: int

    def __post_init__(self) -> None:
        for name, limit in (("chunk_size", _U32_MAX), ("num_chunks", _U32_MAX), ("total_rows", _U64_MAX)):
            object.__setattr__(self, name, _uint(getattr(self, name), f"chunked info {name}", limit))
        if self.chunk_size < 1:
            raise _HSE("chunked info chunk_size must be at least 1, got 0")
        expected = -(-self.total_rows // self.chunk_size)
        if self.num_chunks != expected:
            raise _HSE(f"chunked info says {self.num_chunks} chunks, but {self.total_rows} rows in chunks of "
                       f"{self.chunk_size} make {expected}")

    def serialize(self) -> bytes:
        return _CHUNKED_INFO.pack(self.chunk_size, self.num_chunks, self.total_rows)

    def rows_of(self, chunk: int) -> int:
        """Rows in chunk number ``chunk`` (the last one holds the remainder)."""
        return min(self.chunk_size, self.total_rows - chunk * self.chunk_size)


@dataclass
class SCDLHeader:
    """Contents of ``header.sch``: schema version, backend, array and feature-index descriptors,
    and (chunked archives) :class:`ChunkedInfo`.

    ``unknown_trailing_bytes`` counts bytes after the last field this reader knows (a newer
    writer's); they are not written back."""

    version: SCDLVersion | None = None
    backend: Backend = Backend.MEMMAP_V0
    arrays: list[ArrayInfo] | None = None
    feature_indices: list[FeatureIndexInfo] | None = None
    chunked_info: ChunkedInfo | None = None
    unknown_trailing_bytes: int = field(default=0, compare=False)

    CORE_HEADER_SIZE: ClassVar[int] = CORE_HEADER_SIZE

    def __post_init__(self) -> None:
        v = CURRENT_SCDL_VERSION if self.version is None else self.version
        # also accept upstream's mutable SCDLVersion (anything with the three fields)
        self.version = v if isinstance(v, SCDLVersion) else SCDLVersion(v.major, v.minor, v.point)
        self.backend = _backend(self.backend)
        self.arrays = list(self.arrays or [])
        self.feature_indices = list(self.feature_indices or [])
        self._check_chunked()

    @property
    def is_chunked(self) -> bool:
        """Rows in ``chunk_NNNNN/`` directories: upstream's chunked layout or our compressed one."""
        return self.backend in CHUNKED_BACKENDS

    def _check_chunked(self) -> None:
        """The backend and the chunked info go together (upstream's partition sets both)."""
        if self.chunked_info is not None and not isinstance(self.chunked_info, ChunkedInfo):
            raise _HSE(f"chunked_info must be a ChunkedInfo, got {type(self.chunked_info).__name__}")
        if self.is_chunked != (self.chunked_info is not None):
            raise _HSE(f"backend {self.backend.name} " + ("needs chunked info" if self.is_chunked else
                                                          "cannot carry chunked info"))

    def add_array(self, info: ArrayInfo) -> None:
        self.arrays.append(info)

    def get_array(self, name: str) -> ArrayInfo | None:
        return next((a for a in self.arrays if a.name == name), None)

    def remove_array(self, name: str) -> bool:
        """Remove the first array called ``name``; True if one was removed."""
        return _remove_named(self.arrays, name)

    def add_feature_index(self, info: FeatureIndexInfo) -> None:
        self.feature_indices.append(info)

    def get_feature_index(self, name: str) -> FeatureIndexInfo | None:
        return next((f for f in self.feature_indices if f.name == name), None)

    def remove_feature_index(self, name: str) -> bool:
        """Remove the first feature index called ``name``; True if one was removed."""
        return _remove_named(self.feature_indices, name)

    def validate(self) -> None:
        """Raise HeaderSerializationError unless the header may be written (upstream's rules)."""
        if self.version.major > CURRENT_SCDL_VERSION.major:
            raise _HSE(f"unsupported schema version {self.version}, this writer supports {CURRENT_SCDL_VERSION}")
        lists = ((self.arrays, ArrayInfo, "array"), (self.feature_indices, FeatureIndexInfo, "feature index"))
        for items, cls, kind in lists:
            for item in items:
                if not isinstance(item, cls):
                    raise _HSE(f"expected {cls.__name__} in the {kind} list, got {type(item).__name__}")
                item.validate()
            _no_duplicates([i.name for i in items], f"duplicate {kind} name")
        every_name = [i.name for i in self.arrays + self.feature_indices]
        _no_duplicates(every_name, "name used by an array and a feature index")
        self.backend = _backend(self.backend)
        self._check_chunked()

    def serialize(self) -> bytes:
        """Validate, then encode exactly as upstream does (big-endian, §2.4)."""
        self.validate()
        v = self.version
        core = struct.pack(">4BII", v.major, v.minor, v.point, _NETWORK, self.backend, len(self.arrays))
        parts = [SCDL_MAGIC_NUMBER, core, *(a.serialize() for a in self.arrays)]
        parts.append(struct.pack(">I", len(self.feature_indices)))
        parts.extend(f.serialize() for f in self.feature_indices)
        if self.chunked_info is not None:  # flat headers end here, as 0.1.3 writes them
            parts += [b"\x01", self.chunked_info.serialize()]
        return b"".join(parts)

    @classmethod
    def deserialize(cls, data: bytes | bytearray | memoryview) -> SCDLHeader:
        """Decode a complete header; the schema version is not checked (readers accept any)."""
        try:
            r = _Reader(memoryview(data).tobytes())
        except TypeError:
            raise _HSE(f"expected a bytes-like object, got {type(data).__name__}") from None
        magic = r.take(4, "magic number")
        if magic != SCDL_MAGIC_NUMBER:
            raise _HSE(f"not an SCDL header: expected magic {SCDL_MAGIC_NUMBER!r}, found {magic!r}")
        major, minor, point, endian = r.take(4, "version and endianness")
        if endian != _NETWORK:
            raise _HSE(f"endianness byte at offset 7: expected {_NETWORK} (NETWORK), found {endian}")
        backend = r.u32("backend")
        if backend not in {int(b) for b in Backend}:
            raise _HSE(f"backend at offset 8: expected one of {[int(b) for b in Backend]}, found {backend}")
        arrays = [ArrayInfo._read(r, f"array {i}") for i in range(r.count("array count", _MIN_ARRAY_BYTES))]
        indices: list[FeatureIndexInfo] = []
        if r.left:  # headers written before feature indices existed end right after the arrays
            n = r.count("feature index count", _MIN_INDEX_BYTES)
            indices = [FeatureIndexInfo._read(r, f"feature index {i}") for i in range(n)]
        chunked, unknown = _read_trailer(r)
        try:
            return cls(SCDLVersion(major, minor, point), Backend(backend), arrays, indices, chunked, unknown)
        except HeaderSerializationError as e:  # backend and trailer disagree
            raise _HSE(f"backend at offset 8 and the trailer: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a temp file in the same directory, fsync, then ``os.replace``."""
        data = self.serialize()  # fail before touching the disk
        path = os.fspath(path)
        tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            # mode 0o666 lets the umask decide permissions, as a plain open() would (mkstemp gives 0o600)
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _HSE(f"failed to save header to {path}: {e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SCDLHeader:
        """Read and decode ``path``; a missing or unreadable file is a HeaderSerializationError, as upstream."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            raise _HSE(f"failed to read header {os.fspath(path)}: {e}") from e
        try:
            header = cls.deserialize(data)
        except HeaderSerializationError as e:
            raise _HSE(f"invalid header {os.fspath(path)}: {e}") from e
        if header.unknown_trailing_bytes:
            _warn_trailer(os.path.abspath(path), header.unknown_trailing_bytes)
        return header

    def calculate_total_size(self) -> int:
        """Encoded size in bytes (the feature-index count is always written)."""
        trailer = 0 if self.chunked_info is None else 1 + _CHUNKED_INFO.size
        return CORE_HEADER_SIZE + 4 + sum(d.calculate_size() for d in self.arrays + self.feature_indices) + trailer

    def to_json(self) -> str:
        """Human-readable JSON with upstream's ``to_json()`` keys and order (not a storage format)."""
        v = self.version
        arrays = [{"name": a.name, "length": a.length, "dtype": a.dtype.name, "shape": a.shape} for a in self.arrays]
        indices = [
            {"name": f.name, "length": f.length, "dtype": f.dtype.name, "index_files": f.index_files, "shape": f.shape}
            for f in self.feature_indices
        ]
        doc = {"version": {"major": v.major, "minor": v.minor, "point": v.point}, "endianness": "NETWORK",
               "backend": self.backend.name, "arrays": arrays, "feature_indices": indices}
        if self.chunked_info is not None:
            c = self.chunked_info
            doc["chunked_info"] = {"chunk_size": c.chunk_size, "num_chunks": c.num_chunks, "total_rows": c.total_rows}
        return json.dumps(doc, indent=2)


def _read_trailer(r: _Reader) -> tuple[ChunkedInfo | None, int]:
    """``(chunked info or None, count of unknown trailing bytes)`` after the feature indices.

    A flag of 0 or 1 is upstream's ``has_chunked_info``; with 1 the info must be complete and
    sound. Any other flag, or bytes after a known trailer, belong to a writer newer than this
    reader: counted, not parsed."""
    if not r.left:
        return None, 0
    at, flag = r.pos, r.data[r.pos]
    if flag not in (0, 1):
        return None, r.left
    r.take(1, "has_chunked_info")
    info = None
    if flag == 1:
        raw = r.take(_CHUNKED_INFO.size, "chunked info (chunk_size u32, num_chunks u32, total_rows u64)")
        try:
            info = ChunkedInfo(*_CHUNKED_INFO.unpack(raw))
        except HeaderSerializationError as e:
            raise _HSE(f"chunked info at offset {at + 1}: {e}") from None
    return info, r.left


def _warn_trailer(path: str, n: int) -> None:
    """Once per (file, byte count) in a process: every open of an archive reads its header."""
    with _warned_lock:
        if (path, n) in _warned_trailers:
            return
        _warned_trailers.add((path, n))
    warnings.warn(f"{path}: ignoring {n} trailing byte(s) after the fields this reader knows "
                  "(written by a newer SCDL writer?)", UserWarning, stacklevel=3)


def _remove_named(items: list, name: str) -> bool:
    index = next((i for i, item in enumerate(items) if item.name == name), None)
    if index is not None:
        del items[index]
    return index is not None


def _no_duplicates(names: list[str], what: str) -> None:
    dups = [n for n, c in Counter(names).items() if c > 1]
    if dups:
        raise _HSE(f"{what}: {dups[0]!r}")


def build_archive_header(
    dtypes: Mapping[str, object], lengths: Mapping[str, int], feature_indices: Sequence[FeatureIndexInfo]
) -> SCDLHeader:
    """Header the archive writer emits: DATA, ROWPTR, COLPTR (in that order) plus ``feature_indices``.

    ``dtypes`` maps file names (``"data.npy"`` ...) to numpy dtypes, dtype names or ArrayDType;
    ``lengths`` maps them to element counts. Other keys (neighbor arrays) are ignored: upstream never
    describes them. Unlike upstream, an unmappable dtype is an error, not a silent FLOAT32.
    """
    # FileNames members hash by member name, so normalise keys to the plain file-name strings
    dt = {getattr(k, "value", k): v for k, v in dtypes.items()}
    ln = {getattr(k, "value", k): v for k, v in lengths.items()}
    arrays = []
    for f in _ARRAY_ORDER:
        if f.value not in dt or f.value not in ln:
            raise _HSE(f"build_archive_header needs a dtype and a length for {f.value}")
        code = dt[f.value]
        if not isinstance(code, ArrayDType):
            try:
                code = ArrayDType.from_numpy_dtype(code)
            except (TypeError, ValueError) as e:
                raise _HSE(f"{f.value}: dtype {dt[f.value]!r} cannot be stored in the header: {e}") from None
        arrays.append(ArrayInfo(f.name, ln[f.value], code))
    return SCDLHeader(CURRENT_SCDL_VERSION, Backend.MEMMAP_V0, arrays, list(feature_indices))


def feature_index_info(dir_name: str, n_rows: int, n_blocks: int, labels_file: str = "labels.json") -> FeatureIndexInfo:
    """Descriptor of a feature-index directory, its files listed exactly as upstream's writer lists them.

    Parquet block numbers are zero-padded to ``len(str(n_blocks))`` digits, like the file names
    ``RowFeatureIndex.save`` writes (``labels_file="labels.npy"`` reproduces the 0.1.3 wheel).
    """
    n_blocks = _uint(n_blocks, "n_blocks", _U32_MAX)
    width = len(str(n_blocks))
    files = [f"{dir_name}/cumulative_sum_index.npy", f"{dir_name}/{labels_file}", f"{dir_name}/version.npy"]
    files += [f"{dir_name}/dataframe_{k:0{width}d}.parquet" for k in range(n_blocks)]
    return FeatureIndexInfo(dir_name, n_rows, ArrayDType.STRING_ARRAY, files)
