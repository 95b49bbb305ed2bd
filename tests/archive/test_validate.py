"""validate_archive: a valid archive gives [], each kind of damage gives its own problem line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu.archive import (
    ArrayDType,
    SCDLHeader,
    VariableFeatureIndex,
    open_arrays,
    validate_archive,
)
from scdl_gpu.archive._atomic import _host
from scdl_gpu.archive._checksums import MANIFEST_FILE, write_manifest
from scdl_gpu.archive._constants import FileNames
from scdl_gpu.archive._reader import load_feature_index
from scdl_gpu.archive._validate import validation_report, write_checksums
from scdl_gpu.errors import ArchiveError
from scdl_gpu.convert import convert_h5ad
from tests.conftest import BUNDLED, make_adata, random_csr

N_ROWS, N_GENES = 40, 300


def _convert_bundled(path, out):
    # pbmc_small_csc holds float64 values; keep them exact so conversion does not warn.
    return convert_h5ad(path, out, use_X_not_raw=True, data_dtype="float64" if "pbmc" in path.name else None)


@pytest.fixture(scope="module")
def real_archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return {p.stem: _convert_bundled(p, root / p.stem) for p in sorted(BUNDLED.glob("*.h5ad"))}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A synthetic archive: 40 cells x 300 genes (uint16 columns), float32 values, an empty row."""
    root = tmp_path_factory.mktemp("synthetic")
    m = random_csr(N_ROWS, N_GENES, density=0.1, empty_rows=(7,))
    h5ad = root / "in.h5ad"
    make_adata(m).write_h5ad(h5ad)
    return convert_h5ad(h5ad, root / "arch", use_X_not_raw=True)


@pytest.fixture
def archive(pristine, tmp_path):
    """A fresh copy of the synthetic archive to damage, without its checksums (as upstream writes
    archives): what the structural checks find on their own."""
    out = shutil.copytree(pristine, tmp_path / "arch")
    (out / MANIFEST_FILE).unlink()
    return out


@pytest.fixture
def checked(pristine, tmp_path):
    """A fresh copy of the synthetic archive with the checksums its writer recorded."""
    return shutil.copytree(pristine, tmp_path / "checked")


def _rw(archive, name, dtype):
    """The raw array in ``name`` as a writable in-memory copy, and a function that writes it back."""
    path = archive / name
    arr = np.fromfile(path, dtype=dtype)
    return arr, lambda: arr.tofile(path)


def _dtype(archive, name):
    return open_arrays(archive).dtypes[name]


def _one(problems, *fragments):
    """The single problem line that contains every fragment."""
    hits = [p for p in problems if all(f in p for f in fragments)]
    assert len(hits) == 1, f"{fragments} not reported once in {problems}"
    return hits[0]


# -- valid archives -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [p.stem for p in sorted(BUNDLED.glob("*.h5ad"))])
def test_bundled_real_archives_are_valid(real_archives, name):
    assert validate_archive(real_archives[name]) == []
    assert validate_archive(real_archives[name], chunk=3) == []


def test_synthetic_archive_is_valid(archive):
    assert validate_archive(archive) == []
    assert validate_archive(str(archive), chunk=1) == []


def test_zero_stored_values_is_valid(tmp_path, write_h5ad):
    out = convert_h5ad(write_h5ad(make_adata(sp.csr_matrix((5, 10), dtype=np.float32))), tmp_path / "a", use_X_not_raw=True)
    assert open_arrays(out).nnz == 0
    assert validate_archive(out) == []


def test_upstream_one_byte_placeholders_for_empty_arrays(tmp_path, write_h5ad):
    """Upstream writes 1-byte files for empty arrays; with a uint8 column dtype that is one whole
    item, which must still read as empty (open_arrays used to reject it)."""
    out = convert_h5ad(write_h5ad(make_adata(sp.csr_matrix((5, 10), dtype=np.float32))), tmp_path / "a", use_X_not_raw=True)
    assert _dtype(out, FileNames.COLPTR.value) == "uint8"
    for name in (FileNames.DATA.value, FileNames.COLPTR.value):
        (out / name).write_bytes(b"\0")
    (out / MANIFEST_FILE).unlink()  # an upstream archive: no checksums
    assert validate_archive(out) == []
    arrays = open_arrays(out)
    assert arrays.nnz == 0 and len(arrays.col_ptr) == 0


def test_integer_data_is_valid(tmp_path, write_h5ad):
    out = convert_h5ad(write_h5ad(make_adata(random_csr(20, 30))), tmp_path / "a", use_X_not_raw=True, data_dtype="uint8")
    assert validate_archive(out) == []


def test_headerless_legacy_archive_is_valid(archive, tmp_path):
    """No header.sch: the pre-header default dtypes (float32 / uint32 / uint64) apply, no note."""
    arrays = open_arrays(archive)
    legacy = shutil.copytree(archive, tmp_path / "legacy")
    (legacy / "header.sch").unlink()
    np.asarray(arrays.col_ptr, np.uint32).tofile(legacy / "col_ptr.npy")
    np.asarray(arrays.row_ptr, np.uint64).tofile(legacy / "row_ptr.npy")
    assert validate_archive(legacy) == []
    shutil.move(legacy / "var_features", legacy / "features")  # oldest layout: features/ is the var index
    assert validate_archive(legacy) == []


def test_headerless_archive_with_downcast_arrays_is_reported(archive):
    """Without a header, the uint16 columns are read as uint32: their sizes no longer agree."""
    (archive / "header.sch").unlink()
    assert validate_archive(archive) != []


def test_missing_obs_index_is_fine(archive):
    shutil.rmtree(archive / "obs_features")
    assert validate_archive(archive) == []


def test_missing_var_index_skips_the_column_check(archive):
    shutil.rmtree(archive / "var_features")
    col, save = _rw(archive, "col_ptr.npy", np.uint16)
    rp = np.fromfile(archive / "row_ptr.npy", dtype=_dtype(archive, "row_ptr.npy"))
    col[int(rp[1]) - 1] = 5000  # the last of row 0: its columns still increase
    save()
    assert validate_archive(archive) == []


# -- missing things -------------------------------------------------------------------------------
def test_missing_directory(tmp_path):
    problems = validate_archive(tmp_path / "nothing")
    assert len(problems) == 1 and "does not exist" in problems[0]
    (tmp_path / "file").write_text("x")
    assert len(validate_archive(tmp_path / "file")) == 1


@pytest.mark.parametrize("name", ["data.npy", "col_ptr.npy", "row_ptr.npy", "metadata.json", "version.json"])
def test_missing_file(archive, name):
    (archive / name).unlink()
    _one(validate_archive(archive), name, "missing")


def test_missing_var_parquet(archive):
    (archive / "var_features" / "dataframe_0.parquet").unlink()
    _one(validate_archive(archive), "var_features", "describes 1 blocks")


# -- array damage ---------------------------------------------------------------------------------
def test_truncated_data_by_one_value(archive):
    data = archive / "data.npy"
    data.write_bytes(data.read_bytes()[:-4])
    problems = validate_archive(archive)
    _one(problems, "data.npy holds", "col_ptr.npy holds", "equally long")
    _one(problems, "row_ptr.npy ends at", "data.npy holds")


def test_truncated_data_mid_value(archive):
    data = archive / "data.npy"
    data.write_bytes(data.read_bytes()[:-3])
    _one(validate_archive(archive), "data.npy is", "not a multiple of the 4-byte float32")


def test_column_index_not_below_gene_count(archive):
    col, save = _rw(archive, "col_ptr.npy", np.uint16)
    col[[3, 10]] = [N_GENES, N_GENES + 7]
    save()
    msg = _one(validate_archive(archive), "col_ptr.npy holds 2 column index(es)", f"the {N_GENES} genes of var block 0")
    assert f"largest {N_GENES + 7}" in msg and "first at value position 3" in msg


def test_row_ptr_decreasing(archive):
    dt = _dtype(archive, "row_ptr.npy")
    rp, save = _rw(archive, "row_ptr.npy", dt)
    rp[10] = rp[-1]
    save()
    msg = _one(validate_archive(archive), "row_ptr.npy decreases")
    assert "first at entry 11" in msg


def test_row_ptr_decreasing_across_a_chunk_boundary(archive):
    dt = _dtype(archive, "row_ptr.npy")
    rp, save = _rw(archive, "row_ptr.npy", dt)
    rp[3] = rp[-1]  # rp[4] < rp[3]: the decrease straddles chunks [0, 4) and [4, 8)
    save()
    assert "first at entry 4" in _one(validate_archive(archive, chunk=4), "row_ptr.npy decreases")
    assert "first at entry 4" in _one(validate_archive(archive, chunk=1), "row_ptr.npy decreases")


def test_row_ptr_not_ending_at_nnz(archive):
    dt = _dtype(archive, "row_ptr.npy")
    rp, save = _rw(archive, "row_ptr.npy", dt)
    nnz = int(rp[-1])
    rp[-1] -= 1
    save()
    _one(validate_archive(archive), f"row_ptr.npy ends at {nnz - 1} but data.npy holds {nnz} values")


def test_row_ptr_not_starting_at_zero(archive):
    dt = _dtype(archive, "row_ptr.npy")
    rp, save = _rw(archive, "row_ptr.npy", dt)
    rp[0] = 1
    save()
    _one(validate_archive(archive), "row_ptr.npy starts at 1")


def test_nan_and_inf_in_float_data(archive):
    data, save = _rw(archive, "data.npy", np.float32)
    data[[12, 30]] = np.nan
    data[50] = -np.inf
    save()
    for chunk in (1 << 24, 5):
        msg = _one(validate_archive(archive, chunk=chunk), "data.npy holds 2 NaN and 1 infinite")
        assert "first at value position 12" in msg


# -- header, metadata, feature indices --------------------------------------------------------------
def test_garbage_header(archive):
    (archive / "header.sch").write_bytes(b"\x00garbage" * 9)
    (archive / "version.json").write_text("[")
    (archive / "obs_features" / "dataframe_0.parquet").unlink()
    problems = validate_archive(archive)
    _one(problems, "header.sch is corrupted")
    # The checks that do not need the header's dtypes still run.
    _one(problems, "version.json is not valid JSON")
    _one(problems, "obs_features", "describes 1 blocks")
    assert len(problems) == 3


def test_header_lengths_disagree_with_files(archive):
    h = SCDLHeader.load(str(archive / "header.sch"))
    nnz = h.get_array("DATA").length
    h.get_array("DATA").length += 5
    h.get_array("ROWPTR").length = 2
    h.save(str(archive / "header.sch"))
    problems = validate_archive(archive)
    _one(problems, f"says DATA has {nnz + 5} entries but data.npy holds {nnz}")
    _one(problems, f"says ROWPTR has 2 entries but row_ptr.npy holds {N_ROWS + 1}")
    assert len(problems) == 2


def test_header_dtype_disagrees_with_files(archive):
    h = SCDLHeader.load(str(archive / "header.sch"))
    h.get_array("DATA").dtype = ArrayDType.FLOAT64_ARRAY
    h.save(str(archive / "header.sch"))
    problems = validate_archive(archive)
    assert problems and all("data.npy" in p for p in problems)


def test_header_feature_index_length(archive):
    h = SCDLHeader.load(str(archive / "header.sch"))
    h.get_feature_index("obs_features").length = 7
    h.save(str(archive / "header.sch"))
    _one(validate_archive(archive), "feature index obs_features covers 7 rows but obs_features/ covers 40")


def test_metadata_num_rows_wrong(archive):
    (archive / "metadata.json").write_text(json.dumps({"num_rows": N_ROWS + 1}))
    _one(validate_archive(archive), f"num_rows is {N_ROWS + 1} but row_ptr.npy describes {N_ROWS} rows")


@pytest.mark.parametrize("text", ["{not json", '{"rows": 40}', "[40]"])
def test_metadata_unusable(archive, text):
    (archive / "metadata.json").write_text(text)
    _one(validate_archive(archive), "metadata.json")


def test_version_not_a_string(archive):
    (archive / "version.json").write_text("13")
    _one(validate_archive(archive), "version.json holds 13")


def test_var_index_rows_differ_from_row_count(archive):
    np.save(archive / "var_features" / "cumulative_sum_index.npy", np.array([-1, N_ROWS + 1], dtype=np.int64))
    problems = validate_archive(archive)
    _one(problems, "var_features covers 41 rows but row_ptr.npy describes 40 rows")
    _one(problems, "feature index var_features covers 40 rows but var_features/ covers 41")


def test_corrupted_obs_parquet(archive):
    (archive / "obs_features" / "dataframe_0.parquet").write_bytes(b"PAR1 not really")
    _one(validate_archive(archive), "obs_features", "dataframe_0.parquet")


def test_everything_garbage_never_raises(archive):
    rng = np.random.default_rng(0)
    for f in sorted(p for p in archive.rglob("*") if p.is_file()):
        f.write_bytes(rng.bytes(int(rng.integers(0, 50))))
    problems = validate_archive(archive)
    assert problems and all(isinstance(p, str) for p in problems)


# -- several var blocks -------------------------------------------------------------------------------
@pytest.fixture
def two_blocks(tmp_path, write_h5ad):
    """Rows 0-19 use 300 genes, rows 20-39 a 20-gene var block (their columns stay below 20)."""
    m = random_csr(N_ROWS, N_GENES, density=0.2).tolil()
    m[20:, 20:] = 0
    m = sp.csr_matrix(m)
    m.eliminate_zeros()
    out = convert_h5ad(write_h5ad(make_adata(m)), tmp_path / "a", use_X_not_raw=True)
    var = load_feature_index(out, FileNames.VAR_FEATURES)
    features = var.lookup(0)[0]
    columns = list(var._feature_arr[0])
    two = VariableFeatureIndex()
    two.append_features(20, dict(zip(columns, features)), "a")
    two.append_features(20, {c: f[:20] for c, f in zip(columns, features)}, "b")
    shutil.rmtree(out / "var_features")
    two.save(out / "var_features")
    write_manifest(out)
    return out


def test_column_check_is_per_var_block(two_blocks):
    assert validate_archive(two_blocks) == []
    rp = np.fromfile(two_blocks / "row_ptr.npy", dtype=_dtype(two_blocks, "row_ptr.npy"))
    col, save = _rw(two_blocks, "col_ptr.npy", np.uint16)
    pos = int(rp[25])
    col[pos] = 25  # fine for block 0's 300 genes, out of range for block 1's 20
    save()
    msg = _one(validate_archive(two_blocks, chunk=7), "the 20 genes of var block 1 (rows 20 to 39)")
    assert f"first at value position {pos}" in msg


def test_column_check_without_valid_row_ptr_uses_widest_block(two_blocks):
    dt = _dtype(two_blocks, "row_ptr.npy")
    rp, save_rp = _rw(two_blocks, "row_ptr.npy", dt)
    rp[0] = 1
    save_rp()
    col, save = _rw(two_blocks, "col_ptr.npy", np.uint16)
    col[int(rp[30])] = 25  # no longer attributable to a block: within the widest block's 300
    col[1] = N_GENES
    save()
    problems = validate_archive(two_blocks)
    _one(problems, "row_ptr.npy starts at 1")
    _one(problems, "col_ptr.npy holds 1 column index(es)", "300 genes of the widest var block")


# -- neighbors ----------------------------------------------------------------------------------------
@pytest.fixture
def with_neighbors(tmp_path, write_h5ad):
    n = 30
    graph = sp.random(n, n, density=0.2, format="csr", random_state=np.random.default_rng(1), dtype=np.float32)
    out = convert_h5ad(
        write_h5ad(make_adata(random_csr(n, 12), obsp={"knn": graph})),
        tmp_path / "a",
        use_X_not_raw=True,
        load_neighbors=True,
        neighbor_key="knn",
    )
    assert (out / "neighbor_indices.npy").stat().st_size == 4 * graph.nnz
    return out


def test_neighbors_valid(with_neighbors):
    assert validate_archive(with_neighbors) == []
    assert validate_archive(with_neighbors, chunk=2) == []


def test_neighbor_index_out_of_range(with_neighbors):
    idx, save = _rw(with_neighbors, "neighbor_indices.npy", np.uint32)
    idx[4] = 30
    idx[9] = 1000
    save()
    msg = _one(validate_archive(with_neighbors, chunk=3), "neighbor_indices.npy holds 2 neighbor index(es) not below the 30 rows")
    assert "largest 1000" in msg and "first at position 4" in msg


def test_neighbor_pointers_damaged(with_neighbors):
    ptr, save = _rw(with_neighbors, "neighbor_indptr.npy", np.uint64)
    n_edges = int(ptr[-1])
    ptr[5] = ptr[-1] + 1
    ptr[-1] -= 1
    save()
    problems = validate_archive(with_neighbors)
    _one(problems, "neighbor_indptr.npy decreases")
    _one(problems, f"neighbor_indptr.npy ends at {n_edges - 1} but neighbor_indices.npy holds {n_edges}")


def test_neighbor_pointer_length(with_neighbors):
    ptr = with_neighbors / "neighbor_indptr.npy"
    ptr.write_bytes(ptr.read_bytes()[:-8])
    _one(validate_archive(with_neighbors), "neighbor_indptr.npy has 30 entries but the archive has 30 rows")


def test_neighbor_values_and_incomplete_arrays(with_neighbors):
    vals, save = _rw(with_neighbors, "neighbor_values.npy", np.float32)
    vals[0] = np.nan
    save()
    _one(validate_archive(with_neighbors), "neighbor_values.npy holds 1 NaN or infinite")
    vals[:-1].tofile(with_neighbors / "neighbor_values.npy")
    _one(validate_archive(with_neighbors), "neighbor_values.npy holds", "equally long")
    (with_neighbors / "neighbor_values.npy").unlink()
    _one(validate_archive(with_neighbors), "incomplete", "neighbor_values.npy missing")


def test_bad_chunk_argument(archive):
    with pytest.raises(ValueError, match="chunk"):
        validate_archive(archive, chunk=0)


# -- checksums ------------------------------------------------------------------------------------
def _flip(path, pos=None, bit=0x01):
    b = bytearray(path.read_bytes())
    pos = len(b) // 2 if pos is None else pos
    b[pos] ^= bit
    path.write_bytes(bytes(b))


@pytest.mark.parametrize(
    "rel",
    [
        "data.npy",
        "col_ptr.npy",
        "row_ptr.npy",
        "header.sch",
        "metadata.json",
        "scdl_gpu.json",
        "var_features/dataframe_0.parquet",
        "obs_features/dataframe_0.parquet",
        "var_features/names_0.arrow",
        "obs_features/names_0.arrow",
        "var_features/labels.json",
        "obs_features/labels.npy",
        "var_features/cumulative_sum_index.npy",
    ],
)
def test_flipped_byte_is_named(checked, rel):
    report = validation_report(checked)
    assert report.problems == [] and report.notes == [] and report.checksums_verified
    _flip(checked / rel)
    _one(validation_report(checked).problems, str(checked / rel), "does not match its recorded crc32c checksum")


def test_quick_skips_contents_but_compares_names_and_sizes(checked):
    _flip(checked / "data.npy", pos=0)  # lowest mantissa byte of value 0: still a finite float
    report = validation_report(checked, quick=True)
    assert report.problems == [] and not report.checksums_verified
    assert len(report.notes) == 1 and "Quick check" in report.notes[0]
    _one(validate_archive(checked), "data.npy", "checksum")
    # A deleted names sidecar leaves a well-formed archive whose var_names() is None: only the list shows it.
    (checked / "var_features" / "names_0.arrow").unlink()
    (checked / "extra.bin").write_bytes(b"x")
    problems = validate_archive(checked, quick=True)
    assert len(problems) == 2, problems
    _one(problems, "names_0.arrow is missing")
    _one(problems, "extra.bin is not listed")


def test_archive_without_checksums_validates_with_a_note(archive):
    report = validation_report(archive)
    assert report.problems == [] and not report.checksums_verified
    assert len(report.notes) == 1 and "carries no checksums" in report.notes[0] and "--write-checksums" in report.notes[0]
    _flip(archive / "data.npy", pos=0)
    assert validate_archive(archive) == []  # what checksums are for


def test_upstream_archive_validates_then_gets_checksums(tmp_path, write_h5ad):
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset as Theirs

    theirs = tmp_path / "theirs"
    Theirs(str(theirs), h5ad_path=str(write_h5ad(make_adata(random_csr(20, 30)))), use_X_not_raw=True)
    report = validation_report(theirs)
    assert report.problems == [] and "carries no checksums" in report.notes[0]
    assert write_checksums(theirs) == theirs / MANIFEST_FILE
    report = validation_report(theirs)
    assert report.problems == [] and report.notes == [] and report.checksums_verified


def test_write_checksums_refuses_a_damaged_archive(archive, checked):
    col = archive / "col_ptr.npy"
    col.write_bytes(col.read_bytes()[:-1])
    with pytest.raises(ArchiveError, match="col_ptr.npy"):
        write_checksums(archive)
    assert not (archive / MANIFEST_FILE).exists()
    _flip(checked / "data.npy", pos=0)  # a manifest that no longer matches is not silently replaced
    before = (checked / MANIFEST_FILE).read_bytes()
    with pytest.raises(ArchiveError, match="data.npy"):
        write_checksums(checked)
    assert (checked / MANIFEST_FILE).read_bytes() == before


# -- files the loader reads lazily ------------------------------------------------------------------
def _column_chunk_end(path, column):
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(0)
    names = [meta.column(i).path_in_schema for i in range(meta.num_columns)]
    cc = meta.column(names.index(column))
    return (cc.dictionary_page_offset or cc.data_page_offset) + cc.total_compressed_size


def test_parquet_page_checksums_catch_a_changed_value(archive):
    """Without a manifest the tables' own page CRCs still catch a flipped value byte."""
    import pyarrow.parquet as pq

    path = archive / "obs_features" / "dataframe_0.parquet"
    good = path.read_bytes()
    before = pq.read_table(path)
    end = _column_chunk_end(path, "score")
    for pos in range(end - 1, end - 64, -1):  # the first flip near the chunk's end that still decodes
        _flip(path, pos=pos)
        try:
            if not pq.read_table(path).equals(before):
                break  # a reader that does not verify sees other values
        except Exception:
            pass
        path.write_bytes(good)
    else:
        pytest.fail("no flip in the last 64 bytes of the column decodes to other values")
    _one(validate_archive(archive), str(path), "damaged", "CRC")


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_names_sidecar(archive, cut):
    path = archive / "var_features" / "names_0.arrow"
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * cut)])
    _one(validate_archive(archive), str(path))


def test_names_sidecar_without_a_name_column(archive):
    import pyarrow as pa
    import pyarrow.feather as feather

    path = archive / "obs_features" / "names_0.arrow"
    feather.write_feather(pa.table({"other": pa.array([1] * N_ROWS)}), str(path), compression="uncompressed")
    _one(validate_archive(archive), str(path), "no string column 'name'")


@pytest.mark.slow
def test_flipped_sidecar_bytes_never_crash_validate(archive, tmp_path):
    """Seeded single-byte flips of a names sidecar, each validated in one child process: a crash
    inside pyarrow (what damaged string offsets provoked) fails the test with the position."""
    path = archive / "var_features" / "names_0.arrow"
    size = path.stat().st_size
    rng = np.random.default_rng(12)
    # every byte of the metadata at both ends, and a sample of the buffers between
    positions = sorted(set(range(min(size, 400))) | set(range(max(0, size - 600), size)) | set(rng.integers(0, size, 150).tolist()))
    script = f"""
import shutil, sys
from pathlib import Path
from scdl_gpu.archive._validate import validate_archive
src, work = Path({str(archive)!r}), Path({str(tmp_path / "work")!r})
good = (src / "var_features" / "names_0.arrow").read_bytes()
shutil.copytree(src, work)
target = work / "var_features" / "names_0.arrow"
for pos in {positions!r}:
    b = bytearray(good); b[pos] ^= 0xFF; target.write_bytes(bytes(b))
    print(pos, flush=True)
    problems = validate_archive(work)
    assert all(isinstance(p, str) for p in problems)
print("done", flush=True)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    last = r.stdout.split()[-1:] if r.stdout else []
    assert r.returncode == 0 and last == ["done"], f"stopped after position {last}: rc {r.returncode}\n{r.stderr[-2000:]}"


# -- scdl_gpu.json ----------------------------------------------------------------------------------
def test_rows_sorted_claim_is_checked(archive):
    assert json.loads((archive / "scdl_gpu.json").read_text())["rows_sorted"] is True
    rp = np.fromfile(archive / "row_ptr.npy", dtype=_dtype(archive, "row_ptr.npy"))
    col, save = _rw(archive, "col_ptr.npy", np.uint16)
    row = next(r for r in range(N_ROWS) if rp[r + 1] - rp[r] >= 3 and r > 0)
    s = int(rp[row])
    col[s + 1], col[s + 2] = col[s + 2], col[s + 1]  # still in range: only the claim can tell
    save()
    msg = _one(validate_archive(archive, chunk=5), "scdl_gpu.json records that every row strictly increases")
    assert f"first in row {row}, at value position {s + 2}" in msg
    layout = json.loads((archive / "scdl_gpu.json").read_text())
    (archive / "scdl_gpu.json").write_text(json.dumps({**layout, "rows_sorted": False}))
    assert validate_archive(archive) == []  # an unsorted row is fine when nothing claims otherwise


def test_rows_sorted_check_across_chunks_and_row_starts(archive):
    # Each row's first column may be below the previous row's last: never a problem, whatever the chunking.
    for chunk in (1, 2, 3, 64):
        assert validate_archive(archive, chunk=chunk) == []


def test_stale_and_malformed_layout_notes(archive):
    path = archive / "scdl_gpu.json"
    layout = json.loads(path.read_text())
    path.write_text(json.dumps({**layout, "nnz": layout["nnz"] + 1}))
    report = validation_report(archive)
    assert report.problems == [] and any("out of date" in n for n in report.notes)
    path.write_text("[1, 2]")
    _one(validate_archive(archive), str(path), "expected an object")


# -- leftovers ------------------------------------------------------------------------------------------
def test_leftovers_of_interrupted_writes_are_reported(checked):
    parent = checked.parent
    partial = parent / f".{checked.name}.partial-1a2b3c4d"
    (partial / "var_features").mkdir(parents=True)
    (partial / "data.npy").write_bytes(b"\0" * 200_000)
    old = parent / f".{checked.name}.old-deadbeef"
    old.mkdir()
    (checked / "data.npy.partial").write_bytes(b"x")
    (checked / "var_features" / ".labels.json.4242.tmp").write_bytes(b"x")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    journal = parent / f".{checked.name}.journal-{_host()}-{int(dead.stdout)}-0badf00d"
    journal.write_text("{}")
    # not leftovers: a write in progress (this process), another archive's, NFS's stand-in for an open deleted file
    running = parent / f".{checked.name}.partial-{_host()}-{os.getpid()}-00c0ffee"
    running.mkdir()
    (parent / ".other.partial-1a2b3c4d").mkdir()
    (checked / ".nfs0000000000001234").write_bytes(b"x")
    report = validation_report(checked)
    problems = report.problems
    assert len(problems) == 5, problems
    assert "0.2 MB" in _one(problems, str(partial), "left over from an interrupted write")
    for p in (old, journal, checked / "data.npy.partial", checked / "var_features" / ".labels.json.4242.tmp"):
        _one(problems, str(p), "left over")
    assert report.notes == [f"{running} belongs to a write of {checked} still running (process {os.getpid()})."]


def test_leftovers_beside_a_missing_archive_are_reported(checked):
    """A replacement killed between its two renames: no archive at the path, the old one hidden beside it."""
    old = checked.parent / f".{checked.name}.old-0123abcd"
    checked.rename(old)
    problems = validate_archive(checked)
    assert len(problems) == 2, problems
    _one(problems, "does not exist")
    _one(problems, str(old), "left over")


def test_unfilled_preallocation_validates_as_an_empty_archive(tmp_path):
    """Upstream's num_rows/num_elements dataset saved unfilled: spare capacity, not damage."""
    from scdl_gpu import SingleCellMemMapDataset

    SingleCellMemMapDataset(tmp_path / "e", num_rows=2, num_elements=10).save()
    report = validation_report(tmp_path / "e")
    assert report.problems == [] and any("preallocation nothing was written into" in n for n in report.notes)
    (tmp_path / "e" / "metadata.json").write_text('{"num_rows": 2}')  # then the values past row_ptr are damage
    assert any("ends at 0 but data.npy holds 10 values" in p for p in validation_report(tmp_path / "e").problems)
