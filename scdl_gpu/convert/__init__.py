"""Conversion of h5ad files, 10x outputs and Matrix Market directories into SCDL archives."""

from ._cancel import ConversionInterrupted
from ._convert import convert_h5ad
from ._inputs import discover_inputs, open_source
from ._many import ConversionReport, InputReport, convert_many

__all__ = [
    "ConversionInterrupted",
    "ConversionReport",
    "InputReport",
    "convert_h5ad",
    "convert_many",
    "discover_inputs",
    "open_source",
]
