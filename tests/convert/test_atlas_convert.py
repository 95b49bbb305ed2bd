"""``convert_to_atlas`` on threads and processes: each member is the single-input conversion of its
input (byte for byte), row ranges cut inputs exactly, the manifest is written last, and the
output directory's states (new, atlas, a failed run's leftovers) are handled as documented."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu.archive._constants import FileNames
from scdl_gpu.archive._reader import load_feature_index, open_arrays
from scdl_gpu.atlas import is_atlas, open_atlas
from scdl_gpu.convert import convert_h5ad, convert_many, convert_to_atlas
from scdl_gpu.convert._atlas import member_names, row_ranges
from scdl_gpu.errors import ConversionError
from tests.atlas.members import ALL_GENES, member_adata
from tests.conftest import BUNDLED
from tests.convert.atlas_inputs import assert_same_archive, csr_of, no_partials, obs_of, write_inputs

TENX_H5 = BUNDLED / "10x_v3_chr21_filtered_feature_bc_matrix.h5"
TENX_MTX = BUNDLED / "10x_v3_chr21_mtx"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return write_inputs(tmp_path_factory.mktemp("atlas_inputs"))


@pytest.fixture(scope="module")
def singles(inputs, tmp_path_factory) -> dict[str, Path]:
    """Each input converted on its own, as the reference for its member(s)."""
    out = tmp_path_factory.mktemp("singles")
    refs = {}
    for p in sorted(inputs.glob("*.h5ad")):
        refs[p.stem] = convert_h5ad(p, out / f"{p.stem}.scdl", use_X_not_raw=True, obsm_keys=["X_pca"])
    return refs


# -- threads and processes -----------------------------------------------------------------------
def test_each_member_is_the_single_input_conversion(inputs, singles, tmp_path):
    report = convert_to_atlas(inputs, tmp_path / "atlas", workers=2, use_X_not_raw=True, obsm_keys=["X_pca"])
    atlas = open_atlas(tmp_path / "atlas")
    assert [m.name for m in atlas.members] == sorted(singles) == [r.name for r in report.converted]
    for m in atlas.members:
        assert m.path == f"members/{m.name}.scdl"
        assert_same_archive(tmp_path / "atlas" / m.path, singles[m.name])
    # the manifest: rows, the union of every input's genes in first-seen order, each member's map onto it
    assert atlas.n_rows == report.n_rows == 37 + 29 + 23 + 41
    assert list(atlas.genes) == ALL_GENES[:35] + ALL_GENES[35:40]
    for i, m in enumerate(atlas.members):
        genes = list(load_feature_index(atlas.member_path(i), FileNames.VAR_FEATURES).names(0))
        assert [atlas.genes[j] for j in atlas.column_map(i)] == genes
    assert report.scheduler == "threads" and report.kept == [] and not no_partials(tmp_path / "atlas")


def test_processes_and_10x_inputs(tmp_path):
    report = convert_to_atlas([TENX_H5, TENX_MTX], tmp_path / "atlas", workers=2, use_processes=True, gene_vocab="intersection")
    assert report.scheduler == "processes" and {r.pid for r in report.converted} != {os.getpid()}
    for r, src in zip(report.converted, [TENX_H5, TENX_MTX]):
        convert_many([src], tmp_path / f"{r.name}.ref")
        assert_same_archive(Path(r.member), tmp_path / f"{r.name}.ref")
    assert open_atlas(tmp_path / "atlas").vocab_mode == "intersection"


@pytest.mark.parametrize("member_rows", [10, 23, 1000])
def test_row_ranges_cut_inputs_exactly(inputs, singles, tmp_path, member_rows):
    inputs_ = [*sorted(inputs.glob("*.h5ad")), TENX_MTX, TENX_H5]  # CSR, CSC, dense, Matrix Market and 10x HDF5 sources
    report = convert_to_atlas(inputs_, tmp_path / "atlas", workers=2, member_rows=member_rows, use_X_not_raw=True,
                              max_block_values=50)
    atlas = open_atlas(tmp_path / "atlas")
    by_input: dict[str, list] = {}
    for r in report.converted:
        by_input.setdefault(Path(r.source).name, []).append(r)
        assert r.n_rows <= member_rows
    for p in inputs_:
        parts = by_input[p.name]
        stem = p.stem if p.is_file() else p.name
        ref = singles.get(stem) or convert_many([p], tmp_path / f"{stem}.ref").archive
        n = open_arrays(ref).n_rows
        assert [r.rows for r in parts] == row_ranges(n, member_rows)
        if len(parts) > 1:
            width = len(str(len(parts) - 1))
            assert [r.name for r in parts] == [f"{stem}-{k:0{width}d}" for k in range(len(parts))]
        whole = csr_of(ref)
        cut = sp.vstack([csr_of(Path(r.member)) for r in parts]).tocsr()
        assert (cut != whole).nnz == 0 and np.array_equal(cut.indptr, whole.indptr)
        assert np.array_equal(cut.indices, whole.indices) and np.array_equal(cut.data, whole.data)
        ref_obs, ref_names = obs_of(ref)
        got = [obs_of(Path(r.member)) for r in parts]
        assert np.array_equal(np.concatenate([names for _, names in got]), ref_names)
        for col, values in ref_obs.items():
            assert np.array_equal(np.concatenate([o[col] for o, _ in got]), values), col
    assert atlas.n_rows == sum(r.n_rows for r in report.converted)


def test_row_ranges_of_obsm_and_auto_dtype(inputs, singles, tmp_path):
    src = inputs / "s3_csr.h5ad"
    report = convert_to_atlas([src], tmp_path / "atlas", member_rows=15, use_X_not_raw=True, obsm_keys=["X_pca"],
                              data_dtype="auto")
    whole = np.load(singles["s3_csr"] / "obsm" / "X_pca.npy")
    parts = [np.load(Path(r.member) / "obsm" / "X_pca.npy") for r in report.converted]
    assert [len(p) for p in parts] == [15, 15, 11] and np.array_equal(np.concatenate(parts), whole)
    assert {m.data_dtype for m in open_atlas(tmp_path / "atlas").members} == {"uint8"}  # counts below 50
    assert np.array_equal(sp.vstack([csr_of(Path(r.member)) for r in report.converted]).toarray(),
                          csr_of(singles["s3_csr"]).toarray())


def test_member_names():
    assert member_names([Path("a/x.h5ad"), Path("b/x.h5ad"), Path("x_2.h5"), Path("c/x.h5ad")]) == ["x", "x_2", "x_2_2", "x_3"]
    assert row_ranges(10, None) == [None] and row_ranges(10, 10) == [None]
    assert row_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


# -- the output directory ------------------------------------------------------------------------
def test_existing_atlas_needs_append_or_overwrite(inputs, tmp_path):
    s0, s1, s2 = (inputs / n for n in ("s0_csr.h5ad", "s1_csc.h5ad", "s2_dense.h5ad"))
    out = tmp_path / "atlas"
    convert_to_atlas([s0], out, use_X_not_raw=True, gene_vocab="union")
    with pytest.raises(FileExistsError, match="already an atlas"):
        convert_to_atlas([s1], out, use_X_not_raw=True)
    with pytest.raises(ValueError, match="keeps its gene vocabulary"):
        convert_to_atlas([s1], out, use_X_not_raw=True, append=True, gene_vocab="intersection")
    report = convert_to_atlas([s1, s2], out, use_X_not_raw=True, append=True)
    assert open_atlas(out).names == ["s0_csr", "s1_csc", "s2_dense"] and report.n_members == 3
    with pytest.raises(FileExistsError, match=r"members named \['s1_csc'\]"):
        convert_to_atlas([s1], out, use_X_not_raw=True, append=True)
    with pytest.raises(FileNotFoundError):  # the inputs are checked before the atlas is deleted
        convert_to_atlas([tmp_path / "missing.h5ad"], out, use_X_not_raw=True, overwrite=True)
    assert open_atlas(out).names == ["s0_csr", "s1_csc", "s2_dense"]
    with pytest.raises(ValueError, match="overwrite and append exclude each other"):
        convert_to_atlas([s2], out, use_X_not_raw=True, overwrite=True, append=True)
    report = convert_to_atlas([s2], out, use_X_not_raw=True, overwrite=True)
    assert open_atlas(out).names == ["s2_dense"] and sorted(os.listdir(out / "members")) == ["s2_dense.scdl"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an atlas directory"):
        convert_to_atlas([s0], tmp_path / "other", use_X_not_raw=True, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="not an atlas to append to"):
        convert_to_atlas([s0], tmp_path / "new", use_X_not_raw=True, append=True)


def test_a_failed_input_leaves_no_manifest_and_resume_finishes(inputs, singles, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(inputs, d)
    good = sorted(d.glob("*.h5ad"))
    bad = d / "zz_broken.h5ad"
    broken(bad)
    with h5py.File(bad, "r+") as f:  # opens and probes fine; its task fails on the rows
        f["X/indices"][5] = 1000
    out = tmp_path / "atlas"
    with pytest.raises(ConversionError, match=r"1 of 5 member conversions failed \(.*zz_broken.h5ad\)") as e:
        convert_to_atlas(d, out, workers=2, use_X_not_raw=True, obsm_keys=["X_pca"], max_block_values=100)
    assert "column indices range from 0 to 1000" in str(e.value) and "pass resume=True" in str(e.value)
    assert not is_atlas(out) and not no_partials(out)
    assert sorted(os.listdir(out / "members")) == sorted(f"{p.stem}.scdl" for p in good)
    with pytest.raises(FileExistsError, match="did not finish"):
        convert_to_atlas(d, out, use_X_not_raw=True, obsm_keys=["X_pca"])
    broken(bad)  # rewritten whole: fixed
    stamps = {p: p.stat().st_mtime_ns for p in (out / "members").iterdir()}
    report = convert_to_atlas(d, out, use_X_not_raw=True, resume=True, obsm_keys=["X_pca"])
    assert [r.name for r in report.converted] == ["zz_broken"] and report.kept == [p.stem for p in good]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # kept as they were
    atlas = open_atlas(out)
    assert atlas.names == [p.stem for p in good] + ["zz_broken"]
    labels = [f"{k}_features/labels.{e}" for k in ("obs", "var") for e in ("json", "npy")]  # the inputs moved
    for i, m in enumerate(atlas.members[:-1]):
        assert_same_archive(atlas.member_path(i), singles[m.name], but=[*labels, "scdl_gpu_checksums.json"])


def broken(path: Path) -> None:
    a = member_adata(30, ALL_GENES[:10], seed=9)
    a.obsm["X_pca"] = np.zeros((30, 3), np.float32)
    a.write_h5ad(path)


def test_resume_refuses_a_member_of_other_rows(inputs, tmp_path):
    out = tmp_path / "atlas"
    (out / "members").mkdir(parents=True)
    convert_h5ad(inputs / "s1_csc.h5ad", out / "members" / "s0_csr.scdl", use_X_not_raw=True)
    with pytest.raises(ConversionError, match="holds 29 rows but .* gives this member 37"):
        convert_to_atlas([inputs / "s0_csr.h5ad"], out, use_X_not_raw=True, resume=True)
    convert_h5ad(inputs / "s0_csr.h5ad", out / "members" / "s0_csr.scdl", use_X_not_raw=True, overwrite=True)
    report = convert_to_atlas([inputs / "s0_csr.h5ad"], out, use_X_not_raw=True, resume=True)
    assert report.kept == ["s0_csr"]


def test_neighbor_graph_cannot_be_cut(tmp_path):
    a = member_adata(12, ALL_GENES[:8], seed=1)
    a.obsp["next_cell_ids"] = sp.random(12, 12, density=0.2, format="csr", random_state=0)
    a.write_h5ad(tmp_path / "g.h5ad")
    with pytest.raises(ConversionError, match="cannot be cut into members of 5 rows"):
        convert_to_atlas([tmp_path / "g.h5ad"], tmp_path / "atlas", use_X_not_raw=True, neighbor_key="next_cell_ids",
                         member_rows=5)
    report = convert_to_atlas([tmp_path / "g.h5ad"], tmp_path / "atlas", use_X_not_raw=True, neighbor_key="next_cell_ids")
    assert open_arrays(report.converted[0].member, load_neighbors=True).neighbors is not None


def test_report_json(inputs, tmp_path):
    from scdl_gpu.cli import main

    out = tmp_path / "atlas"
    rc = main(["convert", str(inputs / "s0_csr.h5ad"), "-o", str(out), "--atlas", "--use-X-not-raw", "--member-rows", "20",
               "--report", str(tmp_path / "r.json"), "-q"])
    assert rc == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [m["name"] for m in doc["converted"]] == ["s0_csr-0", "s0_csr-1"] and doc["n_rows"] == 37
