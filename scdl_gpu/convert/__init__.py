"""Conversion of h5ad files, 10x outputs and Matrix Market directories into SCDL archives (or atlases of them)."""

from ._atlas import AtlasConversionReport, MemberResult, convert_to_atlas
from ._cancel import ConversionInterrupted
from ._convert import convert_h5ad
from ._inputs import discover_inputs, open_source
from ._many import ConversionReport, InputReport, convert_many

__all__ = [
    "AtlasConversionReport",
    "ConversionInterrupted",
    "ConversionReport",
    "InputReport",
    "MemberResult",
    "convert_h5ad",
    "convert_many",
    "convert_to_atlas",
    "discover_inputs",
    "open_source",
]
