"""The atlas manifest: create, add, read back, and refuse what does not hold together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scdl_gpu.atlas import MANIFEST, add_members, create_atlas, is_atlas, open_atlas
from scdl_gpu.errors import ArchiveError, ArchiveNotFoundError
from tests.atlas.members import ALL_GENES, make_members


@pytest.fixture
def members(tmp_path):
    return make_members(tmp_path)


def test_union_atlas_records_members_maps_and_obs(tmp_path, members):
    atlas = create_atlas(tmp_path / "atlas", [p for p, _ in members])
    assert is_atlas(tmp_path / "atlas") and not is_atlas(members[0][0])
    assert atlas.names == ["m0", "m1", "m2"]
    assert atlas.n_rows == sum(a.n_obs for _, a in members) and list(atlas.offsets) == [0, 30, 47, 70]
    assert sorted(atlas.genes) == sorted(set().union(*(a.var_names for _, a in members)))
    for i, (_, a) in enumerate(members):
        cmap = atlas.column_map(i)
        assert list(atlas.genes[cmap]) == list(a.var_names)  # union: every gene kept
        assert atlas.members[i].monotone == bool(np.all(np.diff(cmap) > 0))
    assert atlas.members[1].monotone is False  # its genes come in another order
    assert atlas.obs_schema["cell_type"] == "category" and atlas.obs_schema["score"] == "float64"
    assert atlas.members[0].path == "../m0.scdl" or atlas.member_path(0).resolve() == members[0][0].resolve()


def test_intersection_and_gene_list(tmp_path, members):
    inter = create_atlas(tmp_path / "i", [p for p, _ in members], gene_vocab="intersection")
    common = set.intersection(*(set(a.var_names) for _, a in members))
    assert set(inter.genes) == common
    for i in range(3):
        cmap = inter.column_map(i)
        assert inter.members[i].kept == len(common) and (cmap == -1).sum() == members[i][1].n_vars - len(common)
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(ALL_GENES[::-1][:12]) + "\n")
    listed = create_atlas(tmp_path / "l", [p for p, _ in members], gene_vocab=genes)
    assert list(listed.genes) == ALL_GENES[::-1][:12] and listed.vocab_mode == "list"


def test_add_appends_genes_without_moving_columns(tmp_path, members):
    first = create_atlas(tmp_path / "atlas", [members[0][0]])
    maps_before = first.column_map(0)
    after = add_members(tmp_path / "atlas", [p for p, _ in members[1:]])
    assert after.names == ["m0", "m1", "m2"] and list(after.genes[: first.n_genes]) == list(first.genes)
    assert np.array_equal(after.column_map(0), maps_before)
    assert open_atlas(tmp_path / "atlas").n_rows == 70
    with pytest.raises(ValueError, match="unique"):
        add_members(tmp_path / "atlas", [members[0][0]])
    add_members(tmp_path / "atlas", [members[0][0]], names=["m0_again"])
    assert open_atlas(tmp_path / "atlas").names[-1] == "m0_again"


def test_refusals(tmp_path, members):
    root = tmp_path / "atlas"
    create_atlas(root, [members[0][0]])
    with pytest.raises(FileExistsError):
        create_atlas(root, [members[1][0]])
    with pytest.raises(ArchiveNotFoundError):
        create_atlas(tmp_path / "x", [tmp_path / "nothing.scdl"])
    with pytest.raises(ValueError, match="atlases do not nest"):
        create_atlas(tmp_path / "y", [root])
    with pytest.raises(ValueError, match="no column .no_such_column"):
        create_atlas(tmp_path / "z", [members[0][0]], gene_key="no_such_column")
    with pytest.raises(ArchiveNotFoundError, match="not an atlas"):
        open_atlas(tmp_path / "x")


def test_damaged_manifest_and_maps_are_archive_errors(tmp_path, members):
    root = tmp_path / "atlas"
    atlas = create_atlas(root, [p for p, _ in members])
    (root / atlas.members[0].column_map).write_bytes((root / atlas.members[1].column_map).read_bytes())
    with pytest.raises(ArchiveError, match="checksum"):
        open_atlas(root).column_map(0)
    doc = json.loads((root / MANIFEST).read_text())
    doc["n_rows"] += 1
    (root / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ArchiveError, match="n_rows"):
        open_atlas(root)
    (root / MANIFEST).write_text("{not json")
    with pytest.raises(ArchiveError, match=MANIFEST):
        open_atlas(root)


def test_union_of_sorted_members_is_sorted_so_every_map_increases(tmp_path):
    from tests.atlas.members import ALL_GENES

    specs = [(6, ALL_GENES[10:30], ()), (5, ALL_GENES[0:5] + ALL_GENES[20:35], ()), (4, ALL_GENES[::3], ())]
    members = make_members(tmp_path, specs)
    atlas = create_atlas(tmp_path / "atlas", [p for p, _ in members])
    assert list(atlas.genes) == sorted(set().union(*(set(s[1]) for s in specs)))
    assert all(m.monotone for m in atlas.members)
    # first-seen order would have put member 1's first genes after member 0's: not increasing
    first_seen = create_atlas(tmp_path / "fs", [p for p, _ in members], gene_vocab=list(dict.fromkeys(
        g for s in specs for g in s[1])))
    assert not first_seen.members[1].monotone
