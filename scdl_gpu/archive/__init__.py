"""The SCDL memmap archive format: header, dtype rules, feature indices, reading and writing.

This layer knows nothing of torch or CuPy: it maps files to NumPy arrays and back.
"""

from ._concat import concat_archives
from ._constants import (
    FLOAT_ORDER,
    INT_ORDER,
    SCDL_PACKAGE_VERSION,
    ArrayDType,
    Backend,
    FileNames,
    Mode,
    NeighborSamplingStrategy,
)
from ._dtypes import determine_dtype, smallest_uint_dtype
from ._feature_index import ObservedFeatureIndex, RowFeatureIndex, VariableFeatureIndex, are_dicts_equal
from ._header import ArrayInfo, ChunkedInfo, FeatureIndexInfo, SCDLHeader
from ._partition import partition_scdl
from ._reader import ArchiveArrays, open_arrays
from ._remote import RemoteArchive
from ._summary import archive_summary, format_summary
from ._checksums import verify_manifest, write_manifest
from ._generation import allow_external_links
from ._validate import ValidationReport, validate_archive, validation_report, write_checksums
from ._writer import ArchiveWriter

__all__ = [
    "ArchiveArrays",
    "ArchiveWriter",
    "ArrayDType",
    "ArrayInfo",
    "Backend",
    "ChunkedInfo",
    "FLOAT_ORDER",
    "FeatureIndexInfo",
    "FileNames",
    "INT_ORDER",
    "Mode",
    "NeighborSamplingStrategy",
    "ObservedFeatureIndex",
    "RemoteArchive",
    "RowFeatureIndex",
    "SCDLHeader",
    "SCDL_PACKAGE_VERSION",
    "ValidationReport",
    "VariableFeatureIndex",
    "allow_external_links",
    "archive_summary",
    "are_dicts_equal",
    "concat_archives",
    "determine_dtype",
    "format_summary",
    "open_arrays",
    "partition_scdl",
    "smallest_uint_dtype",
    "validate_archive",
    "validation_report",
    "verify_manifest",
    "write_checksums",
    "write_manifest",
]
