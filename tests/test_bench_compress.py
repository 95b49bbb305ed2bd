"""benchmarks/bench_compress.py end to end on a tiny archive and two real files: every part runs,
the tables are written and the targets evaluated (no timing assertions)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.backend.archives import random_matrix, write_archive

REPO = Path(__file__).resolve().parent.parent


def test_bench_compress_end_to_end(tmp_path):
    flat = write_archive(tmp_path / "small", random_matrix(300, 2000, "uint16", seed=1, density=0.05))
    real = tmp_path / "real"
    real.mkdir()
    for name in ("cxg_example_valid.h5ad", "pbmc_small_csc.h5ad"):  # counts in raw; normalised X only
        shutil.copy(REPO / "tests" / "data" / name, real / name)
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_compress.py"), "--workdir", str(tmp_path / "w"),
                           "--archive", str(flat), "--real", str(real), "--repeats", "1", "--batches", "1",
                           "--json", str(out_json), "--markdown", str(out_md)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out_json.read_text())
    assert {(c["dataset"], c["codec"]) for c in r["codecs"]} == {
        (d, c) for d in ("small", "cxg_example_valid", "pbmc_small_csc") for c in ("zstd", "lz4", "zlib")}
    assert all(c["ratio"] > 0 and c["decode_gb_per_s"] > 0 for c in r["codecs"])
    assert set(r["loading"]["median_cells_per_s"]) == {f"{a}/{t}" for a in ("flat", "flat_on_demand", "zstd", "lz4")
                                                       for t in ("cold", "warm")}
    assert set(r["targets"]) == {f"{t}_{codec}" for codec in ("zstd", "lz4") for t in (
        "tahoe_ratio_vs_uint16", "cold_block4096_speedup", "cold_block4096_speedup_larger_than_memory")}
    assert "pages on demand" in out_md.read_text()
    assert "| small | 300 |" in out_md.read_text() and "compressed, zstd" in out_md.read_text()
