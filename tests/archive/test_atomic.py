"""Atomic replacement of archives: exchange, journal fallback, leftovers of killed runs, kill -9 at
random points of convert / --overwrite / cast, readers during casts, and links out of archives."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from scdl_gpu.archive import _atomic
from scdl_gpu.archive._atomic import clean_leftovers, exchange, sibling_name
from scdl_gpu.archive._cast import cast_archive_data
from scdl_gpu.archive._generation import allow_external_links
from scdl_gpu.archive._reader import open_arrays
from scdl_gpu.convert import convert_h5ad
from scdl_gpu.errors import ArchiveError
from tests.conftest import make_adata, random_csr

N_CELLS = 3000
N_GENES = 400


# -- helpers --------------------------------------------------------------------------------------
def _h5ad(path: Path, seed: int, n_cells: int = N_CELLS) -> Path:
    """Integer counts, so uint32 and float32 archives hold exactly the same values."""
    make_adata(random_csr(n_cells, N_GENES, density=0.05, seed=seed), seed=seed).write_h5ad(path)
    return path


def _arrays(path: Path) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    a = open_arrays(path)
    return a.dtypes["data.npy"], np.asarray(a.data, np.float64), np.asarray(a.row_ptr, np.int64), np.asarray(a.col_ptr, np.int64)


def _same(path: Path, ref) -> bool:
    _, data, rp, cp = _arrays(path)
    return np.array_equal(data, ref[1]) and np.array_equal(rp, ref[2]) and np.array_equal(cp, ref[3])


def _hidden(parent: Path) -> list[str]:
    """What a run leaves beside its archives: every hidden entry of the directory."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _in_flight(archive: Path) -> list[str]:
    return sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.name.endswith((".partial", ".tmp")))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _child(script: str, *args: str) -> subprocess.Popen:
    """A Python child that prints 'ready' once imported; the kill lands after that."""
    return _ready(_spawn(script, *args))


def _ready(p: subprocess.Popen) -> subprocess.Popen:
    line = p.stdout.readline()
    if line.strip() != "ready":
        _, err = p.communicate()
        raise AssertionError(f"child did not start: {line!r} {err[-3000:]}")
    return p


def _kill_at(p: subprocess.Popen, delay: float) -> bool:
    """SIGKILL after ``delay`` seconds; False if the child had already finished."""
    time.sleep(delay)
    finished = p.poll() is not None
    if not finished:
        p.send_signal(signal.SIGKILL)
    p.communicate()  # reaps it and closes the pipes
    return not finished


# -- exchange and the journal -----------------------------------------------------------------
def _dir(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "f").write_text(text)
    return path


def test_exchange_swaps_whole_directories(tmp_path):
    target = _dir(tmp_path / "a", "old")
    new = _dir(sibling_name(target, "partial"), "new")
    exchange(new, target)
    assert (target / "f").read_text() == "new"
    assert _hidden(tmp_path) == []  # the old one is deleted, nothing left beside
    with pytest.raises(FileExistsError):
        exchange(_dir(sibling_name(target, "partial"), "x"), target, replace=False)


def test_exchange_into_a_missing_path(tmp_path):
    new = _dir(sibling_name(tmp_path / "a", "partial"), "new")
    exchange(new, tmp_path / "a", replace=False)
    assert (tmp_path / "a" / "f").read_text() == "new" and _hidden(tmp_path) == []


def test_journal_fallback_where_renameat2_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic, "_rename2", lambda src, dst, flags: 22)  # EINVAL: the flag is unsupported
    target = _dir(tmp_path / "a", "old")
    exchange(_dir(sibling_name(target, "partial"), "new"), target)
    assert (target / "f").read_text() == "new" and _hidden(tmp_path) == []
    exchange(_dir(sibling_name(tmp_path / "b", "partial"), "b"), tmp_path / "b")
    assert (tmp_path / "b" / "f").read_text() == "b" and _hidden(tmp_path) == []


def _journal_state(tmp_path: Path, stage: int) -> tuple[Path, Path, Path]:
    """The state a journaled swap by a dead process left after ``stage`` renames (0, 1 or 2)."""
    target = tmp_path / "arch"
    pid = _dead_pid()
    host = _atomic._host()
    new = tmp_path / f".arch.partial-{host}-{pid}-0000000a"
    old = tmp_path / f".arch.old-{host}-{pid}-0000000b"
    journal = tmp_path / f".arch.journal-{host}-{pid}-0000000c"
    _dir(target, "old")
    _dir(new, "new")
    journal.write_text(json.dumps({"path": "arch", "new": new.name, "old": old.name}))
    if stage >= 1:
        os.rename(target, old)
    if stage >= 2:
        os.rename(new, target)
    return target, new, old


@pytest.mark.parametrize("stage,expect", [(0, "old"), (1, "new"), (2, "new")])
def test_next_run_finishes_or_rolls_back_a_journal(tmp_path, stage, expect, caplog):
    target, _, _ = _journal_state(tmp_path, stage)
    with caplog.at_level(logging.WARNING, logger="scdl_gpu.archive._atomic"):
        clean_leftovers(target)
    assert (target / "f").read_text() == expect
    assert _hidden(tmp_path) == []
    assert "journal" in caplog.text


def test_an_open_finishes_a_journal_that_left_the_path_missing(tmp_path, bundled_archive):
    import shutil

    target = tmp_path / "arch"
    pid, host = _dead_pid(), _atomic._host()
    new = tmp_path / f".arch.partial-{host}-{pid}-0000000a"
    old = tmp_path / f".arch.old-{host}-{pid}-0000000b"
    shutil.copytree(bundled_archive, new)
    _dir(old, "old")
    (tmp_path / f".arch.journal-{host}-{pid}-0000000c").write_text(json.dumps({"path": "arch", "new": new.name, "old": old.name}))
    assert open_arrays(target).n_rows > 0  # killed between the renames: the open completes the swap
    assert _hidden(tmp_path) == []


def test_a_journal_naming_other_paths_is_not_followed(tmp_path):
    victim = _dir(tmp_path / "victim", "keep")
    pid, host = _dead_pid(), _atomic._host()
    (tmp_path / f".arch.journal-{host}-{pid}-0000000c").write_text(json.dumps({"path": "arch", "new": "victim", "old": "../x"}))
    clean_leftovers(tmp_path / "arch")
    assert (victim / "f").read_text() == "keep" and _hidden(tmp_path) == []


# -- leftovers --------------------------------------------------------------------------------------
def test_leftovers_of_dead_writers_go_live_ones_stay(tmp_path, caplog):
    target = tmp_path / "arch"
    host = _atomic._host()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        mine = _dir(tmp_path / f".arch.partial-{host}-{os.getpid()}-00000001", "x")
        theirs = _dir(tmp_path / f".arch.partial-{host}-{live.pid}-00000002", "x")
        other_host = _dir(tmp_path / f".arch.partial-elsewhere.example-{dead}-00000003", "x")
        gone = [_dir(tmp_path / f".arch.{k}-{host}-{dead}-0000000{i}", "x") for i, k in enumerate(("partial", "old"), 4)]
        other_archive = _dir(tmp_path / f".arch2.partial-{host}-{dead}-00000006", "x")
        with caplog.at_level(logging.WARNING, logger="scdl_gpu.archive._atomic"):
            removed = clean_leftovers(target)
        assert sorted(removed) == sorted(gone)
        assert all(p.exists() for p in (mine, theirs, other_host, other_archive))
        assert caplog.text.count("a killed run's leftover") == 2 and f"process {dead}" in caplog.text
        live.kill()
        live.wait()
        assert clean_leftovers(target) == [theirs]  # its owner is gone now
    finally:
        live.kill()
        live.wait()


def test_unowned_leftovers_of_older_versions_go_once_idle(tmp_path):
    target = tmp_path / "arch"
    fresh = _dir(tmp_path / ".arch.partial-0123abcd", "x")
    stale = _dir(tmp_path / ".arch.old-89abcdef", "x")
    hour_ago = time.time() - 3600
    for p in (stale, stale / "f"):
        os.utime(p, (hour_ago, hour_ago))
    assert clean_leftovers(target) == [stale]
    assert fresh.exists()


def test_in_flight_files_inside_an_archive_are_not_carried_over(tmp_path, bundled_archive):
    import shutil

    arch = tmp_path / "arch"
    shutil.copytree(bundled_archive, arch)
    (arch / "data.npy.partial").write_bytes(b"x" * 10)  # what a killed older cast left
    (arch / "var_features" / ".labels.json.123.tmp").write_text("x")
    cast_archive_data(arch, "float64")
    assert _in_flight(arch) == [] and _hidden(tmp_path) == []


# -- cast -------------------------------------------------------------------------------------------
@pytest.fixture
def counts_archive(tmp_path) -> Path:
    return convert_h5ad(_h5ad(tmp_path / "in.h5ad", 0, 300), tmp_path / "arch", use_X_not_raw=True, data_dtype="uint32")


def test_cast_replaces_the_archive_and_keeps_readers_of_the_old(counts_archive, tmp_path):
    from scdl_gpu import SingleCellMemMapDataset

    before = _arrays(counts_archive)
    reader = SingleCellMemMapDataset(counts_archive)
    row = reader.get_row(3)[0][0].copy()
    assert cast_archive_data(counts_archive, "float32") == "uint32"
    assert reader.data.dtype == np.uint32 and np.array_equal(reader.get_row(3)[0][0], row)  # still the old files
    after = _arrays(counts_archive)
    assert after[0] == "float32" and all(np.array_equal(a, b) for a, b in zip(before[1:], after[1:]))
    assert _hidden(tmp_path) == [] and _in_flight(counts_archive) == []
    from scdl_gpu.archive._checksums import verify_manifest

    assert verify_manifest(counts_archive) == []  # the new archive carries its own checksums
    assert cast_archive_data(counts_archive, "float32") == "float32"  # nothing to do


def test_lossy_cast_needs_allow_lossy(tmp_path):
    """Normalised floats into an integer type: an error, the archive untouched; allowed, it warns."""
    m = random_csr(50, 10, density=0.3, integer=False)  # values in (0, 1): uint16 truncates them all
    make_adata(m).write_h5ad(tmp_path / "in.h5ad")
    arch = convert_h5ad(tmp_path / "in.h5ad", tmp_path / "arch", use_X_not_raw=True)
    before = _arrays(arch)
    with pytest.raises(ValueError, match=r"data.npy: uint16 would change stored values .*pass allow_lossy=True"):
        cast_archive_data(arch, "uint16")
    after = _arrays(arch)
    assert after[0] == "float32" and all(np.array_equal(x, y) for x, y in zip(before[1:], after[1:]))
    assert _hidden(tmp_path) == [] and _in_flight(arch) == []
    with pytest.raises(ValueError, match="allow_lossy"):  # float32 -> float16 rounds: a loss too
        cast_archive_data(arch, "float16")
    assert cast_archive_data(arch, "float64") == "float32"  # widening changes nothing
    with pytest.warns(UserWarning, match="Downcasted"):
        assert cast_archive_data(arch, "uint16", allow_lossy=True) == "float64"
    assert _arrays(arch)[0] == "uint16" and not _arrays(arch)[1].any()


def test_failed_cast_leaves_the_archive_untouched(tmp_path):
    m = random_csr(50, 10, density=0.3)
    m.data[-1] = 300  # more than uint8 holds
    make_adata(m).write_h5ad(tmp_path / "in.h5ad")
    arch = convert_h5ad(tmp_path / "in.h5ad", tmp_path / "arch", use_X_not_raw=True, data_dtype="uint16")
    before = _arrays(arch)
    with pytest.raises(ValueError, match="uint8"):
        cast_archive_data(arch, "uint8")
    after = _arrays(arch)
    assert after[0] == "uint16" and all(np.array_equal(x, y) for x, y in zip(before[1:], after[1:]))
    assert _hidden(tmp_path) == []


def test_save_refuses_arrays_another_process_replaced(counts_archive):
    from scdl_gpu import SingleCellMemMapDataset

    ds = SingleCellMemMapDataset(counts_archive)
    cast_archive_data(counts_archive, "float32")  # as another process would
    with pytest.raises(ArchiveError, match="replaced on disk"):
        ds.save()
    assert _arrays(counts_archive)[0] == "float32"
    fresh = SingleCellMemMapDataset(counts_archive)
    assert fresh.save() and _arrays(counts_archive)[0] == "float32"


def test_save_and_concat_in_place_publish_whole_archives(tmp_path, counts_archive):
    from scdl_gpu import SingleCellMemMapDataset
    from scdl_gpu.archive._checksums import verify_manifest

    ds = SingleCellMemMapDataset(tmp_path / "e", num_rows=2, num_elements=10, data_dtype="uint32")
    ds.data[:] = np.arange(10)
    ds.col_index[:] = np.arange(10)
    ds.row_index[:] = [0, 4, 10]
    ds.save()
    assert verify_manifest(tmp_path / "e") == []
    ds.data[0] = 7  # the writable maps follow the saved files
    ds.save()
    assert SingleCellMemMapDataset(tmp_path / "e").data[0] == 7 and verify_manifest(tmp_path / "e") == []
    other = convert_h5ad(_h5ad(tmp_path / "b.h5ad", 5, 40), tmp_path / "b", use_X_not_raw=True, data_dtype="uint32")
    target = SingleCellMemMapDataset(counts_archive)
    n = len(target)
    target.concat(SingleCellMemMapDataset(other))
    assert len(target) == len(SingleCellMemMapDataset(counts_archive)) == n + 40
    assert verify_manifest(counts_archive) == []
    assert _hidden(tmp_path) == [] and _in_flight(counts_archive) == []


def test_an_open_never_pairs_two_generations(counts_archive, monkeypatch):
    """A cast exchanged in between the header read and the mapping: the open starts over."""
    from scdl_gpu.archive import _reader

    real = _reader.read_dtypes
    swaps = []

    def read_then_swap(path):
        out = real(path)
        if not swaps:
            swaps.append("swapping")  # once: the cast's own opens read normally
            swaps[0] = cast_archive_data(counts_archive, "float32")
        return out

    monkeypatch.setattr(_reader, "read_dtypes", read_then_swap)
    a = open_arrays(counts_archive)
    assert swaps == ["uint32"] and a.dtypes["data.npy"] == "float32" and a.data.dtype == np.float32


# -- links out of the archive -------------------------------------------------------------------
def test_links_out_of_an_archive_are_refused_unless_allowed(counts_archive, tmp_path, monkeypatch):
    outside = tmp_path / "elsewhere.npy"
    os.rename(counts_archive / "data.npy", outside)
    os.symlink(outside, counts_archive / "data.npy")
    with pytest.raises(ArchiveError, match=r"data.npy is a symbolic link to .*elsewhere.npy, outside the archive"):
        open_arrays(counts_archive)
    with allow_external_links():
        assert open_arrays(counts_archive).nnz > 0
    monkeypatch.setenv("SCDL_GPU_ALLOW_EXTERNAL_LINKS", "1")
    assert open_arrays(counts_archive).nnz > 0


def test_links_inside_an_archive_are_fine(counts_archive):
    (counts_archive / "store").mkdir()
    os.rename(counts_archive / "data.npy", counts_archive / "store" / "data.npy")
    os.symlink("store/data.npy", counts_archive / "data.npy")
    assert open_arrays(counts_archive).nnz > 0
    os.symlink("/etc", counts_archive / "var_features" / "escape")  # a link dir deeper down
    with pytest.raises(ArchiveError, match="escape is a symbolic link"):
        open_arrays(counts_archive)


# -- kill -9 at random points ---------------------------------------------------------------------
CONVERT = """
    import sys
    import anndata, h5py, pandas, pyarrow.parquet  # imported before the clock starts
    from scdl_gpu.convert import convert_many
    print("ready", flush=True)
    convert_many([sys.argv[1]], sys.argv[2], overwrite=sys.argv[3] == "1", max_block_values=int(sys.argv[4]), use_X_not_raw=True)
    print("done", flush=True)
"""

CAST_LOOP = """
    import sys
    from scdl_gpu.archive import _atomic
    from scdl_gpu.archive._cast import cast_archive_data
    if sys.argv[2] == "journal":
        _atomic._rename2 = lambda src, dst, flags: 22  # as on a filesystem that refuses RENAME_EXCHANGE
    import time
    print("ready", flush=True)
    n = 0
    while True:
        t0 = time.perf_counter()
        cast_archive_data(sys.argv[1], "float32")
        cast_archive_data(sys.argv[1], "uint32")
        n += 1
        if n == 2:
            print(time.perf_counter() - t0, flush=True)  # seconds per cycle
"""

KILL_SEEDS = range(8)
BLOCK = 2000  # stored values per row block: a conversion of N_CELLS takes a few tenths of a second


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill_inputs")
    a, b = _h5ad(d / "a.h5ad", 1), _h5ad(d / "b.h5ad", 2)
    refs = {}
    for name, src in (("a", a), ("b", b)):
        out = convert_h5ad(src, d / f"ref_{name}", use_X_not_raw=True)
        refs[name] = _arrays(out)
    times = []
    for k in range(3):  # the quickest run: the kills should land inside the work
        p = _child(CONVERT, str(a), str(d / f"timed{k}"), "0", str(BLOCK))
        t0 = time.perf_counter()
        done = p.stdout.readline()  # the work, not the interpreter's exit
        times.append(time.perf_counter() - t0)
        _, err = p.communicate()
        assert p.returncode == 0 and done.strip() == "done", err
    return a, b, refs, min(times)


def _kill_delay(seed: int, seconds: float) -> float:
    """Anywhere in the run; the last two seeds aim at its end (commit and exchange)."""
    lo, hi = (0.88, 1.02) if seed % 100 >= len(KILL_SEEDS) - 2 else (0.05, 1.0)
    return random.Random(seed).uniform(lo, hi) * seconds


def _record(kind: str, outcome: str) -> None:
    print(f"kill figures: {kind}: {outcome}")  # pytest -s -k kill shows what each kill saw


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_kill_during_conversion(tmp_path, two_inputs, seed):
    src, _, refs, seconds = two_inputs
    out = tmp_path / "out"
    p = _child(CONVERT, str(src), str(out), "0", str(BLOCK))
    killed = _kill_at(p, _kill_delay(seed, seconds))
    if out.exists():  # the whole new archive, or nothing
        assert _same(out, refs["a"])
        _record("convert", "new" if killed else "finished")
    else:
        _record("convert", "absent")
    convert_h5ad(src, out, use_X_not_raw=True, overwrite=out.exists())  # the next run on the path
    assert _same(out, refs["a"]) and _hidden(tmp_path) == [] and _in_flight(out) == []


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_kill_during_overwrite(tmp_path, two_inputs, seed):
    a, b, refs, seconds = two_inputs
    out = convert_h5ad(a, tmp_path / "out", use_X_not_raw=True)
    p = _child(CONVERT, str(b), str(out), "1", str(BLOCK))
    killed = _kill_at(p, _kill_delay(100 + seed, seconds))
    state = "old" if _same(out, refs["a"]) else "new" if _same(out, refs["b"]) else "neither"
    assert state != "neither"
    _record("overwrite", state if killed else "finished")
    convert_h5ad(b, out, use_X_not_raw=True, overwrite=True)
    assert _same(out, refs["b"]) and _hidden(tmp_path) == [] and _in_flight(out) == []


@pytest.mark.parametrize("mode", ["exchange", "journal"])
def test_kill_during_cast(tmp_path, mode):
    src = _h5ad(tmp_path / "in.h5ad", 3)
    arch = convert_h5ad(src, tmp_path / "arch", use_X_not_raw=True, data_dtype="uint32")
    ref = _arrays(arch)
    for seed in KILL_SEEDS:
        p = _child(CAST_LOOP, str(arch), mode)
        line = p.stdout.readline()
        cycle = float(line) if line.strip() else pytest.fail(p.communicate()[1][-3000:])
        _kill_at(p, random.Random(200 + seed).uniform(0.0, cycle))  # anywhere in a cycle of two casts
        dtype, *arrays = _arrays(arch)  # an open finishes an interrupted journal first
        assert dtype in ("uint32", "float32")
        assert all(np.array_equal(x, y) for x, y in zip(arrays, ref[1:])), f"seed {seed}: {dtype} header over other bytes"
        _record(f"cast ({mode})", dtype)
        cast_archive_data(arch, "float64")  # the next run on the path
        cast_archive_data(arch, "uint32")
        assert _hidden(tmp_path) == [] and _in_flight(arch) == []


# -- readers during casts ---------------------------------------------------------------------------
READER = """
    import json, sys, time
    import numpy as np
    from scdl_gpu import SingleCellMemMapDataset
    ref = np.load(sys.argv[2])
    data, indptr = ref["data"], ref["indptr"]
    rng = np.random.default_rng(int(sys.argv[4]))
    print("ready", flush=True)
    opens = wrong = errors = 0
    end = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < end:
        try:
            ds = SingleCellMemMapDataset(sys.argv[1])
            opens += 1
            for i in rng.integers(0, len(indptr) - 1, 4):
                values = np.asarray(ds.get_row(int(i))[0][0], np.float64)
                if not np.array_equal(values, data[indptr[i] : indptr[i + 1]]):
                    wrong += 1
        except Exception as e:
            errors += 1
            print(repr(e), file=sys.stderr)
    print(json.dumps({"opens": opens, "wrong": wrong, "errors": errors}), flush=True)
"""


def test_readers_during_casts_never_see_a_wrong_row(tmp_path):
    src = _h5ad(tmp_path / "in.h5ad", 4)
    arch = convert_h5ad(src, tmp_path / "arch", use_X_not_raw=True, data_dtype="uint32")
    a = open_arrays(arch)
    np.savez(tmp_path / "ref.npz", data=np.asarray(a.data, np.float64), indptr=np.asarray(a.row_ptr, np.int64))
    del a
    seconds = 4.0
    readers = [_ready(r) for r in [_spawn(READER, str(arch), str(tmp_path / "ref.npz"), str(seconds), str(k)) for k in range(3)]]
    caster = _child(CAST_LOOP, str(arch), "exchange")
    outputs = [r.communicate(timeout=seconds + 60) for r in readers]
    caster.kill()
    caster.communicate()
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    total = {k: sum(r[k] for r in results) for k in ("opens", "wrong", "errors")}
    print(f"kill figures: readers during casts: {total}")
    assert total["wrong"] == 0 and total["errors"] == 0, (total, [err[-2000:] for _, err in outputs])
    assert total["opens"] >= 100

