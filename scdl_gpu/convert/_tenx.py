"""10x Genomics Cell Ranger outputs: the HDF5 matrix (v3 and the 1.2/2 layout) and Matrix Market directories.

Cell Ranger stores genes x cells column-major, so its HDF5 ``indptr`` runs over cells: the group
is exactly CSR of cells x genes and goes through :class:`~._matrix.CSRReader`. A Matrix Market file
is a list of ``gene cell value`` lines in any order, so it is a scatter input read in two passes.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..errors import ConversionError
from ._cancel import check_cancelled
from ._matrix import CSRReader, ScatterReader
from ._source import Source
from ._warnings import filtered_warnings

# -- HDF5 ----------------------------------------------------------------------------------------


def is_tenx_h5(f: h5py.File) -> bool:
    """A Cell Ranger HDF5 matrix: v3 (``matrix/barcodes``) or 1.2/2 (a genome group with barcodes and genes)."""
    return _is_v3(f) or bool(_genome_groups(f))


def _is_v3(f: h5py.File) -> bool:
    return isinstance(f.get("matrix"), h5py.Group) and "barcodes" in f["matrix"]


def _genome_groups(f: h5py.File) -> list[str]:
    return [k for k, g in f.items() if isinstance(g, h5py.Group) and "barcodes" in g and "genes" in g]


class _ShapeAttr:
    """A 10x matrix group seen as CSRReader expects it: ``shape`` as an attribute, in (cells, genes)."""

    def __init__(self, group: h5py.Group, shape: tuple[int, int]) -> None:
        self._group = group
        self.attrs = {"shape": shape}

    def __contains__(self, key: str) -> bool:
        return key in self._group

    def __getitem__(self, key: str):
        return self._group[key]


class TenxH5Reader(CSRReader):
    """A 10x HDF5 matrix group read as CSR of cells x genes (its ``shape`` dataset is [genes, cells])."""

    def __init__(self, group: h5py.Group, where: str) -> None:
        ds = group.get("shape")
        shape = None if not isinstance(ds, h5py.Dataset) else np.asarray(ds[()]).ravel()
        if shape is None or shape.size != 2:
            raise ConversionError(f"{where}: 10x matrix group has no 2-element 'shape' dataset")
        n_genes, n_cells = int(shape[0]), int(shape[1])
        super().__init__(_ShapeAttr(group, (n_cells, n_genes)), where)


def _strings(group: h5py.Group, key: str, where: str) -> np.ndarray:
    ds = group.get(key)
    if not isinstance(ds, h5py.Dataset):
        raise ConversionError(f"{where}: no '{key}' dataset")
    try:
        return np.asarray(ds.asstr()[()], dtype=object).reshape(-1)
    except (TypeError, ValueError) as e:  # not strings, or not UTF-8
        raise ConversionError(f"{where}: '{key}' is not a string dataset: {e}") from e


class TenxH5Source(Source):
    """A Cell Ranger ``*.h5`` matrix: v3 (``matrix/``) or 1.2/2 (one group per genome)."""

    def __init__(self, path: Path, genome: str | None = None) -> None:
        super().__init__(path)
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise ConversionError(f"{path} is not a readable HDF5 file: {e}") from e
        try:
            self._group = self._locate(genome)
            self.matrix = TenxH5Reader(self._group, f"{path}:{self._group.name.lstrip('/')}")
        except BaseException:
            self._file.close()
            raise

    def _locate(self, genome: str | None) -> h5py.Group:
        f = self._file
        if _is_v3(f):
            self.kind = "10x-h5-v3"
            if genome is not None:
                # v3 holds every genome in one matrix; picking one would drop columns, which is not done here.
                genomes = sorted(set(_strings(f["matrix"], "features/genome", f"{self.path}:matrix")))
                if genomes != [genome]:
                    raise ConversionError(
                        f"{self.path}: genome={genome!r} cannot be selected in a Cell Ranger 3 file; "
                        f"its one matrix holds the genomes {genomes}"
                    )
            return f["matrix"]
        genomes = _genome_groups(f)
        if not genomes:
            raise ConversionError(
                f"{self.path} is not a 10x Genomics HDF5 matrix (no 'matrix' group, no genome group with barcodes)"
            )
        self.kind = "10x-h5-v2"
        if genome is None:
            if len(genomes) > 1:
                raise ConversionError(
                    f"{self.path} holds one matrix per genome ({', '.join(genomes)}); pick one with genome="
                )
            genome = genomes[0]
        if genome not in genomes:
            raise ConversionError(f"{self.path} has no genome {genome!r}; it has {', '.join(genomes)}")
        return f[genome]

    def obs(self) -> pd.DataFrame:
        barcodes = _strings(self._group, "barcodes", self.matrix.where)
        return self._checked(pd.DataFrame(index=pd.Index(barcodes, dtype=object)), 0, "barcodes")

    def var(self) -> pd.DataFrame:
        g, where = self._group, self.matrix.where
        if self.kind == "10x-h5-v3":
            ids = _strings(g, "features/id", where)
            cols = {"gene_ids": ids, "gene_symbols": _strings(g, "features/name", where)}
            cols["feature_types"] = _strings(g, "features/feature_type", where)
            if "features/genome" in g:
                cols["genome"] = _strings(g, "features/genome", where)
        else:
            ids = _strings(g, "genes", where)
            cols = {"gene_ids": ids, "gene_symbols": _strings(g, "gene_names", where) if "gene_names" in g else ids}
        try:
            df = pd.DataFrame(cols, index=pd.Index(ids, dtype=object))
        except ValueError as e:  # columns of different lengths
            raise ConversionError(f"{where}: inconsistent feature tables: {e}") from e
        return self._checked(df, 1, "the feature table")

    def close(self) -> None:
        self._file.close()


# -- Matrix Market -------------------------------------------------------------------------------

_FIELDS = {"integer": np.dtype(np.int64), "real": np.dtype(np.float64), "double": np.dtype(np.float64)}
_BYTES_PER_ENTRY = 16  # a guess for sizing pyarrow's byte blocks from a count of entries
# Small blocks let pyarrow decompress, split and convert in parallel; larger ones measured slower.
_MAX_BLOCK_BYTES = 16 << 20


class _Irregular(ConversionError):
    """The strict single-space parse failed after some entries had been handed out."""


def _rechunk(parts: Iterator[dict[str, np.ndarray]], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Regroup column blocks into blocks of exactly ``size`` rows (the last one shorter)."""
    buf: list[dict[str, np.ndarray]] = []
    n = 0
    for part in parts:
        buf.append(part)
        n += len(next(iter(part.values())))
        while n >= size:
            merged = buf[0] if len(buf) == 1 else {c: np.concatenate([p[c] for p in buf]) for c in buf[0]}
            yield {c: a[:size] for c, a in merged.items()}
            buf, n = [{c: a[size:] for c, a in merged.items()}], n - size
    if n:
        yield buf[0] if len(buf) == 1 else {c: np.concatenate([p[c] for p in buf]) for c in buf[0]}


def _open_maybe_gzip(path: Path):
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":  # by content, not name: a renamed file still reads
        f.close()
        return gzip.open(path, "rb")
    f.seek(0)
    return f


class MtxReader(ScatterReader):
    """A Matrix Market ``coordinate`` file (genes x cells, 1-based, gzip or plain), read as cells x genes.

    The file is streamed twice and never held whole. Lines are parsed by pyarrow as single-space
    separated (what Cell Ranger, scipy and R write, and twice as fast as pandas); a file with other
    whitespace makes pass 1 start over with pandas' whitespace-tolerant parser. Pass 1 converts
    only the cell column (and the gene column when ``keep`` is given), so bad genes or values are
    reported by pass 2; the entry count and line layout are checked by both.
    """

    kind = "mtx"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(path)
        self._engine = "arrow"
        try:
            with _open_maybe_gzip(self.path) as f:
                self._read_header(f)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            raise ConversionError(f"{path}: cannot read the Matrix Market header: {e}") from e

    def _read_header(self, f) -> None:
        banner = f.readline().decode("ascii", "replace").strip()
        words = banner.lower().split()
        if len(words) != 5 or words[0] != "%%matrixmarket":
            raise ConversionError(f"{self.where}: not a Matrix Market file (first line {banner[:80]!r})")
        obj, fmt, field, symmetry = words[1:]
        if obj != "matrix" or fmt != "coordinate":
            raise ConversionError(f"{self.where}: only sparse 'matrix coordinate' files are supported, not {banner!r}")
        if field not in _FIELDS:
            raise ConversionError(f"{self.where}: values of type {field!r} are not supported (integer or real only)")
        if symmetry != "general":
            raise ConversionError(
                f"{self.where}: {symmetry!r} matrices are not supported (they store one triangle); only 'general'"
            )
        self.dtype = _FIELDS[field]
        lines = 1
        for raw in iter(f.readline, b""):
            lines += 1
            line = raw.decode("ascii", "replace").strip()
            if not line or line.startswith("%"):
                continue
            try:
                n_genes, n_cells, nnz = (int(x) for x in line.split())
            except ValueError:
                raise ConversionError(
                    f"{self.where}: line {lines} should be the size line 'genes cells entries', got {line[:80]!r}"
                ) from None
            if min(n_genes, n_cells, nnz) < 0:
                raise ConversionError(f"{self.where}: negative size on line {lines}: {line!r}")
            self.shape, self.nnz, self._header_lines = (n_cells, n_genes), nnz, lines
            return
        raise ConversionError(f"{self.where}: the file ends before the size line")

    # -- the two passes

    def row_counts(self, max_values: int, keep: np.ndarray | None = None) -> np.ndarray:
        try:
            return self._count(max_values, keep)
        except _Irregular:
            self._engine = "pandas"
            return self._count(max_values, keep)

    def _count(self, max_values: int, keep: np.ndarray | None) -> np.ndarray:
        counts = np.zeros(self.shape[0], np.int64)
        cols = ("cell",) if keep is None else ("gene", "cell")
        for first, arrays in self._chunks(max_values, cols):
            check_cancelled()
            cells = self._zero_based(arrays["cell"], self.shape[0], "cell", first)
            if keep is not None:
                cells = cells[keep[self._zero_based(arrays["gene"], self.shape[1], "gene", first)]]
            counts += np.bincount(cells, minlength=self.shape[0])
        return counts

    def entries(self, max_values: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(cells, genes, values)``, 0-based, in file order."""
        for first, a in self._chunks(max_values, ("gene", "cell", "value")):
            yield (
                self._zero_based(a["cell"], self.shape[0], "cell", first),
                self._zero_based(a["gene"], self.shape[1], "gene", first),
                a["value"],
            )

    def _zero_based(self, idx: np.ndarray, bound: int, what: str, first: int) -> np.ndarray:
        out = idx - 1
        if out.size and (out.min() < 0 or out.max() >= bound):
            bad = int(np.flatnonzero((out < 0) | (out >= bound))[0])
            raise ConversionError(
                f"{self.where} line {self._line(first + bad)}: {what} index {int(idx[bad])} is outside 1..{bound}"
            )
        return out

    def _line(self, entry: int) -> int:
        """The line number of entry ``entry`` (0-based), taking lines as one entry each."""
        return self._header_lines + 1 + entry

    # -- chunked parsing

    def _chunks(self, max_values: int, cols: tuple[str, ...]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(number of the chunk's first entry, {column: array})``; checks the entry count against the size line."""
        max_values = max(1, int(max_values))
        done = 0
        try:
            with _open_maybe_gzip(self.path) as f:
                for _ in range(self._header_lines):
                    f.readline()
                parse = self._arrow if self._engine == "arrow" else self._pandas
                for arrays in parse(f, max_values, cols):
                    n = len(next(iter(arrays.values())))
                    if done + n > self.nnz:
                        raise ConversionError(
                            f"{self.where}: more entries than the {self.nnz} the size line declares "
                            f"(line {self._line(self.nnz)} and on)"
                        )
                    yield done, arrays
                    done += n
        except _Irregular:
            if done:
                raise
            self._engine = "pandas"  # nothing handed out yet: start over with the tolerant parser
            yield from self._chunks(max_values, cols)
            return
        except (OSError, EOFError, zlib.error) as e:
            raise ConversionError(f"{self.where}: read failed after {done} entries (truncated file?): {e}") from e
        if done != self.nnz:
            raise ConversionError(
                f"{self.where}: the size line declares {self.nnz} entries but the file holds {done} (truncated file?)"
            )

    def _arrow(self, f, max_values: int, cols: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        types = {"gene": pa.int64(), "cell": pa.int64(), "value": pa.from_numpy_dtype(self.dtype)}
        block = min(max(max_values * _BYTES_PER_ENTRY, 1 << 16), _MAX_BLOCK_BYTES)
        reader = None
        try:
            reader = pcsv.open_csv(
                f,
                read_options=pcsv.ReadOptions(column_names=list(types), block_size=block),
                parse_options=pcsv.ParseOptions(delimiter=" ", quote_char=False),
                # No null values: an empty field is an error, and "nan" stays a float.
                convert_options=pcsv.ConvertOptions(
                    column_types=types, include_columns=list(cols), null_values=[], strings_can_be_null=False
                ),
            )
            yield from _rechunk(({c: b.column(c).to_numpy() for c in cols} for b in reader), max_values)
        except pa.ArrowInvalid as e:
            raise _Irregular(f"{self.where}: cannot parse the entries: {e}") from e
        finally:
            if reader is not None:
                reader.close()

    def _pandas(self, f, max_values: int, cols: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        names = ["gene", "cell", "value"]
        done = 0
        try:
            # Extra fields on the first line only warn (and would shift columns): refuse them.
            with filtered_warnings("error", pd.errors.ParserWarning):
                with pd.read_csv(
                    f,
                    sep=r"\s+",
                    header=None,
                    names=names,
                    index_col=False,
                    dtype=dict(zip(names, [np.int64, np.int64, self.dtype])),
                    keep_default_na=False,
                    na_values={"value": ["nan", "NaN", "-nan"]},
                    float_precision="round_trip",  # correctly rounded, as pyarrow
                    chunksize=max_values,
                ) as chunks:
                    for df in chunks:
                        yield {c: df[c].to_numpy() for c in cols}
                        done += len(df)
        except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning) as e:
            raise ConversionError(
                f"{self.where}: cannot parse the entries from line {self._line(done)} on "
                f"(expected 'gene cell value' per line, {self.dtype} values): {e}"
            ) from e


# -- Matrix Market directories -------------------------------------------------------------------


def _find(directory: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for p in (directory / name, directory / f"{name}.gz"):
            if p.is_file():
                return p
    return None


def mtx_matrix_file(directory: Path) -> Path | None:
    """The ``matrix.mtx`` or ``matrix.mtx.gz`` in ``directory``, or None."""
    return _find(Path(directory), ("matrix.mtx",))


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(
            path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, compression="infer"
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame({0: pd.Series([], dtype=object)})
    except (OSError, EOFError, zlib.error, ValueError, pd.errors.ParserError) as e:
        raise ConversionError(f"{path}: cannot read the table: {e}") from e


class MtxSource(Source):
    """A Cell Ranger matrix directory: ``matrix.mtx``, ``features.tsv`` (v3) or ``genes.tsv`` (v2), ``barcodes.tsv``.

    Each file may be gzipped (``.gz``).
    """

    kind = "10x-mtx"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if not self.path.is_dir():
            raise ConversionError(f"{path} is not a directory holding a 10x matrix.mtx")
        files = {
            "matrix.mtx": mtx_matrix_file(self.path),
            "features.tsv or genes.tsv": _find(self.path, ("features.tsv", "genes.tsv")),
            "barcodes.tsv": _find(self.path, ("barcodes.tsv",)),
        }
        missing = [name for name, p in files.items() if p is None]
        if missing:
            raise ConversionError(f"{path}: missing {', '.join(missing)} (each may also be gzipped, .gz)")
        matrix_file, self._features_file, self._barcodes_file = files.values()
        self.matrix = MtxReader(matrix_file)

    def obs(self) -> pd.DataFrame:
        barcodes = _read_tsv(self._barcodes_file)[0].to_numpy(object)
        return self._checked(pd.DataFrame(index=pd.Index(barcodes, dtype=object)), 0, self._barcodes_file.name)

    def var(self) -> pd.DataFrame:
        t = _read_tsv(self._features_file)
        ids = t[0].to_numpy(object)
        cols = {"gene_ids": ids, "gene_symbols": t[1].to_numpy(object) if t.shape[1] > 1 else ids}
        if t.shape[1] > 2:
            cols["feature_types"] = t[2].to_numpy(object)
        return self._checked(pd.DataFrame(cols, index=pd.Index(ids, dtype=object)), 1, self._features_file.name)
