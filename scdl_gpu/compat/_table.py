"""Every module of upstream bionemo-scdl's source tree, and what stands in for it here.

A module is a package (subpackages only), a map of upstream's public names (the ones it defines
and the public ones it imports) to ``"our.module:attr"``, or not provided at all (with why).
Names upstream has that we do not are listed too, so asking for one says so by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROOT = "bionemo.scdl"


@dataclass(frozen=True)
class Stand:
    """What stands in for one upstream module."""

    names: dict[str, str] = field(default_factory=dict)  # upstream name -> "module:attr"
    missing: tuple[str, ...] = ()  # upstream public names with no counterpart here
    package: bool = False
    absent: str | None = None  # the whole module is not provided: why


def _from(module: str, *names: str, **renamed: str) -> dict[str, str]:
    return {**{n: f"{module}:{n}" for n in names}, **{n: f"{module}:{ours}" for n, ours in renamed.items()}}


_CONST = "scdl_gpu.archive._constants"
_DTYPES = "scdl_gpu.archive._dtypes"
_FEAT = "scdl_gpu.archive._feature_index"
_HEADER = "scdl_gpu.archive._header"
_API = "scdl_gpu.compat._shims"
_CONSTANTS = _from(_CONST, "FileNames", "ArrayDType", "Backend", "Mode", "NeighborSamplingStrategy", "INT_ORDER", "FLOAT_ORDER")
_INDICES = _from(_FEAT, "ObservedFeatureIndex", "VariableFeatureIndex")
_HEADERS = _from(_HEADER, "ArrayInfo", "FeatureIndexInfo", "SCDLHeader")
_DOWNLOADER = "upstream's NGC/PBSS test-data downloader; scdl_gpu downloads nothing (install bionemo-scdl for it)"

MODULES: dict[str, Stand] = {
    ROOT: Stand(package=True),
    f"{ROOT}.api": Stand(package=True),
    f"{ROOT}.api.single_cell_row_dataset": Stand(_from(_API, "SingleCellRowDatasetCore", "SingleCellRowDataset")),
    f"{ROOT}.data": Stand(absent=_DOWNLOADER),
    f"{ROOT}.data.load": Stand(absent=_DOWNLOADER),
    f"{ROOT}.index": Stand(package=True),
    f"{ROOT}.index.row_feature_index": Stand(_from(_FEAT, "are_dicts_equal", "RowFeatureIndex", *_INDICES)),
    f"{ROOT}.io": Stand(package=True),
    f"{ROOT}.io.single_cell_memmap_dataset": Stand(
        {
            **_from("scdl_gpu.dataset", "SingleCellMemMapDataset"),
            **_from(_API, "SingleCellRowDataset"),
            **_INDICES,
            **_HEADERS,
            **_from(_API, "CurrentSCDLVersion"),
            **_from(_DTYPES, "determine_dtype", "smallest_uint_dtype"),
            **_CONSTANTS,
        },
        missing=("extend_files",),
    ),
    f"{ROOT}.io.single_cell_collection": Stand(
        {
            **_from("scdl_gpu.collection", "SingleCellCollection"),
            **_from("scdl_gpu.dataset", "SingleCellMemMapDataset"),
            **_from(_API, "SingleCellRowDatasetCore"),
            **_from(_FEAT, "VariableFeatureIndex"),
            **_from(_CONST, "FileNames"),
        },
        missing=("AsyncWorkQueue",),
    ),
    f"{ROOT}.schema": Stand(package=True),
    f"{ROOT}.schema.header": Stand(
        {**_HEADERS, **_from(_HEADER, "SCDLVersion", "SCDL_MAGIC_NUMBER"), **_from(_API, "CurrentSCDLVersion"),
         **_from("scdl_gpu.errors", "HeaderSerializationError"), **_from(_CONST, "ArrayDType", "Backend")},
        missing=("create_header_from_arrays", "validate_header_compatibility", "merge_headers", "HeaderReader",
                 "BinaryHeaderCodec", "Endianness"),
    ),
    f"{ROOT}.schema.headerutil": Stand(
        _from("scdl_gpu.errors", "HeaderSerializationError"), missing=("Endianness", "BinaryHeaderCodec")
    ),
    f"{ROOT}.schema.magic": Stand(_from(_HEADER, "SCDL_MAGIC_NUMBER")),
    f"{ROOT}.schema.version": Stand({**_from(_HEADER, "SCDLVersion"), **_from(_API, "CurrentSCDLVersion")}, missing=("Version",)),
    f"{ROOT}.scripts": Stand(package=True),
    f"{ROOT}.scripts.convert_h5ad_to_scdl": Stand(_from("scdl_gpu.cli.upstream", "main")),
    # from upstream's open chunked-archive change (not in a release yet)
    f"{ROOT}.scripts.partition_scdl": Stand(_from("scdl_gpu.archive", "partition_scdl")),
    f"{ROOT}.util": Stand(package=True),
    f"{ROOT}.util.async_worker_queue": Stand(
        absent="upstream's thread/process pool helper; scdl_gpu's conversion runs its own workers"
    ),
    f"{ROOT}.util.filecopyutil": Stand(
        absent="upstream's helper for appending one array file to another; scdl_gpu.archive.concat_archives does concatenation"
    ),
    f"{ROOT}.util.memmap_utils": Stand(
        {**_from(_DTYPES, "smallest_uint_dtype", "determine_dtype"), **_from(_CONST, "FLOAT_ORDER", "INT_ORDER", "FileNames", "Mode")}
    ),
    f"{ROOT}.util.scdl_constants": Stand(_CONSTANTS),
    f"{ROOT}.util.torch_dataloader_utils": Stand(
        _from("scdl_gpu.collate", "collate_sparse_matrix_batch", "collate_neighbor_sparse_matrix_batch")
    ),
}
