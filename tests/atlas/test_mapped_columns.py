"""Materialized atlases: members' columns stored already mapped onto the vocabulary give the
same batches as the maps do, and a damaged copy is an ArchiveError naming it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from scdl_gpu.atlas import add_members, create_atlas, read_manifest
from scdl_gpu.atlas._columns import eligible
from scdl_gpu.atlas._validate import validate_atlas
from scdl_gpu.backend import BatchOptions, get_backend
from scdl_gpu.cli import main
from scdl_gpu.errors import ArchiveError
from tests.atlas.members import ALL_GENES, expected_rows, make_member

ELIGIBLE = ["m0", "m2", "m3"]  # sorted genes, kept whole by the vocabularies below; m1 permuted, m4 chunked


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mapped")
    rng = np.random.default_rng(5)
    return [
        make_member(tmp, 0, 40, ALL_GENES[:25], data_dtype="float32"),
        make_member(tmp, 1, 17, list(rng.permutation(ALL_GENES[10:35])), (0, 5)),
        make_member(tmp, 2, 23, ALL_GENES[5:15] + ALL_GENES[30:40], (3,), shuffle_cols=True),
        make_member(tmp, 3, 31, ALL_GENES[::2], data_dtype="uint16"),
        make_member(tmp, 4, 19, ALL_GENES[1::3], chunk_size=6),
    ]


def _vocab(tmp_path, kind):
    if kind == "union":
        return "union"
    genes = tmp_path / "genes.txt"  # every member gene, sorted, and genes no member has
    genes.write_text("\n".join(["AAA_NOT_A_GENE"] + ALL_GENES + ["ZZZ_NOT_A_GENE"]) + "\n")
    return genes


def _rows(backend, order):
    n = backend.n_rows
    if order == "block":
        return np.concatenate([np.arange(s, min(s + 16, n)) for s in range(0, n, 16)][::-1])
    return np.random.default_rng(1).integers(0, n, 2 * n)


@pytest.mark.parametrize("vocab", ["union", "list"])
@pytest.mark.parametrize("order", ["block", "random"])
def test_materialized_batches_equal_the_mapped_ones(tmp_path, members, vocab, order):
    paths = [p for p, _ in members]
    plain = create_atlas(tmp_path / "plain", paths, gene_vocab=_vocab(tmp_path, vocab))
    atlas = create_atlas(tmp_path / "mat", paths, gene_vocab=_vocab(tmp_path, vocab), materialize=True)
    # union: first-seen order (m1's genes are not sorted), which reorders m2's and m3's genes too
    assert [m.name for m in atlas.members if m.mapped_columns] == (ELIGIBLE if vocab == "list" else ["m0"])
    assert eligible(atlas.members[4]) == (vocab == "list") and not atlas.members[4].mapped_columns  # chunked
    for m in atlas.members:
        if m.mapped_columns:
            assert m.mapped_dtype == "uint8" and (atlas.root / m.mapped_columns).is_file()
    expected = expected_rows(members, list(atlas.genes))
    remap = np.where(np.arange(atlas.n_genes) % 4 == 1, -1, np.arange(atlas.n_genes) // 2)  # drops and merges none
    remap[remap >= 0] = np.arange(int((remap >= 0).sum()))
    for options in (BatchOptions(), BatchOptions(gene_remap=remap)):
        with get_backend(plain.root, device="cpu", options=options) as a, \
             get_backend(atlas.root, device="cpu", options=options) as b:
            assert list(b._identity) == [options.gene_remap is None and m.mapped_columns is not None
                                         for m in atlas.members]
            for rows in np.array_split(_rows(a, order), 5):
                x, y = a.batch(rows), b.batch(rows)
                for t in ("crow", "col", "values"):
                    assert np.array_equal(getattr(x, t).numpy(), getattr(y, t).numpy()), t
                dense = y.to_sparse_csr().to_dense().numpy()
                want = expected[rows]
                if options.gene_remap is not None:
                    want = np.stack([np.bincount(remap[remap >= 0], r[remap >= 0], y.shape[1]) for r in want]) \
                        if len(want) else np.zeros((0, y.shape[1]))
                assert np.allclose(dense, want)


def _materialized(tmp_path, members):
    return create_atlas(tmp_path / "atlas", [p for p, _ in members], materialize=True)


def test_damaged_mapped_columns_are_archive_errors_naming_them(tmp_path, members):
    atlas = _materialized(tmp_path, members)
    m = atlas.members[0]
    file = atlas.root / m.mapped_columns
    good = file.read_bytes()
    with open(file, "r+b") as f:
        f.truncate(len(good) - 1)
    with pytest.raises(ArchiveError, match=str(file)):
        get_backend(atlas.root, device="cpu")
    file.write_bytes(good)
    cols = np.load(file, mmap_mode="r+")
    cols[5] = atlas.n_genes  # a column of no vocabulary gene
    cols.flush()
    del cols
    with get_backend(atlas.root, device="cpu") as backend:
        with pytest.raises(ArchiveError, match=rf"{file}: row \d+ holds column {atlas.n_genes}, expected < {atlas.n_genes}"):
            backend.batch(np.arange(m.n_rows))
    file.unlink()
    with pytest.raises(ArchiveError, match="mapped columns of atlas member 'm0' are missing"):
        get_backend(atlas.root, device="cpu")


def test_validate_catches_a_flipped_byte(tmp_path, members):
    atlas = _materialized(tmp_path, members)
    assert validate_atlas(atlas.root).problems == []
    file = atlas.root / atlas.members[0].mapped_columns
    raw = bytearray(file.read_bytes())
    raw[-1] ^= 1  # still a valid column: only the checksum tells
    file.write_bytes(bytes(raw))
    with get_backend(atlas.root, device="cpu"):
        pass  # opening checks length and dtype, not the checksum
    problems = validate_atlas(atlas.root).problems
    assert len(problems) == 1 and "[member m0]" in problems[0] and "checksum" in problems[0] and str(file) in problems[0]


def test_manifests_without_the_keys_open(tmp_path, members):
    atlas = _materialized(tmp_path, members)
    doc = json.loads((atlas.root / "atlas.json").read_text())
    for m in doc["members"]:
        for key in ("mapped_columns", "mapped_checksum", "mapped_dtype"):
            del m[key]
    (atlas.root / "atlas.json").write_text(json.dumps(doc))
    old = read_manifest(atlas.root)
    assert all(m.mapped_columns is None for m in old.members)
    with get_backend(old.root, device="cpu") as backend:
        assert not backend._identity.any()
        assert np.allclose(backend.batch(np.arange(old.n_rows)).to_sparse_csr().to_dense().numpy(),
                           expected_rows(members, list(old.genes)))
    doc["members"][0]["mapped_columns"] = "columns/x.npy"  # only part of the three keys
    (atlas.root / "atlas.json").write_text(json.dumps(doc))
    with pytest.raises(ArchiveError, match="only part of its mapped columns"):
        read_manifest(atlas.root)


def test_add_keeps_unchanged_copies_and_drops_stale_ones(tmp_path, members):
    paths = [p for p, _ in members]
    root = tmp_path / "atlas"
    before = create_atlas(root, [paths[0]], materialize=True)
    after = add_members(root, [paths[3]], materialize=True)  # union: appended genes, m0's map unchanged
    assert after.members[0].mapped_columns == before.members[0].mapped_columns and after.members[1].mapped_columns
    inter = tmp_path / "inter"
    first = create_atlas(inter, [paths[0]], gene_vocab="intersection", materialize=True)
    assert first.members[0].mapped_columns
    shrunk = add_members(inter, [paths[3]])  # the intersection drops genes of m0: its copy is not kept
    assert [m.mapped_columns for m in shrunk.members] == [None, None]
    with get_backend(inter, device="cpu") as backend:
        got = backend.batch(np.arange(shrunk.n_rows)).to_sparse_csr().to_dense().numpy()
    assert np.allclose(got, expected_rows([members[0], members[3]], list(shrunk.genes)))


def test_cli_materialize_and_info(tmp_path, members, capsys):
    root = tmp_path / "atlas"
    assert main(["atlas", "create", str(root), str(members[0][0]), str(members[3][0]), "--materialize"]) == 0
    assert "columns materialized for 2 of 2 members" in capsys.readouterr().out
    assert main(["atlas", "add", str(root), str(members[1][0]), "--materialize"]) == 0  # permuted genes: skipped
    assert "columns materialized for 2 of 3 members (not for m1:" in capsys.readouterr().out
    assert main(["atlas", "info", str(root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [m["mapped_columns"] is not None for m in s["members"]] == [True, True, False]
    assert main(["atlas", "info", str(root)]) == 0
    assert capsys.readouterr().out.count("[columns materialized]") == 2
    shutil.rmtree(root)
