"""CUDA sources of scdl_gpu, shipped as package data and compiled at run time by CuPy (NVRTC).

This module only reads the sources and spells the template names CuPy is asked for; it imports
no CUDA library, so tests compile-check the same strings without a GPU.
"""

from __future__ import annotations

import importlib.resources

import numpy as np

#: numpy dtype name -> the C++ type the kernels' templates are instantiated with
CTYPES = {
    "uint8": "unsigned char",
    "uint16": "unsigned short",
    "uint32": "unsigned int",
    "uint64": "unsigned long long",
    "float32": "float",
    "float64": "double",
    "int32": "int",
    "int64": "long long",
}
VALUE_TYPES = ("uint8", "uint16", "uint32", "uint64", "float32", "float64")  # staged values
COLUMN_TYPES = ("uint8", "uint16", "uint32", "uint64")  # staged column indices
OUTPUT_TYPES = ("float32", "float64")
INDEX_TYPES = ("int32", "int64")


def source(name: str = "csr_batch.cu") -> str:
    return importlib.resources.files(__name__).joinpath(name).read_text()


def expression(kernel: str, *dtypes) -> str:
    """The name expression of a template instantiation, e.g. ``scdl_emit<unsigned short, ...>``."""
    return f"{kernel}<{', '.join(CTYPES[np.dtype(d).name] for d in dtypes)}>"


def _csr_batch_expressions() -> list[str]:
    out = [expression("scdl_keep_flags", tc) for tc in COLUMN_TYPES]
    for tv in VALUE_TYPES:
        for tc in COLUMN_TYPES:
            out.append(expression("scdl_row_sums", tv, tc))
            for ov in OUTPUT_TYPES:
                out.append(expression("scdl_densify", tv, tc, ov))
                out += [expression("scdl_emit", tv, tc, ov, oi) for oi in INDEX_TYPES]
    return out


def _gather_expressions() -> list[str]:
    # Resident values keep the archive dtype (float16 travels as its uint16 bits).
    return [expression(k, tv, tc) for k in ("scdl_gather", "scdl_gather_chunks") for tv in VALUE_TYPES
            for tc in COLUMN_TYPES]


#: unsigned item types the decode kernels work in (a value dtype travels as the unsigned type of its size)
ITEM_TYPES = ("uint8", "uint16", "uint32", "uint64")
DECODE_KERNELS = ("scdl_unshuffle", "scdl_delta_sums", "scdl_delta_scan", "scdl_delta_apply")


def _decode_expressions() -> list[str]:
    return [expression(k, t) for k in DECODE_KERNELS for t in ITEM_TYPES] + ["scdl_crc32c_blocks"]


_EXPRESSIONS = {"csr_batch.cu": _csr_batch_expressions, "gather.cu": _gather_expressions,
                "decode.cu": _decode_expressions}
#: every kernel file; each is its own NVRTC program
SOURCES = tuple(_EXPRESSIONS)


def all_expressions(name: str = "csr_batch.cu") -> list[str]:
    """Every instantiation the GPU backend can request from the kernel file ``name``."""
    return _EXPRESSIONS[name]()
