"""Pre-shuffled archives (``row_order="shuffle"``): the same rows, each traceable to its input row,
in a seeded order that no memory budget changes, with nothing left behind on failure or cancel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu import SingleCellMemMapDataset, convert_h5ad
from scdl_gpu.archive import archive_summary, format_summary, validate_archive
from scdl_gpu.archive._constants import FileNames
from scdl_gpu.archive._reader import load_feature_index
from scdl_gpu.convert import ConversionInterrupted, convert_many
from scdl_gpu.convert import _shuffle
from scdl_gpu.errors import ConversionError
from tests.conftest import make_adata, random_csr
from tests.convert.sources import reference
from tests.convert.test_cancel import default_sigint

GENES = [f"ENSG{i:011d}" for i in range(60)]


def _input(tmp: Path, name: str, n: int, seed: int, graph: bool = True, genes=GENES) -> Path:
    """An h5ad whose cells are grouped (cell i of input k), with a ring graph i -> i + 1 (mod n)."""
    a = make_adata(random_csr(n, len(genes), density=0.2, seed=seed, empty_rows=(1,)), seed=seed)
    a.var.index = genes
    a.obs_names = [f"{name}-cell{i}" for i in range(n)]
    if graph:
        a.obsp["nn"] = sp.csr_matrix(np.roll(np.eye(n, dtype=np.float32), 1, axis=1) * 0.5)
    p = tmp / f"{name}.h5ad"
    a.write_h5ad(p)
    return p


@pytest.fixture
def inputs(tmp_path) -> list[Path]:
    return [_input(tmp_path, "a", 70, 1), _input(tmp_path, "b", 45, 2)]


def _obs(archive: Path) -> tuple[dict, np.ndarray]:
    obs = load_feature_index(archive, FileNames.OBS_FEATURES)
    assert len(obs) == 1  # one block: rows of all inputs interleave
    return obs._feature_arr[0], obs.names(0)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _files(archive: Path) -> dict[str, bytes]:
    return {p.relative_to(archive).as_posix(): p.read_bytes() for p in sorted(archive.rglob("*")) if p.is_file()}


def test_rows_obs_names_and_neighbors_follow_their_rows(tmp_path, inputs):
    report = convert_many(inputs, tmp_path / "out", use_X_not_raw=True, neighbor_key="nn", row_order="shuffle", seed=7)
    assert (report.shuffle_seed, report.n_rows) == (7, 115) and report.shuffle_buckets >= 1
    assert validate_archive(report.archive) == []
    ds = SingleCellMemMapDataset(report.archive, load_neighbors=True)
    obs, names = _obs(report.archive)
    src_file, src_row = obs["source_file"], obs["source_row"]
    assert src_row.dtype == np.int64
    # every input row exactly once (a permutation), and not the input order
    pairs = sorted(zip(src_file.tolist(), src_row.tolist()))
    assert pairs == sorted((str(p), i) for p, n in zip(inputs, (70, 45)) for i in range(n))
    assert list(src_file[:115]) != [str(inputs[0])] * 70 + [str(inputs[1])] * 45
    refs = {str(p): reference(p, True)[0] for p in inputs}
    adatas = {str(p): __import__("anndata").read_h5ad(p) for p in inputs}
    position = {(f, int(r)): i for i, (f, r) in enumerate(zip(src_file, src_row))}
    for i in range(len(ds)):
        f, r = src_file[i], int(src_row[i])
        m = refs[f]
        (vals, cols), _, _ = ds.get_row(i)
        s, e = m.indptr[r], m.indptr[r + 1]
        np.testing.assert_array_equal(cols, m.indices[s:e])
        np.testing.assert_array_equal(vals, m.data[s:e])
        a = adatas[f]
        assert names[i] == a.obs_names[r]
        assert obs["cell_type"][i] == a.obs["cell_type"].iloc[r] and obs["score"][i] == a.obs["score"].iloc[r]
        # the ring graph: the neighbor of source row r is source row r + 1, wherever that now lies
        want = position[(f, (r + 1) % a.n_obs)]
        np.testing.assert_array_equal(ds.get_neighbor_indices_for_cell(i), [want])
        np.testing.assert_array_equal(ds.get_neighbor_weights_for_cell(i), [0.5])
    layout = json.loads((report.archive / "scdl_gpu.json").read_text())
    assert (layout["row_order"], layout["shuffle_seed"], layout["rows_sorted"]) == ("shuffle", 7, True)


def test_same_seed_same_bytes_other_seed_other_order(tmp_path, inputs):
    kw = dict(use_X_not_raw=True, neighbor_key="nn", row_order="shuffle")
    one = convert_many(inputs, tmp_path / "one", seed=11, **kw).archive
    two = convert_many(inputs, tmp_path / "two", seed=11, **kw).archive
    other = convert_many(inputs, tmp_path / "other", seed=12, **kw).archive
    assert _files(one) == _files(two)
    assert not np.array_equal(_obs(one)[0]["source_row"], _obs(other)[0]["source_row"])
    drawn = convert_many(inputs, tmp_path / "drawn", **kw)  # no seed: one is drawn and recorded
    again = convert_many(inputs, tmp_path / "again", seed=drawn.shuffle_seed, **kw).archive
    assert _files(drawn.archive) == _files(again)


def test_a_small_budget_means_many_buckets_and_the_same_archive(tmp_path, monkeypatch):
    big = [_input(tmp_path, "a", 1500, 1), _input(tmp_path, "b", 900, 2)]
    kw = dict(use_X_not_raw=True, neighbor_key="nn", row_order="shuffle", seed=5)
    roomy = convert_many(big, tmp_path / "roomy", **kw)
    assert roomy.shuffle_buckets == 1
    monkeypatch.setattr(_shuffle, "process_rss", lambda: 0)  # the budget's arithmetic alone
    dealt, appended = [], []
    real_append = _shuffle._Buckets.append
    monkeypatch.setattr(_shuffle._Buckets, "append", lambda self, b, arrays: (dealt.append(b), real_append(self, b, arrays)))
    tight = convert_many(big, tmp_path / "tight", max_memory=_shuffle._MARGIN + 2400 * 16 + 80_000, **kw)
    assert tight.shuffle_buckets >= 10 and len(set(dealt)) == tight.shuffle_buckets
    assert _files(roomy.archive) == _files(tight.archive)  # the order is the keys', whatever the buckets
    assert validate_archive(tight.archive) == []
    with pytest.raises(ConversionError, match="max_memory .* too small"):
        convert_many(big, tmp_path / "tiny", max_memory="1KB", **kw)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "tiny").exists()


def test_a_session_holding_more_than_the_default_still_shuffles(tmp_path, inputs, monkeypatch):
    """Without max_memory the shuffle adds at most the default to what the process holds (seen: a
    long-running process holding 2.4 GB failed every shuffle under the 2 GiB default); an explicit
    budget the process already exceeds is a clear error."""
    monkeypatch.setattr(_shuffle, "process_rss", lambda: 3 << 30)
    kw = dict(use_X_not_raw=True, row_order="shuffle", seed=2)
    assert validate_archive(convert_many(inputs, tmp_path / "default", **kw).archive) == []
    with pytest.raises(ConversionError, match="already holds 3,221,225,472 bytes"):
        convert_many(inputs, tmp_path / "explicit", max_memory="2GiB", **kw)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "explicit").exists()


def test_mapped_file_pages_are_not_counted_as_held(tmp_path):
    """Reading an archive through memory maps fills RSS with page cache the kernel reclaims."""
    path = tmp_path / "pages.bin"
    path.write_bytes(np.random.default_rng(0).bytes(64 << 20))
    before = _shuffle.process_rss()
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    assert int(mapped[:: 4096].sum()) > 0  # every page resident
    assert _shuffle.process_rss() - before < (16 << 20)
    del mapped


def test_single_file_and_the_command_line(tmp_path, inputs):
    out = convert_h5ad(inputs[0], tmp_path / "one", use_X_not_raw=True, row_order="shuffle", seed=3, load_neighbors=True, neighbor_key="nn")
    obs, names = _obs(out)
    assert "source_file" not in obs and sorted(obs["source_row"]) == list(range(70))
    assert [n for n in names] == [f"a-cell{r}" for r in obs["source_row"]]
    s = archive_summary(out)
    assert (s["row_order"], s["shuffle_seed"]) == ("shuffle", 3)
    assert "row order: shuffled (seed 3)" in format_summary(s)
    plain = convert_h5ad(inputs[0], tmp_path / "plain", use_X_not_raw=True)
    assert archive_summary(plain)["row_order"] == "input" and "row order: input order" in format_summary(archive_summary(plain))
    cli = [sys.executable, "-m", "scdl_gpu.cli"]
    run = subprocess.run(cli + ["convert", *map(str, inputs), "-o", str(tmp_path / "cli"), "--row-order", "shuffle",
                                "--seed", "3", "--max-memory", "1GiB", "--use-X-not-raw", "-q"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    info = subprocess.run(cli + ["info", str(tmp_path / "cli")], capture_output=True, text=True)
    assert "row order: shuffled (seed 3)" in info.stdout, info.stdout
    bad = subprocess.run(cli + ["convert", str(inputs[0]), "-o", str(tmp_path / "x"), "--seed", "3", "--use-X-not-raw", "-q"], capture_output=True, text=True)
    assert bad.returncode != 0 and "seed is only used with row_order='shuffle'" in bad.stderr


def test_inputs_need_one_gene_space(tmp_path):
    a = _input(tmp_path, "a", 20, 1, graph=False)
    b = _input(tmp_path, "b", 20, 2, graph=False, genes=GENES[::-1])
    with pytest.raises(ConversionError, match="need one gene space.*var table of .*b.h5ad differs"):
        convert_many([a, b], tmp_path / "out", use_X_not_raw=True, row_order="shuffle", seed=1)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()
    # aligned onto one vocabulary they mix fine
    report = convert_many([a, b], tmp_path / "out", use_X_not_raw=True, row_order="shuffle", seed=1, gene_vocab="union")
    assert report.n_vars == 60 and validate_archive(report.archive) == []


def test_failures_and_cancels_leave_nothing(tmp_path, inputs, monkeypatch):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ConversionError, match="bad.h5ad"):
        convert_many([*inputs, bad], tmp_path / "out", use_X_not_raw=True, row_order="shuffle", seed=1)
    clash = make_adata(random_csr(5, 60, seed=3))
    clash.var.index = GENES
    clash.obs["source_row"] = 1
    clash.write_h5ad(tmp_path / "clash.h5ad")
    with pytest.raises(ConversionError, match="already has a 'source_row' column"):  # refused before any row is dealt
        convert_many([inputs[0], tmp_path / "clash.h5ad"], tmp_path / "out", use_X_not_raw=True, row_order="shuffle", seed=1)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()
    for where in ("_deal", "_write_bucket"):  # a Ctrl-C while dealing, and while writing buckets out
        with monkeypatch.context() as m:
            def interrupted(*args, **kwargs):
                assert (next((tmp_path).glob(".out.partial-*")) / _shuffle.BUCKET_DIR).is_dir()
                raise ConversionInterrupted()
            m.setattr(_shuffle, where, interrupted)
            with pytest.raises(ConversionInterrupted):
                convert_many(inputs, tmp_path / "out", use_X_not_raw=True, row_order="shuffle", seed=1)
        assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


SLOW_SHUFFLE = """
    import sys, time
    from scdl_gpu.convert import _shuffle
    real = _shuffle._Buckets.append
    def slow(self, b, arrays):  # each dealt piece takes a while: the shuffle runs for seconds
        time.sleep(0.5)
        return real(self, b, arrays)
    _shuffle._Buckets.append = slow
    from scdl_gpu.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def test_sigint_during_the_shuffle_removes_everything(tmp_path, inputs):
    out = tmp_path / "out.scdl"
    argv = ["convert", *map(str, inputs), "-o", str(out), "--use-X-not-raw", "-q", "--row-order", "shuffle", "--seed", "1",
            "--max-memory", "2GB"]
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW_SHUFFLE), *argv], stderr=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2], preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(f".out.scdl.partial-*/{_shuffle.BUCKET_DIR}/*")):  # dealing has begun
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=30)
    assert p.returncode == 130 and "interrupted (SIGINT)" in stderr, stderr[-2000:]
    assert _leftovers(tmp_path) == [] and not out.exists()


def test_bad_arguments():
    assert _shuffle.parse_memory("1GB") == 10**9 and _shuffle.parse_memory("512MiB") == 512 << 20
    assert _shuffle.parse_memory(4096) == 4096 and _shuffle.parse_memory("2.5k") == 2500
    assert _shuffle.parse_memory(None) == _shuffle.DEFAULT_MAX_MEMORY
    for bad in ("lots", "1XB", "-1GB", 0, "0"):
        with pytest.raises(ValueError, match="max_memory"):
            _shuffle.parse_memory(bad)
    with pytest.raises(ValueError, match="row_order must be one of"):
        _shuffle.check_row_order("random", None)
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer"):
            _shuffle.check_row_order("shuffle", bad)
    assert 0 <= _shuffle.check_row_order("shuffle", None) < 2**63


def test_key_buckets_are_monotone_key_ranges():
    keys = np.sort(np.random.default_rng(0).integers(0, 2**64, size=10_000, dtype=np.uint64))
    keys = np.concatenate([np.array([0], np.uint64), keys, np.array([2**64 - 1], np.uint64)])
    for k in (1, 2, 7, 1000):
        b = _shuffle.key_buckets(keys, k)
        assert b[0] == 0 and b[-1] == k - 1 and np.all(np.diff(b.astype(np.int64)) >= 0)


def test_recorded_order_is_checked_and_read(tmp_path, inputs):
    out = convert_h5ad(inputs[0], tmp_path / "one", use_X_not_raw=True, row_order="shuffle", seed=3)
    layout_path = out / "scdl_gpu.json"
    layout = json.loads(layout_path.read_text())
    for bad in ({"row_order": "random"}, {"shuffle_seed": -1}, {"row_order": "input", "shuffle_seed": 3}):
        layout_path.write_text(json.dumps({**layout, **bad}))
        assert any("expected 'input', or 'shuffle' with a non-negative integer shuffle_seed" in p
                   for p in validate_archive(out)), bad
    layout_path.unlink()  # an archive another tool wrote: nothing recorded
    assert archive_summary(out)["row_order"] is None and "row order: not recorded" in format_summary(archive_summary(out))
