"""Tests for scdl_gpu.archive._header: byte compatibility with bionemo-scdl and strict decoding."""

from __future__ import annotations

import json
import os
import random
import struct

import numpy as np
import pytest
from bionemo.scdl.schema import header as up
from bionemo.scdl.schema.headerutil import HeaderSerializationError as UpstreamHeaderError
from bionemo.scdl.schema.version import SCDLVersion as UpstreamVersion
from bionemo.scdl.util.scdl_constants import ArrayDType as UpstreamDType
from bionemo.scdl.util.scdl_constants import Backend as UpstreamBackend

from scdl_gpu.archive._constants import ArrayDType, Backend, FileNames
from scdl_gpu.archive._header import (
    CORE_HEADER_SIZE,
    CURRENT_SCDL_VERSION,
    ArrayInfo,
    ChunkedInfo,
    FeatureIndexInfo,
    SCDLHeader,
    SCDLVersion,
    build_archive_header,
    feature_index_info,
)
from scdl_gpu.errors import ArchiveError, HeaderSerializationError

D = ArrayDType


def appendix_header(labels_file: str = "labels.npy") -> SCDLHeader:
    """The header of spec Appendix A.1 (300 rows, downcast uint16 row_ptr / uint8 col_ptr)."""
    return build_archive_header(
        {"data.npy": "float32", "row_ptr.npy": "uint16", "col_ptr.npy": "uint8"},
        {"data.npy": 19312, "row_ptr.npy": 301, "col_ptr.npy": 19312},
        [feature_index_info(d, 300, 1, labels_file) for d in ("var_features", "obs_features")],
    )


def shaped_header() -> SCDLHeader:
    return SCDLHeader(
        arrays=[ArrayInfo("X", 6, D.FLOAT64_ARRAY, (2, 3)), ArrayInfo("Y", 1, D.UINT64_ARRAY, (1,))],
        feature_indices=[FeatureIndexInfo("fi", 4, D.FIXED_STRING_ARRAY, ["a/b.npy"], (4, 1, 1))],
    )


def every_dtype_header() -> SCDLHeader:
    return SCDLHeader(arrays=[ArrayInfo(f"a{int(d)}", int(d) * 1000, d) for d in ArrayDType])


def extremes_header() -> SCDLHeader:
    return SCDLHeader(
        version=SCDLVersion(0, 255, 255),
        arrays=[
            ArrayInfo("big", 2**64 - 1, D.UINT8_ARRAY, (2**32 - 1, 1)),
            ArrayInfo("n" * 1024, 0, D.UINT16_ARRAY),
        ],
        feature_indices=[FeatureIndexInfo("f" * 1024, 2**64 - 1, D.STRING_ARRAY, ["x" * 5000])],
    )


def unicode_header() -> SCDLHeader:
    return SCDLHeader(
        arrays=[ArrayInfo("gène_数据", 5, D.FLOAT16_ARRAY)],
        feature_indices=[FeatureIndexInfo("особенности", 2, D.STRING_ARRAY, ["données/ß.parquet", "🧬"])],
    )


def many_blocks_header() -> SCDLHeader:
    return build_archive_header(
        {"data.npy": "float64", "row_ptr.npy": "uint64", "col_ptr.npy": "uint32"},
        {"data.npy": 10**12, "row_ptr.npy": 10**9 + 1, "col_ptr.npy": 10**12},
        [feature_index_info("var_features", 10**9, 12), feature_index_info("obs_features", 10**9, 100)],
    )


def empty_dataset_header() -> SCDLHeader:
    """Spec Appendix A.3: an empty dataset saved by HEAD (labels.json, no parquet blocks)."""
    return build_archive_header(
        {"data.npy": "float32", "row_ptr.npy": "uint64", "col_ptr.npy": "uint32"},
        {"data.npy": 10, "row_ptr.npy": 3, "col_ptr.npy": 10},
        [feature_index_info(d, 0, 0) for d in ("var_features", "obs_features")],
    )


CASES = [
    pytest.param(SCDLHeader, id="empty"),
    pytest.param(lambda: SCDLHeader(version=SCDLVersion(0, 0, 9)), id="old-schema-version"),
    pytest.param(appendix_header, id="appendix-a1-labels-npy"),
    pytest.param(lambda: appendix_header("labels.json"), id="appendix-a1-labels-json"),
    pytest.param(empty_dataset_header, id="appendix-a3-empty-dataset"),
    pytest.param(many_blocks_header, id="many-blocks-large-lengths"),
    pytest.param(shaped_header, id="shapes"),
    pytest.param(every_dtype_header, id="every-dtype"),
    pytest.param(extremes_header, id="extreme-values"),
    pytest.param(unicode_header, id="unicode"),
]


def to_upstream(h: SCDLHeader) -> up.SCDLHeader:
    """The same content as upstream objects."""
    return up.SCDLHeader(
        version=UpstreamVersion(h.version.major, h.version.minor, h.version.point),
        backend=UpstreamBackend(int(h.backend)),
        arrays=[up.ArrayInfo(a.name, a.length, UpstreamDType(int(a.dtype)), a.shape) for a in h.arrays],
        feature_indices=[
            up.FeatureIndexInfo(f.name, f.length, UpstreamDType(int(f.dtype)), list(f.index_files), f.shape)
            for f in h.feature_indices
        ],
    )


def content(h) -> dict:
    """Comparable content of either implementation's header."""
    return json.loads(h.to_json())


# ---------------------------------------------------------------- round trips and upstream parity


@pytest.mark.parametrize("make", CASES)
def test_round_trip(make):
    h = make()
    data = h.serialize()
    assert len(data) == h.calculate_total_size()
    back = SCDLHeader.deserialize(data)
    assert back == h
    assert back.serialize() == data
    assert SCDLHeader.deserialize(bytearray(data)) == h
    assert SCDLHeader.deserialize(memoryview(data)) == h


@pytest.mark.parametrize("make", CASES)
def test_bytes_identical_to_upstream(make):
    h = make()
    theirs = to_upstream(h)
    assert h.serialize() == theirs.serialize()
    assert h.calculate_total_size() == theirs.calculate_total_size()
    assert h.to_json() == theirs.to_json()


@pytest.mark.parametrize("make", CASES)
def test_upstream_reads_ours_and_we_read_upstreams(make):
    h = make()
    theirs = up.SCDLHeader.deserialize(h.serialize())
    assert content(theirs) == content(h)
    assert SCDLHeader.deserialize(to_upstream(h).serialize()) == h


def test_header_written_by_upstream_dataset_is_reproduced(tmp_path):
    anndata = pytest.importorskip("anndata")
    import pandas as pd
    import scipy.sparse as sp
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset

    x = sp.random(30, 20, density=0.2, format="csr", dtype=np.float32, random_state=0)
    var = pd.DataFrame({"gene": [f"g{i}" for i in range(20)]}, index=[f"v{i}" for i in range(20)])
    anndata.AnnData(X=x, var=var).write_h5ad(tmp_path / "x.h5ad")
    ds = SingleCellMemMapDataset(str(tmp_path / "out"), h5ad_path=str(tmp_path / "x.h5ad"), use_X_not_raw=True)
    ds.save()
    on_disk = (tmp_path / "out" / FileNames.HEADER.value).read_bytes()
    lengths = {
        f.value: os.path.getsize(tmp_path / "out" / f.value) // np.dtype(ds.dtypes[f.value]).itemsize
        for f in (FileNames.DATA, FileNames.ROWPTR, FileNames.COLPTR)
    }
    ours = build_archive_header(ds.dtypes, lengths, [feature_index_info(d, 30, 1, "labels.npy") for d in
                                                     ("var_features", "obs_features")])
    assert ours.serialize() == on_disk
    assert SCDLHeader.load(tmp_path / "out" / "header.sch") == ours


# ---------------------------------------------------------------- the spec's worked example


def test_appendix_a1_example_byte_for_byte():
    data = appendix_header().serialize()
    assert len(data) == 417
    assert len(appendix_header("labels.json").serialize()) == 419
    annotated = (
        "53 43 44 4c 00 01 00 01 00 00 00 01 00 00 00 03"
        " 00 00 00 04 44 41 54 41 00 00 00 00 00 00 4b 70 00 00 00 06 00"
        " 00 00 00 06 52 4f 57 50 54 52 00 00 00 00 00 00 01 2d 00 00 00 02 00"
        " 00 00 00 06 43 4f 4c 50 54 52 00 00 00 00 00 00 4b 70 00 00 00 01 00"
        " 00 00 00 02 00 00 00 0c" + b"var_features".hex(" ") + " 00 00 00 00 00 00 01 2c 00 00 00 08 00 00 00 04"
    )
    prefix = bytes.fromhex(annotated)
    assert data[: len(prefix)] == prefix
    # the rest, assembled by hand from the §2.4 field table
    def s(text: str) -> bytes:
        return struct.pack(">I", len(text)) + text.encode()

    files = ["cumulative_sum_index.npy", "labels.npy", "version.npy", "dataframe_0.parquet"]
    rest = b"".join(s(f"var_features/{f}") for f in files) + b"\x00"
    rest += s("obs_features") + struct.pack(">QII", 300, 8, 4) + b"".join(s(f"obs_features/{f}") for f in files) + b"\0"
    assert data[len(prefix):] == rest


def test_appendix_a1_to_json_matches_spec():
    spec = {
        "version": {"major": 0, "minor": 1, "point": 0}, "endianness": "NETWORK", "backend": "MEMMAP_V0",
        "arrays": [{"name": "DATA", "length": 19312, "dtype": "FLOAT32_ARRAY", "shape": None},
                   {"name": "ROWPTR", "length": 301, "dtype": "UINT16_ARRAY", "shape": None},
                   {"name": "COLPTR", "length": 19312, "dtype": "UINT8_ARRAY", "shape": None}],
        "feature_indices": [
            {"name": d, "length": 300, "dtype": "STRING_ARRAY", "shape": None,
             "index_files": [f"{d}/cumulative_sum_index.npy", f"{d}/labels.npy", f"{d}/version.npy",
                             f"{d}/dataframe_0.parquet"]}
            for d in ("var_features", "obs_features")
        ],
    }
    assert json.loads(appendix_header().to_json()) == spec


def test_appendix_a3_empty_dataset_is_347_bytes():
    assert len(empty_dataset_header().serialize()) == 347


# ---------------------------------------------------------------- strict decoding


def test_truncation_at_every_offset_is_an_error_except_the_pre_index_boundary():
    h = appendix_header()
    data = h.serialize()
    arrays_end = CORE_HEADER_SIZE + sum(a.calculate_size() for a in h.arrays)
    for cut in range(len(data)):
        if cut == arrays_end:
            # headers from before feature indices existed stop here: zero indices
            old = SCDLHeader.deserialize(data[:cut])
            assert old.arrays == h.arrays and old.feature_indices == []
            continue
        with pytest.raises(HeaderSerializationError, match=r"expected|needs at least") as info:
            SCDLHeader.deserialize(data[:cut])
        assert type(info.value) is HeaderSerializationError, cut


@pytest.mark.parametrize("extra", [pytest.param(1, id="1-byte"), pytest.param(3, id="3-bytes")])
def test_partial_feature_index_count_is_an_error(extra):
    h = appendix_header()
    data = h.serialize()
    arrays_end = CORE_HEADER_SIZE + sum(a.calculate_size() for a in h.arrays)
    with pytest.raises(HeaderSerializationError, match="feature index count"):
        SCDLHeader.deserialize(data[: arrays_end + extra])


# ---------------------------------------------------------------- trailer (upstream PR #1424)


def _chunked_appendix(info: ChunkedInfo) -> SCDLHeader:
    h = appendix_header()
    h.backend, h.chunked_info = Backend.CHUNKED_MEMMAP_V0, info
    return h


def test_flag_zero_is_a_flat_header_and_is_not_written_back():
    data = appendix_header().serialize()
    h = SCDLHeader.deserialize(data + b"\x00")  # what upstream's new writer emits for flat archives
    assert h == appendix_header() and h.chunked_info is None and h.unknown_trailing_bytes == 0
    assert h.serialize() == data  # flat archives keep the 0.1.3 bytes


def test_chunked_trailer_bytes_built_from_the_spec():
    flat = appendix_header().serialize()
    h = _chunked_appendix(ChunkedInfo(chunk_size=128, num_chunks=3, total_rows=300))
    data = h.serialize()
    # backend u32 at offset 8 is 2; after the feature indices: flag 1, then >IIQ
    expected = flat[:8] + struct.pack(">I", 2) + flat[12:] + b"\x01" + struct.pack(">IIQ", 128, 3, 300)
    assert data == expected
    assert data[-17:].hex() == "01" "00000080" "00000003" "000000000000012c"
    assert h.calculate_total_size() == len(data)
    back = SCDLHeader.deserialize(data)
    assert back == h and back.is_chunked and back.chunked_info.rows_of(2) == 44
    assert json.loads(back.to_json())["chunked_info"] == {"chunk_size": 128, "num_chunks": 3, "total_rows": 300}


def test_chunked_trailer_truncated_at_every_offset_is_an_error():
    data = _chunked_appendix(ChunkedInfo(100, 3, 300)).serialize()
    for cut in range(len(data) - 16, len(data)):  # the flag is there, the info is not complete
        with pytest.raises(HeaderSerializationError, match="chunked info"):
            SCDLHeader.deserialize(data[:cut])


@pytest.mark.parametrize(("info", "message"), [
    pytest.param((100, 2, 300), "says 2 chunks, but 300 rows in chunks of 100 make 3", id="wrong-count"),
    pytest.param((0, 0, 0), "chunk_size must be at least 1", id="zero-chunk-size"),
])
def test_unsound_chunked_info_is_an_error(info, message):
    data = appendix_header().serialize()
    data = data[:8] + struct.pack(">I", 2) + data[12:] + b"\x01" + struct.pack(">IIQ", *info)
    with pytest.raises(HeaderSerializationError, match=message):
        SCDLHeader.deserialize(data)


def test_backend_and_trailer_must_agree():
    flat = appendix_header().serialize()
    with pytest.raises(HeaderSerializationError, match="MEMMAP_V0 cannot carry chunked info"):
        SCDLHeader.deserialize(flat + b"\x01" + struct.pack(">IIQ", 100, 3, 300))
    chunked_backend = flat[:8] + struct.pack(">I", 2) + flat[12:]
    for tail in (b"", b"\x00"):
        with pytest.raises(HeaderSerializationError, match="CHUNKED_MEMMAP_V0 needs chunked info"):
            SCDLHeader.deserialize(chunked_backend + tail)
    h = appendix_header()
    h.chunked_info = ChunkedInfo(100, 3, 300)  # mutated after construction: caught on serialize
    with pytest.raises(HeaderSerializationError, match="cannot carry"):
        h.serialize()


@pytest.mark.parametrize("tail", [pytest.param(b"\x07", id="unknown-flag"), pytest.param(b"junk" * 10, id="junk"),
                                  pytest.param(b"\x00\x00\x00", id="flag-then-more")])
def test_unknown_trailing_bytes_are_counted_not_parsed(tail):
    data = appendix_header().serialize()
    h = SCDLHeader.deserialize(data + tail)
    assert h == appendix_header()
    assert h.unknown_trailing_bytes == (len(tail) - 1 if tail.startswith(b"\x00") else len(tail))
    assert h.serialize() == data
    chunked = _chunked_appendix(ChunkedInfo(10, 30, 300)).serialize()
    assert SCDLHeader.deserialize(chunked + tail).unknown_trailing_bytes == len(tail)


def test_unknown_trailing_bytes_warn_once_per_file(tmp_path):
    path = tmp_path / "header.sch"
    path.write_bytes(appendix_header().serialize() + b"future")
    with pytest.warns(UserWarning, match=rf"{path}: ignoring 6 trailing byte\(s\)"):
        assert SCDLHeader.load(path) == appendix_header()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SCDLHeader.load(path)  # the same file again: no second warning


def _offsets():
    """Byte offsets of fields in the appendix header."""
    h = appendix_header()
    fi0 = CORE_HEADER_SIZE + sum(a.calculate_size() for a in h.arrays) + 4
    return {"array0_dtype": 16 + 4 + 4 + 8, "array0_has_shape": 36, "fi_count": fi0 - 4,
            "fi0_dtype": fi0 + 4 + 12 + 8, "fi0_files_count": fi0 + 4 + 12 + 8 + 4, "fi0_file0": fi0 + 32}


OFF = _offsets()
CORRUPTIONS = [
    pytest.param(0, b"SCDM", "expected magic b'SCDL', found b'SCDM'", id="bad-magic"),
    pytest.param(0, b"scdl", "expected magic", id="lowercase-magic"),
    pytest.param(7, b"\x00", "endianness byte at offset 7: expected 1 \\(NETWORK\\), found 0", id="endianness-0"),
    pytest.param(7, b"\x02", "endianness .* found 2", id="endianness-2"),
    pytest.param(8, b"\x00\x00\x00\x03", "backend at offset 8: expected one of \\[1, 2, 1001\\], found 3", id="backend"),
    pytest.param(8, b"\x00\x00\x00\x02", "backend at offset 8 and the trailer: .*needs chunked info",
                 id="chunked-backend-without-info"),
    pytest.param(12, b"\xff\xff\xff\xff", "array count at offset 12 is 4294967295", id="absurd-array-count"),
    pytest.param(16, b"\xff\xff\xff\xff", "byte length of name of array 0 .* 4294967295", id="absurd-name-length"),
    pytest.param(20, b"\xff\xfe", "not valid UTF-8", id="bad-utf8-name"),
    pytest.param(OFF["array0_dtype"], b"\x00\x00\x00\x00", "unknown dtype code 0", id="dtype-0"),
    pytest.param(OFF["array0_dtype"], b"\x00\x00\x00\x0a", "unknown dtype code 10", id="dtype-10"),
    pytest.param(OFF["array0_dtype"], b"\xff\xff\xff\xff", "unknown dtype code 4294967295", id="dtype-max"),
    pytest.param(OFF["array0_has_shape"], b"\x02", "has_shape of array 0 at offset 36: expected 0 or 1, found 2",
                 id="has-shape-2"),
    pytest.param(OFF["array0_has_shape"], b"\x01\xff\xff\xff\xff", "ndims of array 0 at offset 37 is 4294967295",
                 id="absurd-ndims"),
    pytest.param(OFF["array0_has_shape"], b"\x01", "array 'DATA' shape dimension 2 must be positive",
                 id="has-shape-reads-zero-dim"),
    pytest.param(OFF["fi_count"], b"\x00\x00\x01\x00", "feature index count .* is 256", id="absurd-index-count"),
    pytest.param(OFF["fi0_dtype"], b"\x00\x00\x00\x63", "dtype of feature index 0 .* unknown dtype code 99",
                 id="index-dtype"),
    pytest.param(OFF["fi0_files_count"], b"\x7f\xff\xff\xff", "files_count of feature index 0", id="absurd-files"),
    pytest.param(OFF["fi0_file0"], b"\x00\x00\x10\x00", "byte length of file path 0 of feature index 0",
                 id="file-path-past-end"),
]


@pytest.mark.parametrize(("offset", "patch", "message"), CORRUPTIONS)
def test_corrupted_fields_raise(offset, patch, message):
    data = bytearray(appendix_header().serialize())
    data[offset : offset + len(patch)] = patch
    with pytest.raises(HeaderSerializationError, match=message):
        SCDLHeader.deserialize(bytes(data))


def test_empty_name_in_bytes_is_rejected():
    data = appendix_header().serialize()
    data = data[:16] + b"\x00\x00\x00\x00" + data[24:]  # "DATA" -> ""
    with pytest.raises(HeaderSerializationError, match="array 0 at offset 16: array name cannot be empty"):
        SCDLHeader.deserialize(data)


def test_zero_shape_dimension_in_bytes_is_rejected():
    data = bytearray(shaped_header().serialize())
    # first array "X": name 4+1, length 8, dtype 4, has_shape 1, ndims 4, then dims
    dim0 = CORE_HEADER_SIZE + 5 + 8 + 4 + 1 + 4
    assert data[dim0 : dim0 + 4] == b"\x00\x00\x00\x02"
    data[dim0 : dim0 + 4] = b"\x00\x00\x00\x00"
    with pytest.raises(HeaderSerializationError, match="shape dimension 0 must be positive"):
        SCDLHeader.deserialize(bytes(data))


def test_random_corruption_only_ever_raises_header_errors():
    rng = random.Random(1234)
    good = many_blocks_header().serialize()
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            SCDLHeader.deserialize(bytes(data))
            outcomes["ok"] += 1
        except HeaderSerializationError:
            outcomes["error"] += 1
    assert outcomes["error"] > 1000 and outcomes["ok"] > 0
    for _ in range(500):
        junk = b"SCDL\x00\x01\x00\x01\x00\x00\x00\x01" + rng.randbytes(rng.randrange(200))
        with pytest.raises(HeaderSerializationError):
            SCDLHeader.deserialize(junk)


@pytest.mark.parametrize("data", [pytest.param("SCDL" * 8, id="str"), pytest.param(17, id="int"),
                                  pytest.param(None, id="none")])
def test_non_bytes_input_raises(data):
    with pytest.raises(HeaderSerializationError, match="expected a bytes-like object"):
        SCDLHeader.deserialize(data)


def test_reader_accepts_any_schema_version_but_writer_refuses_major_above_0():
    data = bytearray(appendix_header().serialize())
    data[4:7] = b"\x01\x02\x03"
    h = SCDLHeader.deserialize(bytes(data))
    assert str(h.version) == "1.2.3"
    with pytest.raises(HeaderSerializationError, match="unsupported schema version 1.2.3"):
        h.serialize()


def test_errors_are_archive_and_value_errors():
    with pytest.raises(ValueError, match="magic"):
        SCDLHeader.deserialize(b"NOPE" + bytes(20))
    assert issubclass(HeaderSerializationError, ArchiveError)


# ---------------------------------------------------------------- validation


INVALID_ARRAYS = [
    pytest.param(lambda: ArrayInfo("", 1, D.UINT8_ARRAY), "name cannot be empty", id="empty-name"),
    pytest.param(lambda: ArrayInfo("   ", 1, D.UINT8_ARRAY), "name cannot be empty", id="blank-name"),
    pytest.param(lambda: ArrayInfo("n" * 1025, 1, D.UINT8_ARRAY), "1025 UTF-8 bytes, at most 1024", id="long-name"),
    pytest.param(lambda: ArrayInfo("é" * 513, 1, D.UINT8_ARRAY), "1026 UTF-8 bytes", id="long-utf8-name"),
    pytest.param(lambda: ArrayInfo("a", -1, D.UINT8_ARRAY), "length cannot be negative: -1", id="negative-length"),
    pytest.param(lambda: ArrayInfo("a", 2**64, D.UINT8_ARRAY), "length must be at most", id="length-overflow"),
    pytest.param(lambda: ArrayInfo("a", 1, D.UINT8_ARRAY, ()), "shape cannot be empty", id="empty-shape"),
    pytest.param(lambda: ArrayInfo("a", 1, D.UINT8_ARRAY, (3, 0)), "dimension 1 must be positive", id="zero-dim"),
    pytest.param(lambda: ArrayInfo("a", 1, D.UINT8_ARRAY, (-2,)), "dimension 0 cannot be negative", id="neg-dim"),
    pytest.param(lambda: FeatureIndexInfo("", 1, D.STRING_ARRAY), "name cannot be empty", id="index-empty-name"),
    pytest.param(lambda: FeatureIndexInfo("f", -5, D.STRING_ARRAY), "negative", id="index-negative-length"),
    pytest.param(lambda: FeatureIndexInfo("f", 1, D.STRING_ARRAY, [], ()), "shape cannot be empty",
                 id="index-empty-shape"),
    pytest.param(lambda: FeatureIndexInfo("f", 1, D.STRING_ARRAY, ["ok", " "]), "file path 1 cannot be empty",
                 id="index-empty-file"),
]


@pytest.mark.parametrize(("make", "message"), INVALID_ARRAYS)
def test_invalid_descriptors_are_rejected_like_upstream(make, message):
    with pytest.raises(HeaderSerializationError, match=message):
        make()


UPSTREAM_REJECTS = [
    pytest.param("", 1, None, id="empty-name"),
    pytest.param("  ", 1, None, id="blank-name"),
    pytest.param("n" * 1025, 1, None, id="long-name"),
    pytest.param("a", -1, None, id="negative-length"),
    pytest.param("a", 1, (), id="empty-shape"),
    pytest.param("a", 1, (3, 0), id="zero-dim"),
]


@pytest.mark.parametrize(("name", "length", "shape"), UPSTREAM_REJECTS)
def test_upstream_rejects_the_same_arrays(name, length, shape):
    with pytest.raises(UpstreamHeaderError):
        up.SCDLHeader(arrays=[up.ArrayInfo(name, length, UpstreamDType.UINT8_ARRAY, shape)]).serialize()
    with pytest.raises(HeaderSerializationError):
        ArrayInfo(name, length, D.UINT8_ARRAY, shape)


def test_descriptor_coercion():
    a = ArrayInfo("a", np.int64(7), 6, [2, np.uint32(3)])
    assert (a.length, a.dtype, a.shape) == (7, D.FLOAT32_ARRAY, (2, 3))
    assert type(a.length) is int and isinstance(a.dtype, ArrayDType)
    with pytest.raises(HeaderSerializationError, match="unknown dtype code 42"):
        ArrayInfo("a", 1, 42)
    with pytest.raises(HeaderSerializationError, match="length must be an integer, got float"):
        ArrayInfo("a", 1.5, D.UINT8_ARRAY)
    with pytest.raises(HeaderSerializationError, match="must be a list of str, not a string"):
        FeatureIndexInfo("f", 1, D.STRING_ARRAY, "var_features/labels.json")


def test_mutation_after_construction_is_caught_on_serialize():
    h = appendix_header()
    h.arrays[1].length = -3
    with pytest.raises(HeaderSerializationError, match="'ROWPTR' length cannot be negative"):
        h.serialize()


HEADER_CONFLICTS = [
    pytest.param([ArrayInfo("A", 1, D.UINT8_ARRAY), ArrayInfo("A", 2, D.UINT8_ARRAY)], [],
                 "duplicate array name: 'A'", id="duplicate-arrays"),
    pytest.param([], [FeatureIndexInfo("F", 1, D.STRING_ARRAY), FeatureIndexInfo("F", 1, D.STRING_ARRAY)],
                 "duplicate feature index name: 'F'", id="duplicate-indices"),
    pytest.param([ArrayInfo("X", 1, D.UINT8_ARRAY)], [FeatureIndexInfo("X", 1, D.STRING_ARRAY)],
                 "name used by an array and a feature index: 'X'", id="cross-conflict"),
]


@pytest.mark.parametrize(("arrays", "indices", "message"), HEADER_CONFLICTS)
def test_header_validation_rejects_conflicts_like_upstream(arrays, indices, message):
    h = SCDLHeader(arrays=arrays, feature_indices=indices)
    with pytest.raises(HeaderSerializationError, match=message):
        h.serialize()
    with pytest.raises(UpstreamHeaderError):
        to_upstream(h).serialize()


def test_header_validation_rejects_wrong_item_types_and_versions():
    with pytest.raises(HeaderSerializationError, match="expected ArrayInfo in the array list, got FeatureIndexInfo"):
        SCDLHeader(arrays=[FeatureIndexInfo("f", 1, D.STRING_ARRAY)]).validate()
    with pytest.raises(HeaderSerializationError, match="version minor must be at most 255"):
        SCDLVersion(0, 256, 0)
    with pytest.raises(HeaderSerializationError, match="unknown backend 7"):
        SCDLHeader(backend=7)


# ---------------------------------------------------------------- API surface


def test_version():
    assert str(CURRENT_SCDL_VERSION) == "0.1.0"
    assert CURRENT_SCDL_VERSION == SCDLVersion(0, 1, 0)
    with pytest.raises(AttributeError):
        CURRENT_SCDL_VERSION.major = 1  # type: ignore[misc]
    assert SCDLHeader().version == CURRENT_SCDL_VERSION
    assert SCDLHeader(version=UpstreamVersion(0, 0, 2)).version == SCDLVersion(0, 0, 2)
    assert SCDLHeader.CORE_HEADER_SIZE == 16 and len(SCDLHeader().serialize()) == 20


def test_add_get_remove():
    h = SCDLHeader()
    a, f = ArrayInfo("DATA", 3, D.FLOAT32_ARRAY), FeatureIndexInfo("var_features", 3, D.STRING_ARRAY)
    h.add_array(a)
    h.add_feature_index(f)
    assert h.get_array("DATA") is a and h.get_array("nope") is None
    assert h.get_feature_index("var_features") is f and h.get_feature_index("DATA") is None
    assert h.remove_array("DATA") is True and h.remove_array("DATA") is False and h.arrays == []
    assert h.remove_feature_index("var_features") is True and h.feature_indices == []
    assert h.remove_feature_index("var_features") is False


def test_constructor_copies_lists():
    arrays = [ArrayInfo("A", 1, D.UINT8_ARRAY)]
    h = SCDLHeader(arrays=arrays)
    h.add_array(ArrayInfo("B", 1, D.UINT8_ARRAY))
    assert len(arrays) == 1


def test_build_archive_header():
    h = build_archive_header(
        {FileNames.COLPTR: np.dtype("uint32"), "data.npy": np.float16, "row_ptr.npy": D.UINT64_ARRAY,
         "neighbor_values.npy": "float32"},
        {"col_ptr.npy": 5, FileNames.DATA: np.int64(5), "row_ptr.npy": 3, "neighbor_values.npy": 9},
        [],
    )
    assert [(a.name, a.length, a.dtype, a.shape) for a in h.arrays] == [
        ("DATA", 5, D.FLOAT16_ARRAY, None), ("ROWPTR", 3, D.UINT64_ARRAY, None), ("COLPTR", 5, D.UINT32_ARRAY, None)
    ]
    assert h.version == CURRENT_SCDL_VERSION and h.backend is Backend.MEMMAP_V0 and h.feature_indices == []


@pytest.mark.parametrize(
    ("dtypes", "message"),
    [
        pytest.param({"data.npy": "float32", "row_ptr.npy": "uint64"}, "length for col_ptr.npy", id="missing"),
        pytest.param({"data.npy": "float32", "row_ptr.npy": "int64", "col_ptr.npy": "uint32"},
                     "row_ptr.npy: dtype 'int64' cannot be stored", id="signed"),
    ],
)
def test_build_archive_header_errors(dtypes, message):
    with pytest.raises(HeaderSerializationError, match=message):
        build_archive_header(dtypes, {"data.npy": 1, "row_ptr.npy": 2, "col_ptr.npy": 1}, [])


@pytest.mark.parametrize(
    ("n_blocks", "parquets"),
    [
        pytest.param(0, [], id="0"),
        pytest.param(2, ["dataframe_0.parquet", "dataframe_1.parquet"], id="2"),
        pytest.param(10, [f"dataframe_{k:02d}.parquet" for k in range(10)], id="10"),
        pytest.param(100, [f"dataframe_{k:03d}.parquet" for k in range(100)], id="100"),
    ],
)
def test_feature_index_info(n_blocks, parquets):
    fi = feature_index_info("var_features", 350, n_blocks)
    assert (fi.name, fi.length, fi.dtype, fi.shape) == ("var_features", 350, D.STRING_ARRAY, None)
    head = ["var_features/cumulative_sum_index.npy", "var_features/labels.json", "var_features/version.npy"]
    assert fi.index_files == head + [f"var_features/{p}" for p in parquets]


def test_feature_index_info_wheel_labels():
    fi = feature_index_info("features", 7, 9, labels_file="labels.npy")
    assert fi.index_files[1] == "features/labels.npy" and fi.index_files[-1] == "features/dataframe_8.parquet"


# ---------------------------------------------------------------- files


def test_save_load(tmp_path):
    path = tmp_path / "header.sch"
    h = appendix_header()
    h.save(path)
    assert path.read_bytes() == h.serialize()
    assert SCDLHeader.load(path) == h
    assert SCDLHeader.load(str(path)) == h
    assert content(up.SCDLHeader.load(str(path))) == content(h)
    assert os.listdir(tmp_path) == ["header.sch"]  # no temp file left behind


def test_save_replaces_and_respects_umask(tmp_path):
    path = tmp_path / "header.sch"
    path.write_bytes(b"old contents that are longer than a header" * 20)
    old = os.umask(0o022)
    try:
        SCDLHeader().save(path)
    finally:
        os.umask(old)
    assert path.read_bytes() == SCDLHeader().serialize()
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_invalid_header_leaves_file_untouched(tmp_path):
    path = tmp_path / "header.sch"
    path.write_bytes(b"previous")
    bad = SCDLHeader(arrays=[ArrayInfo("A", 1, D.UINT8_ARRAY), ArrayInfo("A", 1, D.UINT8_ARRAY)])
    with pytest.raises(HeaderSerializationError, match="duplicate array name"):
        bad.save(path)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["header.sch"]


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(HeaderSerializationError, match="failed to save header"):
        SCDLHeader().save(tmp_path / "missing" / "header.sch")


def test_load_errors(tmp_path):
    with pytest.raises(HeaderSerializationError, match="failed to read header .*missing.sch"):
        SCDLHeader.load(tmp_path / "missing.sch")
    (tmp_path / "bad.sch").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(HeaderSerializationError, match="invalid header .*bad.sch: not an SCDL header"):
        SCDLHeader.load(tmp_path / "bad.sch")
