"""AtlasBackend: every batch equals the members' source rows mapped onto the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from scdl_gpu.atlas import create_atlas
from scdl_gpu.backend import BatchOptions, get_backend, gpu_available
from scdl_gpu.backend import _gather_remap
from scdl_gpu.backend._atlas import AtlasBackend, AtlasMemberReader
from scdl_gpu.errors import ArchiveError
from tests.atlas.members import ALL_GENES, expected_rows, make_member, make_members

DTYPES = ["uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    return make_members(tmp_path_factory.mktemp("members"))


@pytest.fixture(scope="module", params=["with_chunked", "all_flat"])
def varied(tmp_path_factory, request):
    """One member per stored value dtype, each with its own quirk: permuted gene order, empty rows,
    unsorted columns, the chunked layout (``all_flat``: none, so the backend plans every row in one
    compiled pass), genes other members lack."""
    flat = request.param == "all_flat"
    tmp = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(3)
    quirks = [
        dict(genes=ALL_GENES[:25]),
        dict(genes=list(rng.permutation(ALL_GENES[10:35])), empty_rows=(0, 4)),
        dict(genes=ALL_GENES[5:15] + ALL_GENES[30:40], shuffle_cols=True),
        dict(genes=list(rng.permutation(ALL_GENES)), shuffle_cols=True, empty_rows=(3,)),
        dict(genes=ALL_GENES[::2], chunk_size=5),
        dict(genes=list(rng.permutation(ALL_GENES[::3])), chunk_size=4, empty_rows=(1,)),
        dict(genes=ALL_GENES[20:], shuffle_cols=True),
    ]
    out = []
    for k, (dt, q) in enumerate(zip(DTYPES, quirks)):
        q = dict(q)
        if flat:
            q.pop("chunk_size", None)
        out.append(make_member(tmp, k, 11 + 3 * k, q.pop("genes"), q.pop("empty_rows", ()), data_dtype=dt, **q))
    return tmp, out


def _orders(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "sequential": np.arange(n),
        "random": rng.permutation(n),
        "repeats": rng.integers(0, n, 3 * n),
        "reversed_blocks": np.concatenate([np.arange(s, min(s + 8, n)) for s in range(0, n, 8)][::-1]),
        "one": np.array([n - 1]),
        "none": np.zeros(0, np.int64),
    }


def _dense(batch) -> np.ndarray:
    if batch.dense is not None:
        return batch.dense.numpy()
    return batch.to_sparse_csr().to_dense().numpy()


def _check_csr(batch, width: int) -> None:
    crow, col = batch.crow.numpy(), batch.col.numpy()
    assert batch.sorted and crow[0] == 0 and crow[-1] == len(col) and batch.shape[1] == width
    for i in range(len(crow) - 1):
        assert np.all(np.diff(col[crow[i] : crow[i + 1]]) > 0)  # sorted, no duplicate genes


@pytest.mark.parametrize("vocab", ["union", "intersection", "list"])
@pytest.mark.parametrize("output", ["csr", "dense"])
def test_batches_equal_members_mapped_onto_vocabulary(tmp_path, members, vocab, output):
    gene_vocab = vocab
    if vocab == "list":  # some genes no member has, some every member lacks, in a new order
        gene_vocab = tmp_path / "genes.txt"
        gene_vocab.write_text("\n".join(["NOT_A_GENE"] + ALL_GENES[::-3]) + "\n")
    atlas = create_atlas(tmp_path / "atlas", [p for p, _ in members], gene_vocab=gene_vocab)
    expected = expected_rows(members, list(atlas.genes))
    backend = get_backend(tmp_path / "atlas", device="cpu", options=BatchOptions(dense=output == "dense"))
    assert backend.width == atlas.n_genes and backend.n_rows == atlas.n_rows == 70
    for name, rows in _orders(atlas.n_rows).items():
        b = backend.batch(rows)
        assert np.array_equal(b.rows, rows)
        got = _dense(b)
        assert got.shape == (len(rows), atlas.n_genes) and got.dtype == np.float32
        assert np.array_equal(got, expected[rows]), name
        if output == "csr":
            _check_csr(b, atlas.n_genes)


@pytest.mark.parametrize("value_dtype", ["float32", "float64", "float16"])
def test_every_stored_dtype_and_quirk(varied, value_dtype, launch):
    tmp, mem = varied
    atlas = create_atlas(tmp / f"atlas_{value_dtype}_{launch}", [p for p, _ in mem])
    assert [m.data_dtype for m in atlas.members] == DTYPES
    assert not atlas.members[1].monotone and not atlas.members[2].rows_sorted
    expected = expected_rows(mem, list(atlas.genes))
    backend = AtlasBackend(atlas.root, BatchOptions(value_dtype=value_dtype))
    chunked = any((p / "chunk_00000").is_dir() for p, _ in mem)
    assert (backend._direct is None) == chunked  # the one-pass planner serves atlases of flat members
    for name, rows in _orders(atlas.n_rows).items():
        b = backend.batch(rows)
        assert b.values.numpy().dtype == np.dtype(value_dtype)
        assert np.array_equal(_dense(b).astype(np.float64), expected[rows]), name
        _check_csr(b, atlas.n_genes)


def test_transforms_match_the_reference_on_mapped_rows(varied):
    tmp, mem = varied
    atlas = create_atlas(tmp / "atlas_t", [p for p, _ in mem], gene_vocab=ALL_GENES[1::2])  # drops genes of each
    expected = expected_rows(mem, list(atlas.genes))
    rows = np.random.default_rng(1).permutation(atlas.n_rows)
    for dense in (False, True):
        opts = BatchOptions(target_sum=1e4, log1p=True, dense=dense, value_dtype="float64")
        got = _dense(get_backend(atlas.root, device="cpu", options=opts).batch(rows))
        sums = expected[rows].sum(axis=1, keepdims=True)  # the kept genes' sum: dropped genes do not count
        want = np.log1p(expected[rows] * np.where(sums > 0, 1e4 / np.where(sums > 0, sums, 1), 1))
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_gene_remap_composes_and_n_cols(members, tmp_path):
    atlas = create_atlas(tmp_path / "atlas", [p for p, _ in members])
    expected = expected_rows(members, list(atlas.genes))
    remap = np.full(atlas.n_genes, -1, np.int64)
    remap[::2] = np.arange(len(remap[::2]))[::-1]  # keep every other vocabulary gene, reversed
    b = get_backend(atlas.root, device="cpu", options=BatchOptions(gene_remap=remap)).batch(np.arange(atlas.n_rows))
    want = np.zeros((atlas.n_rows, int(remap.max()) + 1))
    want[:, remap[::2]] = expected[:, ::2]
    assert np.array_equal(_dense(b), want)
    _check_csr(b, want.shape[1])
    wide = get_backend(atlas.root, device="cpu", options=BatchOptions(n_cols=atlas.n_genes + 5)).batch([0, 69])
    assert wide.shape == (2, atlas.n_genes + 5) and np.array_equal(_dense(wide)[:, : atlas.n_genes], expected[[0, 69]])
    with pytest.raises(ValueError, match="narrower"):
        get_backend(atlas.root, device="cpu", options=BatchOptions(n_cols=3))
    with pytest.raises(ValueError, match="gene_remap has 2 entries"):
        get_backend(atlas.root, device="cpu", options=BatchOptions(gene_remap=np.array([0, 1])))


def test_groups_rows_out_of_range_and_refusals(members, tmp_path):
    atlas = create_atlas(tmp_path / "atlas", [p for p, _ in members])
    backend = get_backend(atlas.root, device="auto")  # an atlas reads on the CPU
    names, offsets = backend.groups
    assert names == ["m0", "m1", "m2"] and offsets.dtype == np.int64 and list(offsets) == [0, 30, 47, 70]
    assert backend.device == "cpu"
    with pytest.raises(IndexError, match="out of range"):
        backend.batch([0, 70])
    with pytest.raises(IndexError):
        backend.batch([-1])
    if not gpu_available():  # device="cuda" copies batches to a GPU: without one, a clear error
        with pytest.raises(RuntimeError):
            get_backend(atlas.root, device="cuda")
    with pytest.raises(ValueError, match="residency"):
        get_backend(atlas.root, device="cuda", residency="device")
    with pytest.raises(ValueError, match="residency"):
        get_backend(atlas.root, device="cpu", residency="pinned")


def test_a_member_read_through_spans(members, tmp_path):
    """A member that is no local memmap supplies its rows through ``read_spans`` (a remote archive)."""
    atlas = create_atlas(tmp_path / "atlas", [p for p, _ in members], gene_vocab="intersection")
    local = get_backend(members[1][0], device="cpu")

    class Spans:
        row_ptr, dtypes, width = local.row_ptr, local.dtypes, local.archive_cols
        calls = 0

        def read_spans(self, starts, lengths):
            Spans.calls += 1
            idx = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)] + [np.zeros(0, np.int64)])
            return np.asarray(local.data)[idx], np.asarray(local.col_ptr)[idx]

    reader = AtlasMemberReader.from_spans("m1", members[1][0], Spans())
    backend = AtlasBackend(atlas.root, readers={1: reader})
    rows = np.random.default_rng(2).permutation(atlas.n_rows)
    assert np.array_equal(_dense(backend.batch(rows)), expected_rows(members, list(atlas.genes))[rows])
    assert Spans.calls == 1  # one read per batch for the member


def test_replaced_member_is_an_archive_error_naming_it(members, tmp_path):
    import shutil

    work = tmp_path / "m"
    paths = [shutil.copytree(p, work / p.name) for p, _ in members]
    atlas = create_atlas(tmp_path / "atlas", paths)
    shutil.rmtree(paths[2])
    shutil.copytree(members[0][0], paths[2])  # another archive under the member's name
    with pytest.raises(ArchiveError, match=r"m2\.scdl: atlas member 'm2'.*(checksums|rows)"):
        AtlasBackend(atlas.root)


@pytest.fixture(params=["serial", "parallel"])
def launch(request, monkeypatch):
    """Run the remap passes serially, or in parallel whatever the batch size."""
    from scdl_gpu.backend import _gather

    monkeypatch.setattr(_gather, "PARALLEL_MIN_VALUES", 0 if request.param == "parallel" else 1 << 40)
    return request.param


def test_remap_pass_against_its_reference(launch):
    """Two members of one dtype in one pass, rows interleaved: each row as the NumPy twin maps it."""
    rng = np.random.default_rng(5)
    members, refs = [], []
    for width in (30, 17):
        lens = rng.integers(0, 12, 40).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        cols = np.concatenate([rng.permutation(width)[:n] for n in lens]).astype(np.uint32)
        data = rng.integers(1, 1000, len(cols)).astype(np.uint64)
        cmap = np.where(rng.random(width) < 0.3, -1, rng.permutation(40)[:width]).astype(np.int32)
        members.append(dict(data=data, cols=cols, starts=starts, lens=lens, width=width, cmap=cmap))
    maps, map_at = _gather_remap.concat_maps([m["cmap"] for m in members])
    widths = np.array([30, 17], np.int64)
    drops = np.array([True, True])
    arrays = [(m["data"], m["cols"]) for m in members]
    who = rng.integers(0, 2, 60)  # which member each batch row comes from
    pick = [rng.integers(0, 40, (who == k).sum()) for k in range(2)]
    mem = who.astype(np.int64)
    starts = np.empty(60, np.int64)
    lens = np.empty(60, np.int64)
    for k in range(2):
        starts[who == k] = members[k]["starts"][pick[k]]
        lens[who == k] = members[k]["lens"][pick[k]]
    for sort in (False, True):
        want = [_gather_remap.gather_remap_reference(m["data"], m["cols"], [s], [n], m["width"], m["cmap"], "float32",
                                                     "int32", sort) for s, n, m in zip(starts, lens, [members[k] for k in who])]
        kept = _gather_remap.count_kept(arrays, mem, starts, lens, widths, maps, map_at)
        assert list(kept) == [w[0][-1] for w in want]
        ptr = np.concatenate([[0], np.cumsum(kept)])
        out_v, out_c = np.full(ptr[-1], -1, np.float32), np.full(ptr[-1], -1, np.int32)
        _gather_remap.gather_remap(arrays, mem, starts, lens, ptr[:-1], widths, maps, map_at, drops,
                                   np.array([sort, sort]), out_v, out_c)
        assert np.array_equal(out_v, np.concatenate([w[1] for w in want]))
        assert np.array_equal(out_c, np.concatenate([w[2] for w in want]))
    bad = members[1]["cols"].copy()
    row = int(np.flatnonzero((who == 1) & (lens > 0))[0])
    bad[starts[row]] = 17  # the member's width: a column of the vocabulary, not of the member
    with pytest.raises(ArchiveError, match=r"m1/col_ptr\.npy: row 7 holds column 17, expected < 17"):
        _gather_remap.count_kept([arrays[0], (members[1]["data"], bad)], mem, starts, lens, widths, maps, map_at,
                                 archives=["m0", "m1"], rows=np.where(np.arange(60) == row, 7, 0))


@pytest.mark.parametrize("width", [1500, 5000, 3_000_000])  # one, two and three radix passes
def test_long_rows_of_a_permuted_member_sort_like_the_reference(width, launch):
    rng = np.random.default_rng(width)
    lens = rng.integers(0, 600, 30).astype(np.int64)
    lens[0] = 65  # just above the radix sort's threshold
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    cols = np.concatenate([np.sort(rng.choice(width, n, replace=False)) for n in lens]).astype(np.uint32)
    data = rng.random(len(cols)).astype(np.float64)
    cmap = rng.permutation(width).astype(np.int32)
    cmap[rng.random(width) < 0.1] = -1
    mem, widths = np.zeros(30, np.int64), np.array([width], np.int64)
    for drops in (False, True):
        m = cmap if drops else np.abs(cmap)  # without drops: every column kept
        maps, map_at = _gather_remap.concat_maps([m])
        ptr, want_v, want_c = _gather_remap.gather_remap_reference(data, cols, starts, lens, width, m, "float64", "int64", True)
        out_v, out_c = np.empty(ptr[-1]), np.empty(ptr[-1], np.int64)
        _gather_remap.gather_remap([(data, cols)], mem, starts, lens, ptr[:-1], widths, maps, map_at,
                                   np.array([drops]), np.array([True]), out_v, out_c)
        assert np.array_equal(out_c, want_c) and np.array_equal(out_v, want_v)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int32", "int64"])
def test_the_one_pass_planner_equals_planning_each_member(dtype):
    rng = np.random.default_rng(5)
    sizes = [7, 0, 12, 1, 0, 9]  # empty members are stepped over
    ptrs = [np.concatenate([[0], np.cumsum(rng.integers(0, 9, n))]).astype(dtype) for n in sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_data = np.array([int(p[-1]) + 3 for p in ptrs], np.int64)  # value files may run past the last row
    pointers = _gather_remap.row_pointers(ptrs)
    rows = np.concatenate([rng.integers(0, offsets[-1], 200), [0, offsets[-1] - 1]]).astype(np.int64)
    status, _, member, local, starts, lens = _gather_remap.plan_members(pointers, n_data, offsets, rows)
    assert status == 0
    expect_member = np.searchsorted(offsets, rows, side="right") - 1
    assert np.array_equal(member, expect_member) and np.array_equal(local, rows - offsets[member])
    for i, (k, j) in enumerate(zip(member, local)):
        assert starts[i] == int(ptrs[k][j]) and lens[i] == int(ptrs[k][j + 1]) - int(ptrs[k][j])
    assert _gather_remap.plan_members(pointers, n_data, offsets, np.array([3, offsets[-1]]))[:2] == (1, 1)
    assert _gather_remap.plan_members(pointers, n_data, offsets, np.array([-1]))[:2] == (1, 0)
    bad = [p.copy() for p in ptrs]
    bad[2][4] = bad[2][5] + 1  # not monotone: row 4 of member 2 ends before it starts (row 3 is fine)
    status, i, member, local, *_ = _gather_remap.plan_members(_gather_remap.row_pointers(bad), n_data, offsets,
                                                              np.array([0, 7 + 3, 7 + 4]))
    assert (status, i, int(member[i]), int(local[i])) == (2, 2, 2, 4)
    assert _gather_remap.row_pointers([ptrs[0].astype(np.float32)]) is None  # not a pointer dtype: the other route


def test_the_loaders_hint_reaches_a_compressed_member(members, tmp_path, monkeypatch):
    """``will_need`` passes each member its own rows: a compressed member starts decoding them."""
    from scdl_gpu.archive._compressed import compress_archive

    packed = tmp_path / "m1-z.scdl"
    compress_archive(members[1][0], packed, chunk_size=4)
    atlas = create_atlas(tmp_path / "atlas", [members[0][0], packed, members[2][0]])
    backend = AtlasBackend(atlas.root)
    hinted = {}
    for k, m in enumerate(backend.members):
        real = m.reader.will_need
        m.reader.will_need = lambda rows, k=k, real=real: hinted.setdefault(k, []).extend(rows) or real(rows)
    names, offsets = backend.groups
    rows = np.array([offsets[1] + 9, 0, offsets[1] + 1, offsets[2] + 3, -1, atlas.n_rows])  # outside: ignored
    backend.will_need(rows)
    assert sorted(hinted) == [0, 1, 2] and sorted(hinted[1]) == [1, 9] and hinted[0] == [0] and hinted[2] == [3]
    storage = backend.members[1].reader.compact.__self__.chunks  # the member's own CPU backend
    assert set(storage._ahead) | set(storage.cache._items) == {0, 2}  # chunks of rows 1 and 9, decoding or done
    got = _dense(backend.batch(rows[:4]))
    assert np.array_equal(got, expected_rows(members, list(atlas.genes))[rows[:4]])
