"""Feature indices (``var_features/``, ``obs_features/``, legacy ``features/``): the API and layout of
``bionemo.scdl.index.row_feature_index``, plus optional per-block row/gene names (the AnnData index,
which upstream drops) in ``names_<k>.arrow`` sidecars that upstream never reads (it globs ``*.parquet``)."""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from ..errors import ArchiveError, ArchiveNotFoundError
from ._constants import SCDL_PACKAGE_VERSION
from ._parse import npy_header, parsing, read_json, read_npy

__all__: Sequence[str] = ("RowFeatureIndex", "ObservedFeatureIndex", "VariableFeatureIndex", "are_dicts_equal")

CSUM_FILE = "cumulative_sum_index.npy"
LABELS_JSON = "labels.json"
LABELS_NPY = "labels.npy"
VERSION_FILE = "version.npy"
#: Which blocks have a names sidecar, and the ``cumulative_sum_index`` they were saved with: a
#: missing sidecar is then an error, not silently absent names (upstream never writes or reads it).
NAMES_RECORD = "names.json"
_BLOCK_RE = re.compile(r"^dataframe_(\d+)\.parquet$")
_NAMES_RE = re.compile(r"^names_(\d+)\.arrow$")
PathLike = Union[str, os.PathLike]
# A block's names: a loaded array, None (unknown), or a sidecar path read on first use.
_Names = Union[np.ndarray, Path, None]


def are_dicts_equal(dict1: dict[str, np.ndarray], dict2: dict[str, np.ndarray]) -> bool:
    """True when both dicts have the same keys and ``np.array_equal`` values."""
    return dict1.keys() == dict2.keys() and all(np.array_equal(dict1[k], dict2[k]) for k in dict1)


def _to_arrow_array(values: Any) -> pa.Array:
    # Same conversion as upstream, so our tables equal theirs (the files differ only by page checksums).
    for arrow_type in (None, pa.string()):
        try:
            return pa.array(values, type=arrow_type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    # Mixed str/number objects: upstream raises here; store them as text (None/NaN -> null).
    return pa.array([None if v is None or v != v else str(v) for v in values], type=pa.string())


def _replace_into(path: Path, write: Callable[[Path], Any]) -> None:
    """Write via ``write(tmp)`` then rename, so a crash never leaves a half-written file."""
    # The temp name ends in ".tmp", never ".parquet": upstream's rglob must not pick up leftovers.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()  # np.save on a path would append ".npy" to the temp name
    np.save(buf, arr, allow_pickle=False)
    _replace_into(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def _read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise ArchiveNotFoundError(f"Feature index file {path} does not exist.")
    return read_npy(path, mmap)


def _read_csum(d: Path, mmap: bool = False) -> np.ndarray:
    """``cumulative_sum_index.npy`` as int64, checked: 1-D, starts at -1, non-decreasing."""
    path = d / CSUM_FILE
    csum = _read_npy(path, mmap)
    if csum.ndim != 1 or csum.size == 0 or csum.dtype.kind not in "iu":
        raise ArchiveError(f"{path} must be a non-empty 1-D integer array, got {csum.dtype} {csum.shape}.")
    csum = np.asarray(csum, dtype=np.int64)
    if csum[0] != -1:
        raise ArchiveError(f"{path} must start with -1, got {csum[0]}.")
    if np.any(np.diff(csum[1:]) < 0) or (csum.size > 1 and csum[1] < 0):
        raise ArchiveError(f"{path} is not non-decreasing: {csum.tolist()}.")
    return csum


def _numbered_files(d: Path, pattern: re.Pattern) -> list[tuple[int, int, Path]]:
    """Top-level files matching ``pattern`` as (index, digit width, path)."""
    matches = ((pattern.match(p.name), p) for p in d.iterdir())
    return [(int(m.group(1)), len(m.group(1)), p) for m, p in matches if m and p.is_file()]


def _select_blocks(d: Path, n_blocks: int) -> list[Path]:
    """The ``dataframe_<k>.parquet`` files of the ``n_blocks`` blocks, in block order."""
    found = _numbered_files(d, _BLOCK_RE)
    wanted = list(range(n_blocks))
    if sorted(k for k, _, _ in found) == wanted:
        return [p for _, _, p in sorted(found)]
    # Upstream re-saves never delete old files (§12.4); when the leftovers have another digit
    # width than the naming rule gives for n_blocks, the current blocks are still unambiguous.
    width = len(str(n_blocks))
    current = sorted((k, p) for k, w, p in found if w == width)
    if n_blocks > 0 and [k for k, _ in current] == wanted:
        stale = sorted(p.name for _, w, p in found if w != width)
        warnings.warn(f"Ignoring stale feature blocks in {d} left by an older save: {stale}", UserWarning, stacklevel=4)
        return [p for _, p in current]
    names = sorted(p.name for *_, p in found)
    raise ArchiveError(f"{d / CSUM_FILE} describes {n_blocks} blocks but {d} holds {len(found)}: {names}.")


def _read_labels(d: Path, n_blocks: int, pickled_ok: bool = False) -> list[Optional[str]]:
    """Block labels from ``labels.json``, else a legacy ``labels.npy`` (the 0.1.3 wheel's); never unpickles.

    As upstream HEAD: a legacy ``labels.npy`` loads with a ``FutureWarning``, a pickled one raises
    ``ValueError`` (``ArchiveError``), no labels file raises ``FileNotFoundError``. ``pickled_ok``
    (opening an archive) reads a pickled one as ``None`` labels with a warning instead: the wheel's
    CLI pickles ``Path`` labels, and those archives must still open.
    """
    path = d / LABELS_JSON
    if path.is_file():
        labels = read_json(path)
        if not isinstance(labels, list) or not all(lab is None or isinstance(lab, str) for lab in labels):
            raise ArchiveError(f"{path} must hold a JSON list of strings or nulls.")
    elif (path := d / LABELS_NPY).is_file():
        warnings.warn(
            f"Found legacy labels.npy in '{d}'. This format is deprecated (bionemo-scdl 0.1.3 may pickle it). "
            "To re-index, load this dataset and call .save() to write the new labels.json format.",
            FutureWarning,
            stacklevel=4,
        )
        if npy_header(path)[2].hasobject:
            if not pickled_ok:
                raise ArchiveError(
                    f"Cannot safely load labels.npy in '{d}' because it contains pickled objects; "
                    "unpickling could run arbitrary code. Open the archive with SingleCellMemMapDataset "
                    "(labels read as None) and save it, or convert it again, to write labels.json."
                )
            warnings.warn(f"{path} holds pickled objects and is not loaded; block labels are set to None.", UserWarning, stacklevel=4)
            return [None] * n_blocks
        arr = read_npy(path)
        if arr.size == 0:  # upstream saves [] as an empty float64 array
            labels = []
        elif arr.ndim == 1 and arr.dtype.kind in "US":
            labels = [None if s == "" else s for s in arr.astype(str).tolist()]  # we write None as ""
        else:
            raise ArchiveError(f"{path} must hold a 1-D string array, got {arr.dtype} {arr.shape}.")
    else:
        raise ArchiveNotFoundError(f"No labels file found in {d}. Expected labels.json or labels.npy.")
    if len(labels) != n_blocks:
        raise ArchiveError(f"{path} holds {len(labels)} labels for {n_blocks} blocks.")
    return labels


def _sidecar_rows(path: Path) -> int:
    """Row count of a names sidecar, from its memory-mapped batch metadata only."""
    with parsing(path, "names sidecar"), pa.memory_map(str(path)) as src:
        reader = pa.ipc.open_file(src)
        _check_names_schema(path, reader.schema)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def _check_names_schema(path: Path, schema: pa.Schema) -> None:
    if schema.names != ["name"] or not pa.types.is_string(schema.field("name").type):
        raise ArchiveError(f"Names sidecar {path}: expected one string column 'name', got {schema}")


def _read_sidecar(path: Path, expected: int) -> np.ndarray:
    """A names sidecar's ``expected`` names as an object array, every buffer checked first: the IPC
    reader trusts offsets, and a damaged offset read unchecked is a read out of bounds."""
    with parsing(path, "names sidecar"), pa.memory_map(str(path)) as src:
        table = pa.ipc.open_file(src).read_all()
        _check_names_schema(path, table.schema)
        table.validate(full=True)
        if table.num_rows != expected:
            raise ArchiveError(f"Names sidecar {path} holds {table.num_rows} names, expected {expected}")
        return table.column("name").to_numpy(zero_copy_only=False).astype(object)


def _read_block(path: Path) -> pa.Table:
    """A parquet feature block, page checksums verified where the writer stored them and every
    buffer validated before it is converted."""
    with parsing(path, "feature block"):
        table = pq.read_table(str(path), page_checksum_verification=True)
        table.validate(full=True)
        return table


def _read_names_record(d: Path, csum: np.ndarray) -> Optional[set[int]]:
    """Blocks :data:`NAMES_RECORD` says have names, or None when it is absent or stale (the index
    was re-saved by a tool that does not know it: another ``cumulative_sum_index``)."""
    path = d / NAMES_RECORD
    if not path.is_file():
        return None
    record = read_json(path)
    blocks = record.get("blocks") if isinstance(record, dict) else None
    saved_with = record.get(CSUM_FILE) if isinstance(record, dict) else None
    if not (isinstance(blocks, list) and isinstance(saved_with, list)) or not all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b < len(saved_with) - 1 for b in blocks
    ):
        raise ArchiveError(
            f"{path}: expected {{\"blocks\": [block numbers], \"{CSUM_FILE}\": [...]}}, got {str(record)[:200]}"
        )
    return set(blocks) if saved_with == csum.tolist() else None


class RowFeatureIndex(ABC):
    """Ragged per-block feature tables; ``_cumulative_sum_index`` (``[-1, end_0, end_1, ...]``)
    maps rows to blocks: block ``b`` covers rows ``[max(csum[b], 0), csum[b + 1])``."""

    def __init__(self) -> None:
        self._cumulative_sum_index: np.ndarray = np.array([-1], dtype=np.int64)
        self._feature_arr: list[dict[str, np.ndarray]] = []
        self._num_entries_per_row: list[int] = []
        self._labels: list[Optional[str]] = []
        self._names: list[_Names] = []
        self._version: str = SCDL_PACKAGE_VERSION

    @abstractmethod
    def _entries(self, features: dict[str, np.ndarray]) -> int:
        """Per-block entry count kept in ``_num_entries_per_row``."""

    @abstractmethod
    def _names_len(self, block: int) -> tuple[int, str]:
        """How many names ``block`` must have, and what they name."""

    @abstractmethod
    def _try_merge(self, features: dict[str, np.ndarray], names: Optional[np.ndarray], total_csum: int) -> bool:
        """Fold a new block into the last one if the subclass's rule allows; True if merged."""

    def _get_dataset_id(self, row: int) -> int:
        """Block that holds ``row`` (same errors and messages as upstream)."""
        if row < 0:
            raise IndexError(f"Row index {row} is not valid. It must be non-negative.")
        csum = self._cumulative_sum_index
        if len(csum) < 2:
            raise IndexError("There are no features to lookup.")
        if row >= csum[-1]:
            raise IndexError(f"Row index {row} is larger than number of rows in FeatureIndex ({csum[-1]}).")
        # side="right" skips zero-row blocks, exactly like upstream's mask count.
        return int(np.searchsorted(csum, row, side="right")) - 1

    def _block_start(self, block: int) -> int:
        return int(max(self._cumulative_sum_index[block], 0))

    def _block_rows(self, block: int) -> int:
        return int(self._cumulative_sum_index[block + 1]) - self._block_start(block)

    @staticmethod
    def _filter_features(features: dict[str, np.ndarray], select: Optional[list[str]]) -> list[np.ndarray]:
        if select is None:
            return list(features.values())
        for f in select:
            if f not in features:
                raise ValueError(f"Provided feature column {f} in select_features not present in dataset.")
        return [features[f] for f in select]

    def version(self) -> str:
        """Package version recorded in the index."""
        return self._version

    def __len__(self) -> int:
        """Number of blocks."""
        return len(self._feature_arr)

    def number_of_rows(self) -> int:
        return int(max(self._cumulative_sum_index[-1], 0))

    def number_vars_at_row(self, row: int) -> int:
        return self._num_entries_per_row[self._get_dataset_id(row)]

    def column_dims(self) -> list[int]:
        """Per-block entry counts (columns for obs, array length for var)."""
        return list(self._num_entries_per_row)

    def number_of_values(self) -> list[int]:
        """Per block ``rows * entries``; ``[0]`` when there are no blocks."""
        if not self._feature_arr:
            return [0]
        return [self._block_rows(b) * n for b, n in enumerate(self._num_entries_per_row)]

    def names(self, block: int) -> Optional[np.ndarray]:
        """Row/gene names of ``block`` (object array of str), or None if not stored."""
        entry = self._names[block]
        if isinstance(entry, Path):  # read the sidecar on first use, then cache
            if not entry.is_file():  # checked here, not at load: the rows stay readable without names
                raise ArchiveNotFoundError(f"{entry} is missing: the index stored names for block {block}")
            entry = self._names[block] = _read_sidecar(entry, self._names_len(block)[0])
        return entry

    def _validate_features_get_entries_count(self, features: dict[str, Any]) -> int:
        """Check ``features`` and return the common array length (0 if empty)."""
        if not isinstance(features, dict):
            raise TypeError(f"{self.__class__.__name__}.append_features expects a dict of arrays")
        lengths = []
        for key, values in features.items():
            if not isinstance(key, str):
                raise TypeError(f"Feature names must be str, got {type(key).__name__} {key!r}")
            if np.ndim(values) != 1:
                raise ValueError(f"Feature {key!r} must be a 1-D array, got {np.ndim(values)} dimensions")
            lengths.append(len(values))
        if any(n != lengths[0] for n in lengths):
            raise ValueError("All feature arrays must have the same length")
        return lengths[0] if lengths else 0

    @staticmethod
    def _check_names(names: Any, expected: int, what: str) -> Optional[np.ndarray]:
        """``names`` as a 1-D object array of str (their type after a reload), or None."""
        if names is None:
            return None
        arr = np.asarray(names)
        if arr.ndim != 1:
            raise ValueError(f"names must be 1-D, got shape {arr.shape}")
        if len(arr) != expected:
            raise ValueError(f"names has {len(arr)} entries but the block has {expected} {what}")
        return arr.astype(str).astype(object)

    def _append_block(self, features: dict, label: Any, names: Optional[np.ndarray], total_csum: int) -> None:
        features = {k: np.asarray(v) for k, v in features.items()}
        if self._try_merge(features, names, total_csum):
            return
        self._cumulative_sum_index = np.append(self._cumulative_sum_index, np.int64(total_csum))
        self._feature_arr.append(features)
        # Labels are kept as str: upstream's Path labels end up pickled in labels.npy (§12.9).
        self._labels.append(None if label is None else str(label))
        self._names.append(names)
        self._num_entries_per_row.append(self._entries(features))

    @staticmethod
    def _blocks_of(other: "RowFeatureIndex", kind: type) -> list[tuple[int, dict, Optional[str], Any]]:
        """``(rows, features, label, names)`` of each block of ``other``, for ``concat``."""
        if not isinstance(other, kind):
            raise TypeError(f"cannot concatenate {type(other).__name__} onto {kind.__name__}")
        # A snapshot: concatenating an index onto itself mutates what we iterate over.
        return [(other._block_rows(b), f, other._labels[b], other.names(b)) for b, f in enumerate(other._feature_arr)]

    def save(self, datapath: PathLike) -> None:
        """Write the index to ``datapath`` (created if needed), replacing any older index there."""
        d = Path(datapath)
        d.mkdir(parents=True, exist_ok=True)
        names = [self.names(b) for b in range(len(self))]  # read lazy sidecars before replacing them
        stale = {p for *_, p in _numbered_files(d, _BLOCK_RE) + _numbered_files(d, _NAMES_RE)}
        width = len(str(len(self)))
        written = set()
        for b, features in enumerate(self._feature_arr):
            table = pa.table({col: _to_arrow_array(vals) for col, vals in features.items()})
            written.add(path := d / f"dataframe_{b:0{width}d}.parquet")
            # Page CRCs: a reader that verifies them (validate does) cannot mistake a damaged table for a valid one.
            # Upstream writes none (its bytes differ from ours here) and reads ours without looking at them.
            _replace_into(path, lambda tmp, t=table: pq.write_table(t, str(tmp), write_page_checksum=True))
            if names[b] is not None:
                table = pa.table({"name": pa.array(names[b], type=pa.string())})
                written.add(path := d / f"names_{b:0{width}d}.arrow")
                # Feather v2 is the Arrow IPC file format; uncompressed so any Arrow reader opens it.
                _replace_into(path, lambda tmp, t=table: feather.write_feather(t, str(tmp), compression="uncompressed"))
        # Leftovers of an older save would be read back by upstream (§12.4). Removed only after
        # the new blocks are in place, so the directory is never without blocks.
        for p in stale - written:
            p.unlink()
        labels_json = json.dumps(self._labels)
        _replace_into(d / LABELS_JSON, lambda tmp: tmp.write_text(labels_json, encoding="utf-8"))
        # A non-pickled labels.npy too: the 0.1.3 wheel reads only this file.
        _save_npy(d / LABELS_NPY, np.array(["" if lab is None else lab for lab in self._labels], dtype=str))
        _save_npy(d / VERSION_FILE, np.array(SCDL_PACKAGE_VERSION))
        _save_npy(d / CSUM_FILE, self._cumulative_sum_index.astype(np.int64))
        record = json.dumps({"blocks": [b for b in range(len(self)) if names[b] is not None],
                             CSUM_FILE: self._cumulative_sum_index.astype(np.int64).tolist()})
        _replace_into(d / NAMES_RECORD, lambda tmp: tmp.write_text(record, encoding="utf-8"))

    @classmethod
    def peek_num_rows(cls, datapath: PathLike) -> int:
        """Row count of a saved index, reading only ``cumulative_sum_index.npy``."""
        return int(max(_read_csum(Path(datapath), mmap=True)[-1], 0))

    @classmethod
    def peek_blocks_and_rows(cls, datapath: PathLike) -> tuple[int, int]:
        """``(blocks, rows)`` of a saved index, reading only ``cumulative_sum_index.npy``."""
        csum = _read_csum(Path(datapath), mmap=True)
        return len(csum) - 1, int(max(csum[-1], 0))

    @staticmethod
    def _load_common(datapath: PathLike, instance: "RowFeatureIndex", pickled_labels_ok: bool = False) -> "RowFeatureIndex":
        d = Path(datapath)
        if not d.is_dir():
            raise ArchiveNotFoundError(f"Feature index directory {d} does not exist.")
        csum = _read_csum(d)
        n_blocks = len(csum) - 1
        blocks = _select_blocks(d, n_blocks)
        instance._cumulative_sum_index = csum
        for path in blocks:
            table = _read_block(path)
            with parsing(path, "feature block"):
                if len(set(table.column_names)) != table.num_columns:
                    raise ArchiveError(f"{path}: expected distinct column names, got {table.column_names}")
                features = {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}
            instance._feature_arr.append(features)
            instance._num_entries_per_row.append(instance._entries(features))
            instance._check_loaded_block(len(instance) - 1, path, table.num_rows)
        instance._labels = _read_labels(d, n_blocks, pickled_labels_ok)
        version = _read_npy(d / VERSION_FILE)
        instance._version = str(version.item()) if version.size == 1 else SCDL_PACKAGE_VERSION
        instance._names = [None] * n_blocks
        sidecars = _numbered_files(d, _NAMES_RE)
        recorded = _read_names_record(d, csum)
        if recorded is not None:
            instance._attach_recorded_names(d, recorded, sidecars)
            return instance
        for k, _, path in sidecars:
            # Names are our extra; a tool that re-saves the index without knowing them (upstream)
            # can leave stale sidecars behind. The archive stays readable, without names.
            expected, what = instance._names_len(k) if k < n_blocks else (None, "block")
            if expected is None or _sidecar_rows(path) != expected:
                warnings.warn(
                    f"Ignoring names sidecar {path}: it does not match the blocks (expected "
                    f"{expected} names, one per {what}); was the index re-saved by another tool?",
                    UserWarning,
                    stacklevel=3,
                )
                instance._names = [None] * n_blocks
                break
            instance._names[k] = path  # loaded lazily: names of millions of cells are rarely needed
        return instance

    def _attach_recorded_names(self, d: Path, recorded: set[int], sidecars: list[tuple[int, int, Path]]) -> None:
        """The sidecars of the blocks the names record lists, read (and checked: present, one name
        per row or variable) on first use, so that names can never silently read as absent."""
        found = {k: path for k, _, path in sidecars}
        width = len(str(len(self)))
        for k in recorded:
            self._names[k] = found.get(k, d / f"names_{k:0{width}d}.arrow")
        if set(found) - recorded:
            stray = sorted(found[k].name for k in set(found) - recorded)
            warnings.warn(f"Ignoring names sidecars {stray} in {d}: {NAMES_RECORD} does not list them", UserWarning, stacklevel=4)

    def _check_loaded_block(self, block: int, path: Path, n_rows: int) -> None:
        """Per-class consistency check of a block just read from ``path``."""


class ObservedFeatureIndex(RowFeatureIndex):
    """Per-row (``.obs``) features: a block maps column name -> one value per row.

    Consecutive blocks with the same column set are merged; the merged block keeps the first label.
    """

    def _entries(self, features: dict[str, np.ndarray]) -> int:
        return len(features)

    def _names_len(self, block: int) -> tuple[int, str]:
        return self._block_rows(block), "row"

    def _check_loaded_block(self, block: int, path: Path, n_rows: int) -> None:
        if n_rows != self._block_rows(block):
            raise ArchiveError(f"{path} holds {n_rows} rows but {CSUM_FILE} gives it {self._block_rows(block)}.")

    def _try_merge(self, features: dict, names: Optional[np.ndarray], total_csum: int) -> bool:
        if not self._feature_arr or self._feature_arr[-1].keys() != features.keys():
            return False
        last = self._feature_arr[-1]
        self._feature_arr[-1] = {k: np.concatenate([last[k], features[k]]) for k in features}
        old = self.names(len(self) - 1)
        self._names[-1] = None if old is None or names is None else np.concatenate([old, names])
        self._cumulative_sum_index[-1] = total_csum
        return True

    def append_features(self, features: dict, label: Optional[str] = None, *, names: Any = None) -> None:
        """Append one row per array element; ``names`` (optional) gives one name per row."""
        n_rows = self._validate_features_get_entries_count(features)
        names = self._check_names(names, n_rows, "rows")
        if n_rows > 0:  # an empty dict is a no-op, as upstream
            self._append_block(features, label, names, self.number_of_rows() + n_rows)

    def lookup(self, row: int, select_features: Optional[list[str]] = None) -> tuple[list, Optional[str]]:
        """One value per (selected) feature for ``row``, and the row's block label."""
        b = self._get_dataset_id(row)
        i = row - self._block_start(b)
        return [arr[i] for arr in self._filter_features(self._feature_arr[b], select_features)], self._labels[b]

    def __getitem__(self, idx: Union[int, slice]) -> tuple[list, Any]:
        """``int`` -> ``(values, label)``; ``slice`` -> ``(list of per-block dicts, list of labels)``."""
        if isinstance(idx, (int, np.integer)):
            idx = int(idx)
            return self.lookup(idx + self.number_of_rows() if idx < 0 else idx)
        if not isinstance(idx, slice):
            raise TypeError("Index must be int or slice")
        rows = np.arange(*idx.indices(self.number_of_rows()), dtype=np.int64)
        if rows.size == 0:
            return [], []
        block_of = np.searchsorted(self._cumulative_sum_index, rows, side="right") - 1
        # Rows are monotonic, so each block is one contiguous run; rows keep the slice's order
        # (upstream re-sorts them ascending inside each block, which garbles negative steps).
        out, labels = [], []
        for run in np.split(np.arange(rows.size), np.flatnonzero(np.diff(block_of)) + 1):
            b = int(block_of[run[0]])
            rel = rows[run] - self._block_start(b)
            out.append({k: v[rel] for k, v in self._feature_arr[b].items()})
            labels.append(self._labels[b])
        return out, labels

    def names_for_rows(self, start: int, stop: int) -> np.ndarray:
        """Names of rows ``[start, stop)``; ValueError if a block in that range has none."""
        n = self.number_of_rows()
        if not 0 <= start <= stop <= n:
            raise IndexError(f"Row range [{start}, {stop}) is outside [0, {n}).")
        parts, row = [], start
        while row < stop:
            b = self._get_dataset_id(row)
            names = self.names(b)
            if names is None:
                raise ValueError(f"Row names are not stored for block {b} (label {self._labels[b]!r}).")
            end = min(stop, int(self._cumulative_sum_index[b + 1]))
            parts.append(names[row - self._block_start(b) : end - self._block_start(b)])
            row = end
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)

    def concat(self, other_row_index: "ObservedFeatureIndex") -> "ObservedFeatureIndex":
        """Append ``other``'s blocks (with labels and names) to this index, in place; returns self."""
        for _, features, label, names in self._blocks_of(other_row_index, ObservedFeatureIndex):
            self.append_features(features, label, names=names)
        return self

    @staticmethod
    def load(datapath: PathLike, pickled_labels_ok: bool = False) -> "ObservedFeatureIndex":
        """Load an index written by :meth:`save` or by bionemo-scdl (labels: see :func:`_read_labels`)."""
        return RowFeatureIndex._load_common(datapath, ObservedFeatureIndex(), pickled_labels_ok)


class VariableFeatureIndex(RowFeatureIndex):
    """Per-column (``.var``) features: a block is one feature table shared by its rows.

    A block equal to the last one only extends the last row span (N files, same genes -> 1 block).
    """

    def _entries(self, features: dict[str, np.ndarray]) -> int:
        return len(next(iter(features.values()))) if features else 0

    def _names_len(self, block: int) -> tuple[int, str]:
        return self._num_entries_per_row[block], "variable"

    def _try_merge(self, features: dict, names: Optional[np.ndarray], total_csum: int) -> bool:
        if not self._feature_arr or not are_dicts_equal(self._feature_arr[-1], features):
            return False
        old = self.names(len(self) - 1)
        if old is not None and names is not None and not np.array_equal(old, names):
            return False  # same table but other gene ids: merging would lose the new names
        self._names[-1] = None if names is None else old
        self._cumulative_sum_index[-1] = total_csum
        return True

    def append_features(self, n_obs: int, features: dict, label: Optional[str] = None, *, names: Any = None) -> None:
        """Add ``n_obs`` rows sharing ``features``; ``names`` (optional) gives one name per variable."""
        if not isinstance(n_obs, (int, np.integer)) or isinstance(n_obs, bool):
            raise TypeError(f"n_obs must be an int, got {type(n_obs).__name__}")
        if n_obs < 0:
            raise ValueError(f"n_obs must be non-negative, got {n_obs}")
        names = self._check_names(names, self._validate_features_get_entries_count(features), "variables")
        self._append_block(features, label, names, self.number_of_rows() + int(n_obs))

    def lookup(self, row: int, select_features: Optional[list[str]] = None) -> tuple[list, Optional[str]]:
        """Full (selected) feature arrays of the block holding ``row``, and its label."""
        b = self._get_dataset_id(row)
        return self._filter_features(self._feature_arr[b], select_features), self._labels[b]

    def concat(self, other_row_index: "VariableFeatureIndex") -> "VariableFeatureIndex":
        """Append ``other``'s blocks with their row spans, labels and names; returns self."""
        for n_obs, features, label, names in self._blocks_of(other_row_index, VariableFeatureIndex):
            self.append_features(n_obs, features, label, names=names)
        return self

    @staticmethod
    def load(datapath: PathLike, pickled_labels_ok: bool = False) -> "VariableFeatureIndex":
        """Load an index written by :meth:`save` or by bionemo-scdl (labels: see :func:`_read_labels`)."""
        return RowFeatureIndex._load_common(datapath, VariableFeatureIndex(), pickled_labels_ok)
