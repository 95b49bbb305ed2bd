"""Change the stored value dtype of an archive, replacing it whole and atomically.

The cast archive is built beside the old one (hard links to every file that does not change,
a new ``data.npy`` and ``header.sch``) and exchanged with it in one rename, so the path never
holds a header of one dtype over values of the other, and readers of the old archive keep it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._atomic import rebuilt
from ._concat import DEFAULT_CHUNK
from ._constants import FileNames
from ._dtypes import cast_checked, check_data_dtype
from ._header import SCDLHeader, build_archive_header, feature_index_info
from ._memmap import write_raw
from ._reader import load_feature_index, open_arrays


def archive_header(path: Path, dtypes: dict[str, str], lengths: dict[str, int]) -> SCDLHeader:
    """A flat archive's header from the arrays' dtypes and lengths and the feature indices on disk."""
    infos = []
    for which in (FileNames.VAR_FEATURES, FileNames.OBS_FEATURES):
        index = load_feature_index(path, which)
        infos.append(feature_index_info(which.value, index.number_of_rows(), len(index)))
    return build_archive_header(dtypes=dtypes, lengths=lengths, feature_indices=infos)


def write_header(path: Path, dtypes: dict[str, str], lengths: dict[str, int], target: Path | None = None) -> None:
    """Rebuild ``header.sch`` from the arrays' dtypes and lengths and the feature indices on disk."""
    archive_header(path, dtypes, lengths).save(str(target or path / FileNames.HEADER.value))


def cast_archive_data(
    path: str | os.PathLike, dtype: str, tolerance: float = 1e-08, chunk: int = DEFAULT_CHUNK, allow_lossy: bool = False
) -> str:
    """Rewrite ``data.npy`` of the archive at ``path`` as ``dtype``; returns the old dtype.

    Values ``dtype`` cannot hold raise ``ValueError`` and leave the archive untouched. So does a
    lossy cast (a value changing by more than ``tolerance``, such as normalised floats into
    integers) unless ``allow_lossy``, which casts and warns (as at conversion). The archive is
    replaced as a whole (see the module docstring); what a killed cast left beside it is removed
    first.
    """
    path = Path(path)
    new = check_data_dtype(dtype)
    current = open_arrays(path)  # errors name the archive, not the sibling below
    if current.chunks is not None:
        raise ValueError(f"{path} is a chunked archive; cast the flat archive it was partitioned from")
    if current.header is not None and current.dtypes[FileNames.DATA.value] == new:
        return new
    del current
    with rebuilt(path) as tmp:
        # Read from the sibling's links: the same generation as everything linked beside them.
        arrays = open_arrays(tmp)
        old = arrays.dtypes[FileNames.DATA.value]
        staged = tmp / f".{FileNames.DATA.value}.cast.tmp"
        with open(staged, "wb") as out:
            for s in range(0, arrays.nnz, chunk):
                values = arrays.data[s : s + chunk]
                write_raw(out, cast_checked(values, new, tolerance, str(path / FileNames.DATA.value), allow_lossy))
            out.flush()
            os.fsync(out.fileno())
        os.replace(staged, tmp / FileNames.DATA.value)  # replaces the link; the old file is untouched
        dtypes = {**arrays.dtypes, FileNames.DATA.value: new}
        lengths = {FileNames.DATA.value: arrays.nnz, FileNames.ROWPTR.value: arrays.n_rows + 1, FileNames.COLPTR.value: arrays.nnz}
        del arrays
        (tmp / FileNames.HEADER.value).unlink(missing_ok=True)  # a link: never write through it
        write_header(tmp, dtypes, lengths)
    return old
