"""Change the stored value dtype of an archive in place, without ever leaving garbage readable."""

from __future__ import annotations

import os
from pathlib import Path

from ._concat import DEFAULT_CHUNK
from ._constants import FileNames
from ._dtypes import cast_checked, check_data_dtype
from ._header import build_archive_header, feature_index_info
from ._memmap import fsync_dir, write_raw
from ._reader import load_feature_index, open_arrays


def write_header(path: Path, dtypes: dict[str, str], lengths: dict[str, int], target: Path | None = None) -> None:
    """Rebuild ``header.sch`` from the arrays' dtypes and lengths and the feature indices on disk."""
    infos = []
    for which in (FileNames.VAR_FEATURES, FileNames.OBS_FEATURES):
        index = load_feature_index(path, which)
        infos.append(feature_index_info(which.value, index.number_of_rows(), len(index)))
    header = build_archive_header(dtypes=dtypes, lengths=lengths, feature_indices=infos)
    header.save(str(target or path / FileNames.HEADER.value))


def cast_archive_data(path: str | os.PathLike, dtype: str, tolerance: float = 1e-08, chunk: int = DEFAULT_CHUNK) -> str:
    """Rewrite ``data.npy`` of the archive at ``path`` as ``dtype``; returns the old dtype.

    The new values and header are written beside the old ones and renamed over them only once
    both are complete. Values ``dtype`` cannot hold raise ``ValueError`` and leave the archive
    untouched; lossy casts warn (``tolerance``, as at conversion).
    """
    path = Path(path)
    new = check_data_dtype(dtype)
    arrays = open_arrays(path)
    old = arrays.dtypes[FileNames.DATA.value]
    data_file = path / FileNames.DATA.value
    header_file = path / FileNames.HEADER.value
    tmp_data = data_file.with_name(data_file.name + ".partial")
    tmp_header = header_file.with_name(header_file.name + ".partial")
    try:
        with open(tmp_data, "wb") as out:
            for s in range(0, arrays.nnz, chunk):
                write_raw(out, cast_checked(arrays.data[s : s + chunk], new, tolerance, str(data_file)))
            out.flush()
            os.fsync(out.fileno())
        dtypes = {**arrays.dtypes, FileNames.DATA.value: new}
        lengths = {FileNames.DATA.value: arrays.nnz, FileNames.ROWPTR.value: arrays.n_rows + 1, FileNames.COLPTR.value: arrays.nnz}
        write_header(path, dtypes, lengths, target=tmp_header)
    except BaseException:
        tmp_data.unlink(missing_ok=True)
        tmp_header.unlink(missing_ok=True)
        raise
    del arrays  # release the mapping of the old data before its file is replaced
    # Two renames, back to back: the only window in which data and header disagree. A reader
    # in that window sees a size mismatch (different itemsize) or, for equal itemsizes, the
    # old header; the row pointers and columns are untouched either way.
    os.replace(tmp_data, data_file)
    os.replace(tmp_header, header_file)
    fsync_dir(path)
    return old
