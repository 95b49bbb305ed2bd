"""validate_archive: a valid archive gives [], each kind of damage gives its own problem line."""

from __future__ import annotations

import json
import shutil

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
from scdl_gpu.archive._reader import load_feature_index
from scdl_gpu.archive._constants import FileNames
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
    """A fresh copy of the synthetic archive to damage."""
    return shutil.copytree(pristine, tmp_path / "arch")


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
    col[0] = 5000
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
