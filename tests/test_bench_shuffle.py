"""benchmarks/bench_shuffle.py end to end on tiny inputs: every part runs and the targets are evaluated."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_benchmarks import BENCH, _env, _load, _tiny_inputs


def test_bench_shuffle_end_to_end(tmp_path):
    pytest.importorskip("psutil")
    inputs = _tiny_inputs(_load("make_synthetic"), tmp_path / "inputs")
    out_json, out_md = tmp_path / "res.json", tmp_path / "res.md"
    base = [sys.executable, str(BENCH / "bench_shuffle.py"), "--workdir", str(tmp_path / "work"), "--json", str(out_json),
            "--markdown", str(out_md)]
    proc = subprocess.run(base + ["--inputs", str(inputs), "--repeats", "1", "--seconds", "0.1", "--max-memory", "2GB"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out_json.read_text())
    assert [(r["runner"], r["ok"]) for r in res["conversions"]] == [("input order", True), ("shuffled", True)]
    assert {(r["archive"], r["order"], r["batch_size"]) for r in res["loading"]} == {
        (a, o, b) for a in ("input order", "shuffled") for o in ("block", "random") for b in (4096, 64)}
    names = [t["name"] for t in res["summary"]["targets"]]
    assert "convert time shuffled / input order <= 2x" in names and "block@64 on shuffled: cells/s >= 90% of block on input order" in names
    assert res["summary"]["loading"]["shuffled block@4096"]["distinct_labels"] is None  # 300 rows: no full batch of 4,096
    shuffled = res["summary"]["loading"]["shuffled block@64"]
    assert 0.8 < shuffled["distinct_labels"] / shuffled["random_distinct_labels"] < 1.2  # a sample mean near its expectation
    proc = subprocess.run(base + ["--big-only", "--big", "400", "--big-nnz", "20"], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    big = json.loads(out_json.read_text())["big"]
    assert big["ok"] and big["n_cells"] == 400 and big["peak_rss_bytes"] > 0 and big["archive_bytes"] > 0
    text = out_md.read_text()
    assert "Pre-shuffled archives" in text and "Large input, run once: 400 cells" in text
