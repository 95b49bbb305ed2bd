"""Smoke tests of the benchmark tooling in ``benchmarks/`` at tiny sizes (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
TINY = dict(n_cells=300, n_genes=500, nnz_per_cell=40)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ms():
    return _load("make_synthetic")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _expected(ms, dtype="float32", seed=0, **kw):
    """The generator's rows, concatenated: (indptr, indices, data, codes, barcodes)."""
    tiles = list(ms.iter_synthetic_rows(seed=seed, dtype=dtype, **{**TINY, **kw}))
    assert [t.start for t in tiles] == [0, *(t.stop for t in tiles[:-1])] and tiles[-1].stop == TINY["n_cells"]
    indptr = np.concatenate([[0], np.cumsum(np.concatenate([t.row_nnz for t in tiles]))])
    codes = {k: np.concatenate([t.codes[k] for t in tiles]) for k in tiles[0].codes}
    barcodes = np.concatenate([t.barcodes for t in tiles])
    return indptr, np.concatenate([t.indices for t in tiles]), np.concatenate([t.values for t in tiles]), codes, barcodes


def _datasets(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("dtype, compression", [("float32", None), ("int32", "gzip"), ("float32", "lzf")])
def test_generator_reads_back_exactly(ms, tmp_path, dtype, compression):
    ad = pytest.importorskip("anndata")
    path = tmp_path / "tiny.h5ad"
    info = ms.make_synthetic_h5ad(path, **TINY, dtype=dtype, compression=compression, chunk_cells=128,
                                  with_raw=True, progress=False)
    indptr, indices, data, codes, barcodes = _expected(ms, dtype)
    tables = ms.synthetic_tables(TINY["n_genes"])
    a = ad.read_h5ad(path)

    assert a.shape == (300, 500) and info["nnz"] == len(data) == a.X.nnz
    assert a.X.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a.X.indptr, indptr)
    np.testing.assert_array_equal(a.X.indices, indices)
    np.testing.assert_array_equal(a.X.data, data)
    assert np.all(data >= 1) and np.all(data == np.round(data))
    for r in range(a.n_obs):  # sorted, unique columns within each row
        assert np.all(np.diff(indices[indptr[r] : indptr[r + 1]]) > 0)

    assert list(a.obs.columns) == ["cell_line", "drug", "plate", "sample", "n_genes", "total_counts"]
    assert list(a.obs_names) == list(barcodes) and a.obs_names.is_unique
    for name, cats in tables["categories"].items():
        assert list(a.obs[name].cat.categories) == cats
        np.testing.assert_array_equal(a.obs[name].cat.codes.to_numpy(), codes[name])
    assert a.obs["plate"].cat.codes.is_monotonic_increasing  # grouped by plate
    np.testing.assert_array_equal(a.obs["n_genes"].to_numpy(), np.diff(indptr))
    np.testing.assert_array_equal(a.obs["total_counts"].to_numpy(), np.asarray(a.X.sum(axis=1)).ravel())

    assert list(a.var_names) == tables["var_index"] and a.var_names.is_unique
    assert all(g.startswith("ENSG") and len(g) == 15 for g in a.var_names)
    assert list(a.var["gene_symbol"]) == tables["gene_symbol"]
    assert a.raw is not None and (a.raw.X != a.X).nnz == 0
    assert list(a.raw.var_names) == tables["var_index"]


def test_generator_on_disk_encoding(ms, tmp_path):
    path = tmp_path / "tiny.h5ad"
    ms.make_synthetic_h5ad(path, **TINY, progress=False)
    with h5py.File(path, "r") as f:
        assert f.attrs["encoding-type"] == "anndata" and f.attrs["encoding-version"] == "0.1.0"
        x = f["X"]
        assert x.attrs["encoding-type"] == "csr_matrix" and list(x.attrs["shape"]) == [300, 500]
        assert (x["data"].dtype, x["indices"].dtype, x["indptr"].dtype) == (np.float32, np.int32, np.int64)
        assert x["data"].maxshape == (None,)
        obs = f["obs"]
        assert obs.attrs["encoding-type"] == "dataframe" and obs.attrs["encoding-version"] == "0.2.0"
        assert obs.attrs["_index"] == "_index"
        assert obs["drug"].attrs["encoding-type"] == "categorical" and not obs["drug"].attrs["ordered"]
        assert obs["_index"].attrs["encoding-type"] == "string-array"
        assert h5py.check_string_dtype(f["var/gene_symbol"].dtype) is not None
        assert "raw" not in f


def test_generator_is_deterministic(ms, tmp_path):
    a, b, c = tmp_path / "a.h5ad", tmp_path / "b.h5ad", tmp_path / "c.h5ad"
    ms.make_synthetic_h5ad(a, **TINY, seed=7, chunk_cells=50, progress=False)
    ms.make_synthetic_h5ad(b, **TINY, seed=7, chunk_cells=10_000, progress=False)
    ms.make_synthetic_h5ad(c, **TINY, seed=8, progress=False)
    da, db, dc = _datasets(a), _datasets(b), _datasets(c)
    assert da.keys() == db.keys()
    for key in da:
        np.testing.assert_array_equal(da[key], db[key], err_msg=key)
    assert not np.array_equal(da["X/indices"][:100], dc["X/indices"][:100])


def test_generator_rejects_bad_arguments(ms, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        ms.make_synthetic_h5ad(tmp_path / "x.h5ad", 10, 10, 5, dtype="uint8", progress=False)
    with pytest.raises(ValueError, match="compression"):
        ms.make_synthetic_h5ad(tmp_path / "x.h5ad", 10, 10, 5, compression="zstd", progress=False)


def _scdl_gpu_available() -> bool:
    code = "import scdl_gpu; scdl_gpu.SingleCellMemMapDataset"
    return subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, timeout=120).returncode == 0


@pytest.mark.slow
def test_bench_convert_end_to_end(tmp_path):
    pytest.importorskip("bionemo.scdl")
    pytest.importorskip("psutil")
    runners = ["bionemo-scdl*"] + (["scdl_gpu"] if _scdl_gpu_available() else [])
    out_json, out_md = tmp_path / "res.json", tmp_path / "res.md"
    cmd = [sys.executable, str(BENCH / "bench_convert.py"), "--n-cells", "300", "--n-genes", "500",
           "--nnz-per-cell", "40", "--workdir", str(tmp_path / "work"), "--json", str(out_json),
           "--markdown", str(out_md), "--runners", *runners]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]

    res = json.loads(out_json.read_text())
    assert {"system", "input", "generation", "warm_read_s", "notes", "config", "runs", "summary",
            "comparison"} <= res.keys()
    assert res["input"]["n_cells"] == 300 and res["input"]["n_genes"] == 500 and res["input"]["nnz"] > 300
    assert res["system"]["cpu_count"] >= 1 and res["system"]["versions"]["bionemo-scdl"]
    assert res["config"]["page_cache"] == "warm" and res["config"]["repeats"] == 1
    expected = ["bionemo-scdl regular", "bionemo-scdl paginated", "bionemo-scdl paginated-100k"]
    expected = (["scdl_gpu"] if "scdl_gpu" in runners else []) + expected
    assert res["config"]["runners"] == expected == [r["runner"] for r in res["runs"]]
    for run in res["runs"]:
        assert run["ok"] and run["error"] is None and run["rc"] == 0, run
        assert 0 < run["convert_s"] < run["process_s"]
        assert run["peak_rss_bytes"] >= run["hwm_bytes"] >= run["rss_after_import_bytes"] > 10 * 2**20
        assert 0 < run["polled_anon_bytes"] <= run["polled_rss_bytes"] <= run["peak_rss_bytes"]
        assert run["archive_bytes"] > 0 and run["header"] is True
        assert set(run["dtypes"]) == {"data.npy", "col_ptr.npy", "row_ptr.npy"}
    for name in expected:
        s = res["summary"][name]
        assert s["n_ok"] == 1 and s["n_failed"] == 0 and s["cells_per_s"] > 0
        assert s["convert_s_stdev"] is None and s["peak_rss_mib"] > 0 and s["archive_mib"] > 0
    cmp_ = res["comparison"]
    assert cmp_["fastest_bionemo"] in expected
    assert (cmp_["speedup"] is not None) == ("scdl_gpu" in runners)
    assert not list((tmp_path / "work" / "out").iterdir())  # archives deleted without --keep
    text = out_md.read_text()
    assert "warm page cache" in text and "| runner |" in text and "bionemo-scdl regular" in text


def test_bench_convert_dir_end_to_end(tmp_path):
    pytest.importorskip("bionemo.scdl")
    out_json, out_md = tmp_path / "res.json", tmp_path / "res.md"
    cmd = [sys.executable, str(BENCH / "bench_convert_dir.py"), "--n-files", "2", "--n-cells", "200", "--n-genes", "300",
           "--nnz-per-cell", "30", "--workdir", str(tmp_path / "work"), "--json", str(out_json), "--markdown", str(out_md),
           "--runners", "scdl-gpu convert", "bionemo-scdl convert_h5ad_to_scdl"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out_json.read_text())
    assert res["input"]["n_files"] == 2 and res["input"]["n_cells"] == 400
    for run in res["runs"]:
        assert run["ok"] and run["checked_rows"] > 0, run
    ours, theirs = res["runs"]
    assert ours["metadata_num_rows"] == 400
    assert theirs["metadata_num_rows"] == 200  # upstream's stale row count after concatenation, recorded
    assert res["comparison"]["speedup"] > 0 and res["comparison"]["rss_ratio"] > 0
    assert "Directory -> one SCDL archive" in out_md.read_text()
    assert str(tmp_path / "work") not in out_json.read_text() + out_md.read_text()


def _tiny_inputs(ms, directory: Path) -> Path:
    directory.mkdir()
    for k in range(2):  # two inputs of one gene table, as bench_convert_dir.make_inputs writes them
        ms.make_synthetic_h5ad(directory / f"plate_{k:03d}.h5ad", 150, 300, 30, seed=k, table_seed=0, progress=False)
    return directory


def _bench_loader(tmp_path, *args: str) -> dict:
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH / "bench_loader.py"), "--workdir", str(tmp_path / "work"), "--seconds", "0.1",
           "--peer-seconds", "0.1", "--ceiling-seconds", "0.02", "--warmup", "1", "--batch-sizes", "16", "--no-cold",
           "--out", str(out), *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| runner | archive | order | batch |" in proc.stdout
    return json.loads((out / "loader_cpu.json").read_text())


def test_bench_loader_end_to_end(ms, tmp_path):
    pytest.importorskip("bionemo.scdl")
    pytest.importorskip("anndata")
    pytest.importorskip("matplotlib")
    from scdl_gpu.archive import open_arrays

    inputs = _tiny_inputs(ms, tmp_path / "in")
    res = _bench_loader(tmp_path, "--inputs", str(inputs), "--repeats", "2", "--profile", "block:16")
    arc = res["archives"]
    assert list(arc) == ["scdl_gpu", "bionemo", "aligned"] and all(a["n_rows"] == 300 for a in arc.values())
    assert arc["bionemo"]["dtypes"]["data.npy"] == "float32" and arc["scdl_gpu"]["dtypes"]["data.npy"] == "uint16"
    assert str(tmp_path) not in (tmp_path / "out" / "loader_cpu.json").read_text()  # results name no machine's paths
    ours, aligned = (open_arrays(arc[k]["path"].replace("<workdir>", str(tmp_path / "work"))) for k in ("scdl_gpu", "aligned"))
    assert ours.nnz == aligned.nnz and not np.array_equal(ours.col_ptr, aligned.col_ptr)  # columns remapped
    peers = {("AnnLoader", None, "shuffle")} | ({("scDataset", None, "block")} if importlib.util.find_spec("scdataset") else set())
    assert {(r["runner"], r["archive"], r["order"]) for r in res["runs"]} == peers | {
        ("scdl_gpu", a, o) for a in arc for o in ("random", "block")} | {("bionemo-scdl", a, "shuffle") for a in arc}
    for r in res["runs"]:
        assert r["cells_per_s"] > 0 and len(r["all_cells_per_s"]) == 2 and r["batch_size"] == 16, r
        assert (r["of_ceiling"] is None) == (r["archive"] is None), r
        if r["runner"] == "scdl_gpu":
            assert 1 <= r["distinct_labels"] <= 14, r  # the generator's plates
    for ce in res["ceilings"].values():
        assert ce["name"] == "memcpy" and len(ce["all_cells_per_s"]) == 2 and ce["bench"]["page_cache_read"]["bytes_per_s"]
        assert ce["all_threads"]["threads"] >= 1 and ce["all_threads"]["bytes_per_s"] > 0
    # what a target compares is measured side by side: the aligned archive right after the unaligned one
    ours = [(r["archive"], r["order"]) for r in res["runs"] if r["runner"] == "scdl_gpu"]
    assert ours == [("scdl_gpu", "random"), ("aligned", "random"), ("bionemo", "random"),
                    ("scdl_gpu", "block"), ("aligned", "block"), ("bionemo", "block")]
    assert res["targets"] == []  # none at batch 16
    if sys.version_info < (3, 12):
        assert "annbatch not measured: needs Python >= 3.12" in res["notes"]
    out = tmp_path / "out"
    assert "| scdl_gpu | aligned | random | 16 |" in (out / "loader_cpu.md").read_text()
    assert (out / "loader_cpu.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "profile_cpu.json").read_text())[0]["settings"]["shuffle"] == "block"
    assert (out / "profile_cpu_block16.png").exists()


def test_bench_loader_given_archive(tmp_path):
    pytest.importorskip("bionemo.scdl")
    from tests.backend.archives import random_matrix, write_archive

    archive = write_archive(tmp_path / "a", random_matrix(300, 50, "uint16"))
    res = _bench_loader(tmp_path, "--archive", str(archive), "--repeats", "1", "--runners", "scdl_gpu", "bionemo-scdl",
                        "AnnLoader", "--orders", "sequential", "--profile")
    assert list(res["archives"]) == ["given"] and res["config"]["loader_default_prefetch"] == 0
    assert [(r["runner"], r["order"]) for r in res["runs"]] == [("scdl_gpu", "sequential"), ("bionemo-scdl", "shuffle")]
    assert "AnnLoader not measured: no --inputs" in res["notes"]
    assert not (tmp_path / "out" / "profile_cpu.json").exists()


def test_bench_loader_targets():
    from benchmarks.bench_loader import evaluate

    def run(runner, archive, order, bs, cps, ceiling=None):
        return dict(runner=runner, archive=archive, order=order, batch_size=bs, cells_per_s=cps,
                    ceiling_cells_per_s=ceiling, of_ceiling=cps / ceiling if ceiling else None)

    runs = [run("scdl_gpu", "scdl_gpu", "random", 64, 450.0, 1000.0), run("scdl_gpu", "scdl_gpu", "random", 4096, 590.0, 1000.0),
            run("scdl_gpu", "scdl_gpu", "block", 4096, 800.0, 1000.0), run("bionemo-scdl", "scdl_gpu", "shuffle", 64, 50.0, 1000.0),
            run("scdl_gpu", "bionemo", "random", 64, 300.0, 600.0), run("bionemo-scdl", "bionemo", "shuffle", 64, 40.0, 600.0),
            run("scdl_gpu", "aligned", "block", 4096, 700.0, 1000.0), run("scdl_gpu", "aligned", "random", 4096, 650.0, 1000.0)]
    t = {x["name"]: x for x in evaluate(runs)}
    assert set(t) == {"scdl_gpu:random4096_of_ceiling", "scdl_gpu:random64_of_ceiling", "scdl_gpu:random64_vs_bionemo",
                      "scdl_gpu:block4096_of_ceiling", "bionemo:random64_of_ceiling", "bionemo:random64_vs_bionemo",
                      "aligned:aligned_block4096", "aligned:aligned_random4096"}
    verdicts = {k: (round(v["value"], 4), v["met"]) for k, v in t.items()}
    assert verdicts == {"scdl_gpu:random4096_of_ceiling": (0.59, False), "scdl_gpu:random64_of_ceiling": (0.45, True),
                        "scdl_gpu:random64_vs_bionemo": (9.0, True), "scdl_gpu:block4096_of_ceiling": (0.8, True),
                        "bionemo:random64_of_ceiling": (0.5, True), "bionemo:random64_vs_bionemo": (7.5, False),
                        "aligned:aligned_block4096": (0.875, False), "aligned:aligned_random4096": (round(650 / 590, 4), True)}


def test_bench_loader_pairs_each_repeat():
    """A machine that slows down mid-run: a ratio of two loaders is taken inside each repeat, and
    the median of those is the verdict, not a ratio of medians that picked different phases."""
    from benchmarks.bench_loader import Measurement, evaluate, summarize

    def measured(archive, cps):
        m = Measurement("scdl_gpu", archive, "random", 4096, 1.0)
        m.repeats = [dict(cells_per_s=c) for c in cps]
        return summarize(m, dict(cells_per_s=3.2), None) | dict(ceiling_cells_per_s=3.2)

    # repeat 1 is fast; the aligned archive's second repeat lands in the slow phase that starts just
    # after the unaligned one's (the ratio of medians would be 1.70 / 2.20 = 77%)
    ours = measured("scdl_gpu", [2.30, 2.20, 1.75])
    aligned = measured("aligned", [2.35, 1.70, 1.70])
    t = {x["name"]: x for x in evaluate([ours, aligned])}
    assert t["aligned:aligned_random4096"]["value"] == pytest.approx(np.median([2.35 / 2.30, 1.70 / 2.20, 1.70 / 1.75]))
    assert t["aligned:aligned_random4096"]["met"] and "per repeat: 102.2%, 77.3%, 97.1%" in t["aligned:aligned_random4096"]["numbers"]
    # a fraction of the ceiling stays the median repeat over the run's best memcpy
    assert ours["of_ceiling"] == pytest.approx(2.20 / 3.2) and t["scdl_gpu:random4096_of_ceiling"]["met"]
    # repeats missing on one side: the ratio of the medians
    short = measured("aligned", [2.0])
    assert {x["name"]: x for x in evaluate([ours, short])}["aligned:aligned_random4096"]["value"] == pytest.approx(2.0 / 2.20)


def test_bench_atlas_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_atlas.py"), "--workdir", str(tmp_path / "w"), "--members", "3",
                           "--cells", "200", "--genes", "400", "--nnz", "30", "--repeats", "2", "--seconds", "0.1",
                           "--warmup", "0", "--out", str(out)], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "atlas_cpu.json").read_text())
    assert [(r["source"], r["order"], r["batch_size"]) for r in res["results"]] == [
        ("atlas", "block", 4096), ("atlas_materialized", "block", 4096), ("flat", "block", 4096),
        ("atlas_permuted", "block", 4096), ("atlas", "random", 64), ("atlas_materialized", "random", 64),
        ("flat", "random", 64)]
    assert all(r["cells_per_s"] > 0 and len(r["all_cells_per_s"]) == 2 for r in res["results"])
    assert res["rows_checked"] > 0 and [t["name"] for t in res["targets"]] == [
        "atlas_block4096_vs_flat", "atlas_materialized_block4096_vs_flat"]
    assert all(m["mapped_columns"] for m in json.loads((tmp_path / "w" / "atlas_materialized" / "atlas.json").read_text())["members"])
    assert str(tmp_path) not in (out / "atlas_cpu.json").read_text() and "| atlas | block | 4096 |" in (out / "atlas_cpu.md").read_text()


def test_committed_results_name_no_machines_directories():
    """Results are written with ``<workdir>`` (``_report.portable``) in place of where they ran."""
    import re

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    absolute = re.compile(r"(?<![\w<>.])/(tmp|home|root|Users|var|mnt|scratch)/")
    found = [f"{p.name}: {m.group(0)}" for p in sorted(results.glob("*")) if p.suffix in (".md", ".json")
             for m in [absolute.search(p.read_text())] if m]
    assert not found, found
