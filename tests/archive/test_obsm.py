"""obsm arrays beside an archive: written by row ranges, checked on open, covered by validate and
checksums, carried through concatenation (NaN rows for a member without the key)."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from scdl_gpu import SingleCellMemMapDataset, convert_h5ad
from scdl_gpu.archive import concat_archives, validate_archive, verify_manifest
from scdl_gpu.archive._obsm import check_key, create_obsm, merge_obsm, obsm_keys, open_obsm
from scdl_gpu.errors import ArchiveError
from tests.conftest import write_obsm_h5ad as _h5ad


@pytest.fixture
def archive(tmp_path) -> tuple[Path, np.ndarray]:
    emb = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    out = convert_h5ad(_h5ad(tmp_path / "a.h5ad", 30, {"X_emb": emb}), tmp_path / "a.scdl", use_X_not_raw=True, obsm_keys=["X_emb"])
    return out, emb


def test_written_by_row_ranges_and_mapped_read_only(tmp_path):
    target = create_obsm(tmp_path, "X_pca", np.float64, 10, 3)
    target.write(4, np.arange(18, dtype=np.float32).reshape(6, 3))
    target.fill(0, 4)
    a = open_obsm(tmp_path, "X_pca", 10)
    assert a.dtype == np.float64 and a.shape == (10, 3) and not a.flags.writeable
    assert np.isnan(a[:4]).all()
    np.testing.assert_array_equal(a[4:], np.arange(18).reshape(6, 3))
    np.testing.assert_array_equal(np.load(tmp_path / "obsm" / "X_pca.npy"), a)  # a plain .npy file
    assert obsm_keys(tmp_path) == ["X_pca"]
    with pytest.raises(ValueError, match="do not fit"):
        target.write(8, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="do not fit"):
        target.write(0, np.zeros((2, 4)))


def test_integer_file_refuses_nan(tmp_path):
    target = create_obsm(tmp_path, "counts", np.int32, 4, 2)
    with pytest.raises(ValueError, match="NaN or infinity"):
        target.fill(0, 4)


@pytest.mark.parametrize("key", ["a/b", "../x", ".hidden", "-x", "", "x" * 129, "emb.npy", "é", 3])
def test_unsafe_keys_refused(key):
    with pytest.raises(ValueError, match="cannot be stored"):
        check_key(key)


@pytest.mark.parametrize("key", ["X_umap", "X_pca", "spatial", "X_scVI.v2", "protein-expr"])
def test_ordinary_keys_accepted(key):
    assert check_key(key) == key


def test_unknown_key_lists_stored_ones(archive):
    path, _ = archive
    with pytest.raises(KeyError, match=r"no obsm array 'X_umap'.*X_emb"):
        SingleCellMemMapDataset(path).obsm("X_umap")


def _damage(path: Path, how: str) -> Path:
    f = path / "obsm" / "X_emb.npy"
    raw = bytearray(f.read_bytes())
    if how == "truncated":
        f.write_bytes(raw[:-7])
    elif how == "extra":
        f.write_bytes(raw + b"\0" * 20)
    elif how == "header":
        raw[12:40] = b"garbage garbage garbage #!@$"
        f.write_bytes(raw)
    elif how == "magic":
        f.write_bytes(b"NOTNUMPY" + raw[8:])
    elif how == "rows":
        np.save(f, np.zeros((29, 5), np.float32))
    elif how == "3d":
        np.save(f, np.zeros((30, 5, 1), np.float32))
    elif how == "strings":
        np.save(f, np.array([["a"] * 5] * 30))
    return f


@pytest.mark.parametrize("how", ["truncated", "extra", "header", "magic", "rows", "3d", "strings"])
def test_damaged_file_raises_naming_it_and_validate_reports_it(archive, how):
    path, _ = archive
    f = _damage(path, how)
    ds = SingleCellMemMapDataset(path)  # the matrix itself is sound
    with pytest.raises(ArchiveError, match=f.name):
        ds.obsm("X_emb")
    problems = validate_archive(path)
    assert any(str(f) in p for p in problems if "checksum" not in p), problems
    assert any(str(f) in p for p in verify_manifest(path))


def test_flipped_value_caught_by_checksums(archive):
    path, _ = archive
    f = path / "obsm" / "X_emb.npy"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(raw)
    SingleCellMemMapDataset(path).obsm("X_emb")  # well-formed: only the checksums can tell
    assert any(str(f) in p and "checksum" in p for p in validate_archive(path))


def test_foreign_file_in_obsm_dir_reported(archive):
    path, _ = archive
    (path / "obsm" / "notes.txt").write_text("hi")
    assert any("notes.txt" in p and "not an obsm array file" in p for p in validate_archive(path))


def test_sound_archive_validates(archive):
    path, emb = archive
    assert validate_archive(path) == []
    np.testing.assert_array_equal(SingleCellMemMapDataset(path).obsm("X_emb"), emb)


def test_merge_rules():
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    both = merge_obsm([("a", {"k": (i64, 2)}), ("b", {"k": (i64, 2)})], ["k"])
    assert both == {"k": (i64, 2)}
    assert merge_obsm([("a", {"k": (i64, 2)}), ("b", {})], ["k"]) == {"k": (np.dtype(np.float64), 2)}
    assert merge_obsm([("a", {"k": (f32, 2)}), ("b", {})], ["k"]) == {"k": (f32, 2)}
    assert merge_obsm([("a", {"k": (f32, 2)}), ("b", {"k": (i64, 2)})], ["k"])["k"][0] == np.float64
    with pytest.raises(ValueError, match=r"different widths across inputs: a \(2\), b \(3\)"):
        merge_obsm([("a", {"k": (f32, 2)}), ("b", {"k": (f32, 3)})], ["k"])
    with pytest.raises(ValueError, match="in none of the inputs"):
        merge_obsm([("a", {}), ("b", {})], ["k"])


def test_concat_aligns_missing_keys_with_nan(tmp_path):
    rng = np.random.default_rng(1)
    umap_a, pca_a = rng.normal(size=(20, 2)), rng.integers(0, 9, size=(20, 4))
    pca_b = rng.integers(0, 9, size=(15, 4))
    a = convert_h5ad(_h5ad(tmp_path / "a.h5ad", 20, {"X_umap": umap_a, "X_pca": pca_a}), tmp_path / "a.scdl",
                     use_X_not_raw=True, obsm_keys=["X_umap", "X_pca"])
    b = convert_h5ad(_h5ad(tmp_path / "b.h5ad", 15, {"X_pca": pca_b}, seed=1), tmp_path / "b.scdl",
                     use_X_not_raw=True, obsm_keys=["X_pca"])
    c = convert_h5ad(_h5ad(tmp_path / "c.h5ad", 7, {}, seed=2), tmp_path / "c.scdl", use_X_not_raw=True)
    out = concat_archives([a, b, c], tmp_path / "abc.scdl", chunk=8)  # several copy steps per member
    ds = SingleCellMemMapDataset(out)
    assert ds.obsm_keys() == ["X_pca", "X_umap"]
    umap, pca = ds.obsm("X_umap"), ds.obsm("X_pca")
    assert umap.dtype == np.float64 and pca.dtype == np.float64  # int64 + a member without it
    np.testing.assert_array_equal(umap[:20], umap_a)
    assert np.isnan(umap[20:]).all()
    np.testing.assert_array_equal(pca[:35], np.concatenate([pca_a, pca_b]))
    assert np.isnan(pca[35:]).all()
    assert validate_archive(out) == []
    # upstream's API, in place: the target keeps its rows and gains the others'
    ds_a = SingleCellMemMapDataset(shutil.copytree(a, tmp_path / "a2.scdl"))
    ds_a.concat(SingleCellMemMapDataset(b))
    np.testing.assert_array_equal(ds_a.obsm("X_pca"), np.concatenate([pca_a, pca_b]))


def test_concat_refuses_different_widths(tmp_path):
    a = convert_h5ad(_h5ad(tmp_path / "a.h5ad", 5, {"X_pca": np.ones((5, 3))}), tmp_path / "a.scdl",
                     use_X_not_raw=True, obsm_keys=["X_pca"])
    b = convert_h5ad(_h5ad(tmp_path / "b.h5ad", 5, {"X_pca": np.ones((5, 4))}), tmp_path / "b.scdl",
                     use_X_not_raw=True, obsm_keys=["X_pca"])
    with pytest.raises(ValueError, match=rf"different widths.*{a.name} \(3\).*{b.name} \(4\)"):
        concat_archives([a, b], tmp_path / "ab.scdl")
    assert not (tmp_path / "ab.scdl").exists()


def test_summary_lists_obsm(archive):
    from scdl_gpu.archive import archive_summary, format_summary

    path, _ = archive
    s = archive_summary(path)
    assert s["obsm"] == {"X_emb": ["float32", 5]}
    assert "obsm:      X_emb (5 x float32)" in format_summary(s).splitlines()
    assert any(line.strip().startswith("obsm/") and line.endswith("(1 file)") for line in format_summary(s).splitlines())
    _damage(path, "truncated")
    assert archive_summary(path)["obsm"] == {"X_emb": None}


def test_cast_keeps_obsm(archive, tmp_path):
    path, emb = archive
    ds = SingleCellMemMapDataset(shutil.copytree(path, tmp_path / "cast.scdl"))
    ds.cast_data_to_dtype("uint8")
    np.testing.assert_array_equal(ds.obsm("X_emb"), emb)
    assert validate_archive(ds.data_path) == []
