"""Names and enums of the SCDL memmap archive, spelled exactly as bionemo-scdl spells them."""

from __future__ import annotations

from enum import Enum, IntEnum

#: Package version written to ``version.json`` and ``*/version.npy``. bionemo-scdl writes its own
#: package version there; we write the version whose layout we produce so readers see no surprise.
SCDL_PACKAGE_VERSION = "0.1.3"


class FileNames(str, Enum):
    """File and directory names inside an archive."""

    DATA = "data.npy"
    ROWPTR = "row_ptr.npy"
    COLPTR = "col_ptr.npy"
    NEIGHBOR_INDICES = "neighbor_indices.npy"
    NEIGHBOR_INDICES_PTR = "neighbor_indptr.npy"
    NEIGHBOR_VALUES = "neighbor_values.npy"
    METADATA = "metadata.json"
    FEATURES = "features"
    VAR_FEATURES = "var_features"
    OBS_FEATURES = "obs_features"
    VERSION = "version.json"
    HEADER = "header.sch"


class Mode(str, Enum):
    """Open modes; kept for API compatibility (archives open read-only unless mutated)."""

    CREATE_APPEND = "w+"
    READ_APPEND = "r+"
    READ = "r"
    CREATE = "w"


class NeighborSamplingStrategy(str, Enum):
    RANDOM = "random"
    FIRST = "first"


class Backend(IntEnum):
    MEMMAP_V0 = 1
    CHUNKED_MEMMAP_V0 = 2  # upstream's chunked layout: chunk_{id:05d}/{data,row_ptr,col_ptr}.npy
    # scdl_gpu's compressed chunks (archive/_compressed.py): far from upstream's own numbering, so a
    # later upstream value does not collide; upstream's readers refuse the header and find no data.npy
    COMPRESSED_CHUNKED_V0 = 1001


#: Backends whose header carries ChunkedInfo and whose rows live in ``chunk_{id:05d}/`` directories.
CHUNKED_BACKENDS = (Backend.CHUNKED_MEMMAP_V0, Backend.COMPRESSED_CHUNKED_V0)


#: A compressed archive's codecs (archive/_compressed.py); its chunks hold ``*.frames`` files.
COMPRESSION_FILE = "scdl_gpu_compression.json"

#: Directory of one chunk of a chunked archive (upstream's spelling).
CHUNK_DIR_FORMAT = "chunk_{:05d}"


class ArrayDType(IntEnum):
    """Array dtype codes stored in ``header.sch``."""

    UINT8_ARRAY = 1
    UINT16_ARRAY = 2
    UINT32_ARRAY = 3
    UINT64_ARRAY = 4
    FLOAT16_ARRAY = 5
    FLOAT32_ARRAY = 6
    FLOAT64_ARRAY = 7
    STRING_ARRAY = 8
    FIXED_STRING_ARRAY = 9

    @property
    def numpy_dtype_string(self) -> str:
        return _CODE_TO_NAME[self]

    @classmethod
    def from_numpy_dtype(cls, dtype) -> "ArrayDType":
        """Map a numpy dtype (object, type or string) to its header code.

        Signed integers have no code in the format and raise ``ValueError``.
        """
        import numpy as np

        if isinstance(dtype, str):
            if dtype in ("object", "str", "string"):
                return cls.STRING_ARRAY
            if dtype == "fixed_string":
                return cls.FIXED_STRING_ARRAY
        dt = np.dtype(dtype)
        if dt.kind == "U" or dt.kind == "S":
            return cls.FIXED_STRING_ARRAY
        if dt.kind == "O":
            return cls.STRING_ARRAY
        try:
            return _NAME_TO_CODE[dt.name]
        except KeyError:
            raise ValueError(f"dtype {dt.name!r} has no SCDL header code; expected one of {sorted(_NAME_TO_CODE)}") from None


_CODE_TO_NAME = {
    ArrayDType.UINT8_ARRAY: "uint8",
    ArrayDType.UINT16_ARRAY: "uint16",
    ArrayDType.UINT32_ARRAY: "uint32",
    ArrayDType.UINT64_ARRAY: "uint64",
    ArrayDType.FLOAT16_ARRAY: "float16",
    ArrayDType.FLOAT32_ARRAY: "float32",
    ArrayDType.FLOAT64_ARRAY: "float64",
    ArrayDType.STRING_ARRAY: "string",
    ArrayDType.FIXED_STRING_ARRAY: "fixed_string",
}
_NAME_TO_CODE = {v: k for k, v in _CODE_TO_NAME.items() if k <= ArrayDType.FLOAT64_ARRAY}

INT_ORDER = ["uint8", "uint16", "uint32", "uint64"]
FLOAT_ORDER = ["float16", "float32", "float64"]

#: dtypes used when an archive has no readable header (every layout before the header existed).
DEFAULT_DTYPES = {
    FileNames.DATA.value: "float32",
    FileNames.COLPTR.value: "uint32",
    FileNames.ROWPTR.value: "uint64",
    FileNames.NEIGHBOR_INDICES.value: "uint32",
    FileNames.NEIGHBOR_INDICES_PTR.value: "uint64",
    FileNames.NEIGHBOR_VALUES.value: "float32",
}

#: scdl_gpu's own notes about an archive (upstream ignores the file): facts learned while writing
#: it, valid only while ``n_rows`` and ``nnz`` still match the arrays.
LAYOUT_FILE = "scdl_gpu.json"

#: obs columns a shuffled conversion adds: each row's position in its input, and (several inputs)
#: the input it came from
SOURCE_ROW = "source_row"
SOURCE_FILE = "source_file"
