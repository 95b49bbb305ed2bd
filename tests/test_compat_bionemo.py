"""Two-way compatibility with bionemo-scdl 0.1.3 (the PyPI wheel) on real and synthetic h5ad.

Our archives open in upstream's ``SingleCellMemMapDataset`` and upstream's in ours, with every
row, dtype, size, feature table and label equal. Where the two differ, the difference is asserted:
labels.json (ours) vs labels.npy (wheel: a FutureWarning on open, as upstream HEAD; pickled for Path
labels: HEAD refuses the archive, we open it with labels None and a warning, never unpickle); raw.X
conversion stores adata.raw.var (ours) vs adata.var (upstream); upstream's stale metadata after
concat and stale header after a cast of a reopened archive; CSC input; get_row_column on unsorted
rows; negative rows; collate width (ours: gene count, upstream: max column + 1).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pyarrow.parquet as pq
import pandas as pd
import pytest
import scipy.sparse as sp
from bionemo.scdl.io.single_cell_collection import SingleCellCollection
from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset as Theirs
from bionemo.scdl.schema.header import SCDLHeader as TheirHeader
from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch as their_collate

from scdl_gpu import SingleCellMemMapDataset as Ours
from scdl_gpu import collate_sparse_matrix_batch as our_collate
from scdl_gpu import convert_h5ad
from scdl_gpu.archive import SCDLHeader as OurHeader
from scdl_gpu.errors import ArchiveError

# anndata's notices when upstream reads the pre-0.7 pbmc68k_reduced_legacy.h5ad: not our code.
pytestmark = [
    pytest.mark.filterwarnings("ignore::anndata.OldFormatWarning"),
    pytest.mark.filterwarnings("ignore:Moving element from .uns:FutureWarning"),
    # Every wheel archive has labels.npy: upstream HEAD's FutureWarning, asserted once in test_wheel_labels_warn.
    pytest.mark.filterwarnings("ignore:Found legacy labels.npy:FutureWarning"),
]

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
DATA = _SHARED if _SHARED.is_dir() else Path(__file__).resolve().parent / "data"
PERTURB = DATA / "cxg_small_perturbations.h5ad"  # 500 x 2000 integer counts, unsorted columns
EXAMPLE = DATA / "cxg_example_valid.h5ad"  # 320 x 136, has raw
CSC = DATA / "pbmc_small_csc.h5ad"  # 80 x 20 CSC float64


def _has_raw(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return "raw" in f or "raw.X" in f


CASES = [  # every real file's X, and raw.X where present
    pytest.param(p, x, id=f"{p.stem}-{'X' if x else 'raw'}")
    for p in sorted(DATA.glob("*.h5ad"))
    for x in (True, False)
    if x or _has_raw(p)
]


# -- helpers ------------------------------------------------------------------------------------
def _read(path) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notices about old layouts
        return ad.read_h5ad(path)


def _source_csr(path, use_x: bool = True) -> sp.csr_matrix:
    a = _read(path)
    m = a.X if use_x else a.raw.X
    return m.tocsr() if sp.issparse(m) else sp.csr_matrix(np.asarray(m))  # dense: zeros dropped


def _warns_downcast(m):
    """float64 sources stored as float32 warn in both packages (upstream twice)."""
    lossy = m.dtype == np.float64 and not np.allclose(m.data.astype(np.float32), m.data, rtol=0, atol=1e-8)
    return pytest.warns(UserWarning, match="Downcasted data values") if lossy else contextlib.nullcontext()


def _csr_input(path: Path, use_x: bool, tmp: Path) -> Path:
    """``path`` when its matrix is CSR on disk (all upstream can convert), else a CSR rewrite."""
    a = _read(path)
    m = a.X if use_x else a.raw.X
    if sp.issparse(m) and m.format == "csr":
        return path
    assert use_x, "raw matrices of the real files are CSR"
    a.X = sp.csr_matrix(m)
    a.write_h5ad(out := tmp / f"{path.stem}_csr.h5ad")
    return out


def _theirs_copy(archive: Path, tmp: Path, **kwargs) -> Theirs:
    """Upstream maps archives read-write (r+): hand it a copy so the original stays untouched."""
    return Theirs(str(shutil.copytree(archive, tmp / f"{archive.name}_for_bionemo")), **kwargs)


def _same_array(t, o, what=""):
    t, o = np.asarray(t), np.asarray(o)
    assert t.dtype == o.dtype, (what, t.dtype, o.dtype)
    np.testing.assert_array_equal(t, o, err_msg=what)


def assert_same_dataset(theirs: Theirs, ours: Ours, labels: bool = True) -> None:
    """Everything the two packages report about one archive is equal (arrays, sizes, tables)."""
    def sizes(d):
        return d.number_of_rows(), len(d), d.number_of_variables(), d.number_nonzero_values(), d.number_of_values()

    assert sizes(theirs) == sizes(ours) and theirs.dtypes == ours.dtypes
    n = ours.number_of_rows()
    for name in ("data", "row_index", "col_index"):
        _same_array(getattr(theirs, name), getattr(ours, name), name)
    for i in range(n):
        for t, o in zip(theirs.get_row(i)[0], ours.get_row(i)[0]):
            _same_array(t, o, f"row {i}")
    for i in sorted({0, 1, n // 2, n - 1}):
        tobs, oobs = theirs.get_row(i, return_obs_features=True)[2], ours.get_row(i, return_obs_features=True)[2]
        assert [repr(x) for x in tobs] == [repr(x) for x in oobs]  # same values and scalar types
        _same_array(theirs.get_row_padded(i)[0], ours.get_row_padded(i)[0], f"padded row {i}")
        _same_array(theirs[i].numpy(), ours[i].numpy(), f"ds[{i}]")
    (tvar, tlab), (ovar, olab) = theirs.var_features().lookup(0), ours.var_features().lookup(0)
    assert len(tvar) == len(ovar)
    for t, o in zip(tvar, ovar):
        _same_array(t, o, "var feature")
    (tobs, tlabs), (oobs, olabs) = theirs.obs_features()[0:n], ours.obs_features()[0:n]
    assert [list(d) for d in tobs] == [list(d) for d in oobs]
    for td, od in zip(tobs, oobs):
        for key in td:
            _same_array(td[key], od[key], f"obs column {key}")
    if labels:
        assert tlab == olab and list(tlabs) == list(olabs)


def _wheel_header_bytes(raw: bytes) -> bytes:
    """Our header with each ``<dir>/labels.json`` entry renamed to the wheel's ``<dir>/labels.npy``."""
    for d in (b"var_features/", b"obs_features/"):
        ours, wheel = d + b"labels.json", d + b"labels.npy"
        raw = raw.replace(struct.pack(">I", len(ours)) + ours, struct.pack(">I", len(wheel)) + wheel)
    return raw


def _synthetic(path: Path, n: int = 40, g: int = 24, raw_genes: int | None = None) -> Path:
    """Integer counts with empty rows 3 and 17, columns reversed in every row, one stored zero,
    a never-used last gene, and a neighbor graph in ``obsp["next_cell_ids"]`` (float64 weights)."""
    rng = np.random.default_rng(7)
    m = sp.random(n, g, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    m.data[:] = rng.integers(1, 300, m.nnz)
    m.data[m.indptr[3] : m.indptr[4]] = m.data[m.indptr[17] : m.indptr[18]] = 0
    m.eliminate_zeros()
    for r in range(n):
        s, e = m.indptr[r], m.indptr[r + 1]
        m.indices[s:e], m.data[s:e] = m.indices[s:e][::-1].copy(), m.data[s:e][::-1].copy()
    m.data[m.indptr[1]] = 0  # an explicit zero: both keep stored entries verbatim
    X = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(n, g + 1))
    graph = sp.random(n, n, density=0.08, format="csr", random_state=rng, dtype=np.float64)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["T", "B"], n)), "n": rng.integers(0, 99, n), "score": rng.random(n)},
        index=[f"c{i}" for i in range(n)],
    )
    var = pd.DataFrame({"feature_name": [f"G{i}" for i in range(g + 1)]}, index=[f"ENSG{i}" for i in range(g + 1)])
    a = ad.AnnData(X=X, obs=obs, var=var, obsp={"next_cell_ids": graph})
    if raw_genes is not None:  # raw keeps all genes, X only the first g + 1 (an HVG subset)
        full = sp.random(n, raw_genes, density=0.3, format="csr", random_state=rng, dtype=np.float32)
        rvar = pd.DataFrame({"symbol": [f"R{i}" for i in range(raw_genes)]}, index=[f"E{i}" for i in range(raw_genes)])
        a.raw = ad.AnnData(X=full, obs=obs, var=rvar)
    a.write_h5ad(path)
    return path


@pytest.fixture
def synthetic_pair(tmp_path) -> tuple[Ours, Theirs]:
    """The synthetic file converted by us, opened by both packages."""
    out = Ours(tmp_path / "o", h5ad_path=str(_synthetic(tmp_path / "syn.h5ad")), use_X_not_raw=True).data_path
    return Ours(out), _theirs_copy(Path(out), tmp_path)


# -- 1. our archives in bionemo-scdl --------------------------------------------------------------
@pytest.mark.parametrize("path,use_x", CASES)
def test_our_archive_opens_in_bionemo(tmp_path, path, use_x):
    src = _source_csr(path, use_x)
    with _warns_downcast(src):
        archive = convert_h5ad(path, tmp_path / "ours", use_X_not_raw=use_x, keep_column_order=True)
    ours, theirs = Ours(archive), _theirs_copy(archive, tmp_path)
    assert_same_dataset(theirs, ours)
    # ... and what upstream reads is the source matrix, stored entries in stored order.
    _same_array(np.asarray(theirs.row_index, np.int64), src.indptr.astype(np.int64), "row_ptr vs source")
    _same_array(np.asarray(theirs.col_index, np.int64), src.indices.astype(np.int64), "col_ptr vs source")
    _same_array(theirs.data, src.data.astype(np.float32), "data vs source")
    assert theirs.var_features().lookup(0)[1] == str(path)


def test_archive_with_obsm_opens_in_bionemo(tmp_path):
    """obsm/<key>.npy beside the archive is invisible to upstream: same rows, tables and sizes."""
    with _warns_downcast(_source_csr(EXAMPLE)):
        archive = convert_h5ad(EXAMPLE, tmp_path / "ours", use_X_not_raw=True, keep_column_order=True,
                               obsm_keys=["X_pca", "X_umap"])
    assert sorted(p.name for p in (archive / "obsm").iterdir()) == ["X_pca.npy", "X_umap.npy"]
    ours, theirs = Ours(archive), _theirs_copy(archive, tmp_path)
    assert_same_dataset(theirs, ours)
    np.testing.assert_array_equal(ours.obsm("X_umap"), _read(EXAMPLE).obsm["X_umap"])


# -- 2. bionemo-scdl archives in ours -------------------------------------------------------------
@pytest.mark.parametrize("path,use_x", CASES)
def test_bionemo_archive_opens_in_ours(tmp_path, path, use_x):
    src = _csr_input(path, use_x, tmp_path)
    with _warns_downcast(_source_csr(src, use_x)):
        Theirs(str(tmp_path / "theirs"), h5ad_path=str(src), use_X_not_raw=use_x)
    assert_same_dataset(Theirs(str(tmp_path / "theirs")), Ours(tmp_path / "theirs"))


def test_csc_input_fails_in_bionemo(tmp_path):
    """Upstream copies a CSC indptr as if it were CSR (spec §12.7); for 80x20 it does not fit."""
    with pytest.warns(UserWarning, match="Downcasted"), pytest.raises(ValueError, match="broadcast"):
        Theirs(str(tmp_path / "theirs"), h5ad_path=str(CSC), use_X_not_raw=True)


@pytest.mark.parametrize("how", ["data_dtype", "cast_data_to_dtype"])
def test_uint16_data_from_bionemo(tmp_path, how):
    out = str(tmp_path / "theirs")
    if how == "data_dtype":
        Theirs(out, h5ad_path=str(PERTURB), use_X_not_raw=True, data_dtype="uint16")
    else:
        Theirs(out, h5ad_path=str(PERTURB), use_X_not_raw=True).cast_data_to_dtype("uint16")
    ours = Ours(out)
    assert ours.dtypes["data.npy"] == "uint16"
    _same_array(ours.data, _source_csr(PERTURB).data.astype(np.uint16))
    assert_same_dataset(Theirs(out), ours)


def test_stale_header_after_bionemo_cast_of_reopened_archive(tmp_path):
    """Upstream re-saves the header it loaded (spec §12.1): FLOAT32 over uint16 bytes."""
    out = str(tmp_path / "theirs")
    nnz = Theirs(out, h5ad_path=str(PERTURB), use_X_not_raw=True).number_nonzero_values()
    Theirs(out).cast_data_to_dtype("uint16")
    garbled = Theirs(out)  # upstream silently reads half as many float32 garbage values
    assert garbled.dtypes["data.npy"] == "float32" and garbled.data.size == nnz * 2 // 4 != nnz
    with pytest.raises(ArchiveError, match="row_ptr.npy ends at"):
        Ours(out)


def test_concat_of_two_files_matches(tmp_path):
    theirs = Theirs(str(tmp_path / "t"), h5ad_path=str(PERTURB), use_X_not_raw=True)
    theirs.concat(Theirs(str(tmp_path / "t2"), h5ad_path=str(EXAMPLE), use_X_not_raw=True))
    ours = Ours(tmp_path / "o", h5ad_path=str(PERTURB), use_X_not_raw=True)
    ours.concat(Ours(tmp_path / "o2", h5ad_path=str(EXAMPLE), use_X_not_raw=True))
    (rows_a, genes_a), (rows_b, genes_b) = _source_csr(PERTURB).shape, _source_csr(EXAMPLE).shape
    view = Ours(tmp_path / "t")
    assert view.number_of_variables() == [genes_a, genes_b]  # two var blocks
    assert_same_dataset(Theirs(str(tmp_path / "t")), view)
    assert_same_dataset(Theirs(str(tmp_path / "t")), ours)  # our concat == theirs
    ours_header, theirs_header = ((tmp_path / d / "header.sch").read_bytes() for d in ("o", "t"))
    assert _wheel_header_bytes(ours_header) == theirs_header
    # upstream keeps the first file's row count in metadata.json (spec §12.3); we write the total
    assert json.loads((tmp_path / "t" / "metadata.json").read_text()) == {"num_rows": rows_a}
    assert json.loads((tmp_path / "o" / "metadata.json").read_text()) == {"num_rows": rows_a + rows_b}


# -- pickled labels: upstream's Path labels, as its CLI writes them -----------------------------------
def _open_ours_pickled(archive: Path) -> Ours:
    """Upstream HEAD refuses these archives (ValueError); ours open, labels None, one warning per index."""
    with pytest.warns(UserWarning, match="labels.npy holds pickled objects") as record:
        ours = Ours(archive)
        assert all(lab is None for lab in ours.var_features()._labels + ours.obs_features()._labels)
    assert [w.category for w in record].count(UserWarning) == 2  # one per feature index
    return ours


def test_wheel_labels_warn_and_pickled_ones_are_refused_by_the_index_api(tmp_path):
    """As upstream HEAD: the wheel's labels.npy loads with a FutureWarning; the index classes refuse a
    pickled one (ValueError) while the dataset still opens the archive; re-saving writes labels.json."""
    out = tmp_path / "theirs"
    Theirs(str(out), h5ad_path=PERTURB, use_X_not_raw=True)  # a Path label: pickled
    Theirs(str(tmp_path / "str"), h5ad_path=str(PERTURB), use_X_not_raw=True)  # str labels: <U
    with pytest.warns(FutureWarning, match="Found legacy labels.npy") as record:
        ds = Ours(tmp_path / "str")
        assert ds.var_features()._labels == ds.obs_features()._labels == [str(PERTURB)]
    assert [w.category for w in record].count(FutureWarning) == 2  # var and obs
    from scdl_gpu.archive import VariableFeatureIndex

    with pytest.raises(ValueError, match="contains pickled objects"):
        VariableFeatureIndex.load(out / "var_features")
    ours = _open_ours_pickled(out)
    ours.save()
    assert json.loads((out / "var_features" / "labels.json").read_text()) == [None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert VariableFeatureIndex.load(out / "var_features")._labels == [None]


@pytest.mark.parametrize("how", ["h5ad_path-is-Path", "collection-flatten"])
def test_pickled_path_labels_warn_and_rows_match(tmp_path, how):
    """Upstream pickles Path labels: ``h5ad_path=Path(...)`` or its CLI's load_h5ad_multi + flatten."""
    out, files = tmp_path / "theirs", [EXAMPLE, PERTURB]  # flatten sorts its inputs by name
    if how == "h5ad_path-is-Path":
        files = [PERTURB]
        Theirs(str(out), h5ad_path=PERTURB, use_X_not_raw=True)
    else:
        (inputs := tmp_path / "in").mkdir()
        for p in files:
            shutil.copy(p, inputs)
        coll = SingleCellCollection(str(tmp_path / "coll"))
        coll.load_h5ad_multi(str(inputs), use_X_not_raw=True)
        coll.flatten(str(out), destroy_on_copy=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(out / "var_features" / "labels.npy", allow_pickle=False)
    ours, theirs = _open_ours_pickled(out), Theirs(str(out))
    assert [lab.name for lab in theirs.var_features()._labels] == [p.name for p in files]  # PosixPaths
    assert ours.number_of_variables() == [_source_csr(p).shape[1] for p in files]  # one var block per file
    assert_same_dataset(theirs, ours, labels=False)


def test_pickled_labels_are_never_unpickled(tmp_path):
    sentinel = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return Path.touch, (sentinel,)

    out = tmp_path / "theirs"
    Theirs(str(out), h5ad_path=str(EXAMPLE), use_X_not_raw=True)
    for d in ("var_features", "obs_features"):
        np.save(out / d / "labels.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    _open_ours_pickled(out)
    assert not sentinel.exists()
    _theirs_copy(out, tmp_path)  # upstream unpickles: the payload is live
    assert sentinel.exists()


# -- 3. header.sch and the other files ------------------------------------------------------------
@pytest.mark.parametrize("path,use_x", CASES)
def test_header_and_files_match_bionemo(tmp_path, path, use_x):
    src = _csr_input(path, use_x, tmp_path)
    t, o = tmp_path / "t", tmp_path / "o"
    with _warns_downcast(_source_csr(src, use_x)):
        Theirs(str(t), h5ad_path=str(src), use_X_not_raw=use_x)
        convert_h5ad(src, o, use_X_not_raw=use_x, keep_column_order=True)
    theirs_json = TheirHeader.load(str(t / "header.sch")).to_json()
    assert OurHeader.load(str(t / "header.sch")).to_json() == theirs_json  # both decoders agree
    # decoded: same version, array names/lengths/dtypes, index names/lengths/files but labels.json
    assert TheirHeader.load(str(o / "header.sch")).to_json() == theirs_json.replace("/labels.npy", "/labels.json")
    assert _wheel_header_bytes((o / "header.sch").read_bytes()) == (t / "header.sch").read_bytes()
    # Every file upstream writes, we write byte for byte, except the header (labels.json) and,
    # for raw.X, the var table: upstream stores adata.var, we adata.raw.var.
    theirs_files = {str(f.relative_to(t)) for f in t.rglob("*") if f.is_file()}
    ours_files = {str(f.relative_to(o)) for f in o.rglob("*") if f.is_file()}
    # names_*.arrow: var/obs names, which upstream drops; names.json: which blocks have them;
    # scdl_gpu.json: our writer's note (rows sorted?); the checksum manifest. Upstream reads none.
    extra = {f"{d}/{x}" for d in ("var_features", "obs_features") for x in ("labels.json", "names_0.arrow", "names.json")}
    extra |= {"scdl_gpu.json", "scdl_gpu_checksums.json"}
    assert ours_files - theirs_files == extra
    differ = {f for f in theirs_files if (o / f).read_bytes() != (t / f).read_bytes()}
    a = _read(src)
    raw_var_differs = not use_x and not a.var.equals(a.raw.var)
    # Parquet tables carry page checksums (upstream's do not): same table, other bytes.
    tables = {f for f in theirs_files if f.endswith(".parquet")}
    assert differ - tables == {"header.sch"}
    for f in tables:
        ours_t, theirs_t = pq.read_table(o / f), pq.read_table(t / f)
        same = ours_t.equals(theirs_t)
        assert same != (raw_var_differs and f == "var_features/dataframe_0.parquet"), f


def test_raw_conversion_var_table_disagreement(tmp_path):
    """For raw.X with more genes than X, upstream's var table (adata.var) is too short."""
    src = _synthetic(tmp_path / "raw.h5ad", g=11, raw_genes=30)
    theirs = Theirs(str(tmp_path / "t"), h5ad_path=str(src), use_X_not_raw=False)
    ours = Ours(tmp_path / "o", h5ad_path=str(src), use_X_not_raw=False)
    for name in ("data", "row_index", "col_index"):
        _same_array(getattr(theirs, name), getattr(ours, name), name)
    assert theirs.number_of_variables() == [12] and ours.number_of_variables() == [30]
    assert list(ours.var_features().lookup(0)[0][0][:2]) == ["R0", "R1"]
    row = int(np.argmax([ours.get_row(i)[0][1].max(initial=0) for i in range(len(ours))]))
    with pytest.raises(IndexError):
        theirs.get_row_padded(row)  # a raw column >= 12
    assert ours.get_row_padded(row)[0].shape == (30,)


# -- neighbors, empty rows, unsorted columns --------------------------------------------------------
@pytest.mark.parametrize("writer", ["ours", "theirs"])
def test_neighbors_empty_rows_unsorted_columns(tmp_path, writer):
    src = _synthetic(tmp_path / "syn.h5ad")
    out = tmp_path / writer
    (Ours if writer == "ours" else Theirs)(str(out), h5ad_path=str(src), use_X_not_raw=True, load_neighbors=True)
    kw = dict(load_neighbors=True, neighbor_sampling_strategy="first")
    ours = Ours(out, **kw)
    theirs = _theirs_copy(out, tmp_path, **kw) if writer == "ours" else Theirs(str(out), **kw)
    assert_same_dataset(theirs, ours)
    assert ours.get_row(3)[0][0].size == ours.get_row(17)[0][0].size == 0
    assert ours.get_row(1)[0][0][0] == 0  # the stored zero survives
    assert all(np.all(np.diff(ours.get_row(i)[0][1].astype(int)) < 0) for i in range(len(ours)))  # descending
    assert theirs.get_neighbor_stats() == ours.get_neighbor_stats()
    graph = _read(src).obsp["next_cell_ids"].tocsr()
    for i in range(len(ours)):
        span = slice(graph.indptr[i], graph.indptr[i + 1])
        ti, oi = theirs.get_neighbor_indices_for_cell(i), ours.get_neighbor_indices_for_cell(i)
        tw, ow = theirs.get_neighbor_weights_for_cell(i), ours.get_neighbor_weights_for_cell(i)
        _same_array(ti, oi, f"neighbors of {i}")
        _same_array(tw, ow, f"weights of {i}")
        _same_array(oi, graph.indices[span].astype(np.uint32))
        _same_array(ow, graph.data[span].astype(np.float32))  # float64 weights stored as float32 by both
        assert int(theirs.sample_neighbor_index(i)) == int(ours.sample_neighbor_index(i))


def test_documented_row_access_differences(synthetic_pair):
    ours, theirs = synthetic_pair
    (values, cols), _, _ = ours.get_row(0)
    assert cols[0] > cols[-1]  # columns stored in descending order
    assert theirs.get_row_column(0, int(cols[-1])) == 0.0  # upstream stops at the first larger column
    assert ours.get_row_column(0, int(cols[-1])) == values[-1] != 0
    assert theirs.get_row(-1)[0][0].size == 0  # upstream: row_index[-1]:row_index[0], an empty slice
    _same_array(ours.get_row(-1)[0][0], theirs.get_row(len(ours) - 1)[0][0])  # ours: the last row


# -- 4. collate -----------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [[0, 3, 5, 17], [3, 17]], ids=["mixed", "only-empty-rows"])
def test_collate_matches_bionemo(synthetic_pair, rows):
    ours, theirs = synthetic_pair
    o, t = our_collate([ours[i] for i in rows]), their_collate([theirs[i] for i in rows])
    for part in ("crow_indices", "col_indices", "values"):
        _same_array(getattr(t, part)().numpy(), getattr(o, part)().numpy(), part)
    max_col = int(t.col_indices().max()) if t.col_indices().numel() else -1
    n_genes = ours.number_of_variables()[0]
    assert max_col + 1 < n_genes  # the last gene is never stored, so the widths differ
    assert tuple(o.shape) == (len(rows), n_genes)  # ours: the gene count
    assert tuple(t.shape) == (len(rows), max_col + 1)  # theirs: max column + 1 (0 for empty rows)
    # plain tensors (no gene count attached) get upstream's width from ours too
    assert tuple(our_collate([theirs[i] for i in rows]).shape) == tuple(t.shape)


# -- many files into one archive ---------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Downcasted data values:UserWarning")
def test_directory_conversion_opens_in_bionemo_and_matches_its_cli(tmp_path):
    """Our ``convert_h5ad_to_scdl`` and ``SingleCellCollection.flatten`` on a directory of files with
    different gene sets: upstream opens both archives with every row equal, and upstream's own
    collection + flatten (what its CLI runs) stores the same arrays."""
    from scdl_gpu import SingleCellCollection as OurCollection
    from scdl_gpu.cli.upstream import main as our_cli

    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(PERTURB, d / PERTURB.name)
    shutil.copy(EXAMPLE, d / EXAMPLE.name)
    _synthetic(d / "nested_syn.h5ad")
    assert our_cli(["--data-path", str(d), "--save-path", str(tmp_path / "cli"), "--use-X-not-raw"]) == 0
    ours_coll = OurCollection(tmp_path / "ours_coll")
    ours_coll.load_h5ad_multi(d, use_X_not_raw=True)
    ours_coll.flatten(tmp_path / "flat", destroy_on_copy=True)
    theirs_coll = SingleCellCollection(str(tmp_path / "theirs_coll"))
    theirs_coll.load_h5ad_multi(str(d), use_X_not_raw=True)
    theirs_coll.flatten(str(tmp_path / "t"), destroy_on_copy=True)

    n = sum(_source_csr(p).shape[0] for p in sorted(d.glob("*.h5ad")))
    for name in ("cli", "flat"):
        ours = Ours(tmp_path / name)
        assert len(ours) == n and ours.number_of_variables() == [136, 2000, 25]  # sorted: cxg_example, cxg_small, nested_syn
        assert_same_dataset(_theirs_copy(tmp_path / name, tmp_path), ours)
    upstream = _open_ours_pickled(tmp_path / "t")  # its collection stores Path labels, pickled
    cli = Ours(tmp_path / "cli")
    for name in ("data", "row_index", "col_index"):
        _same_array(getattr(upstream, name), getattr(cli, name), name)
    assert upstream.number_of_variables() == cli.number_of_variables()
    for (flat_file, cli_file) in ((tmp_path / "flat" / f, tmp_path / "cli" / f) for f in ("data.npy", "row_ptr.npy", "col_ptr.npy", "header.sch")):
        assert flat_file.read_bytes() == cli_file.read_bytes()
