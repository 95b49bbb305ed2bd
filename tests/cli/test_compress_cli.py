"""``scdl-gpu compress``, ``convert --compress``, ``info`` and ``bench --cold`` over compressed archives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scdl_gpu import SingleCellMemMapDataset
from scdl_gpu.cli import main
from tests.backend.archives import random_matrix, write_archive


def _same_rows(a, b):
    f, z = SingleCellMemMapDataset(a), SingleCellMemMapDataset(b)
    assert len(f) == len(z)
    for i in range(len(f)):
        np.testing.assert_array_equal(f.get_row_padded(i)[0], z.get_row_padded(i)[0])


def test_compress_info_validate(tmp_path, capsys):
    flat = write_archive(tmp_path / "flat", random_matrix(30, 12, "uint16", seed=2, density=0.3))
    out = tmp_path / "z"
    assert main(["compress", str(flat), "-o", str(out), "--chunk-size", "7", "--codec", "lz4"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: 30 rows in 5 lz4 chunks of 7; values and columns") and "x)" in line
    _same_rows(flat, out)
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layout:      compressed chunks, 5 chunks of 7 rows" in text
    assert "compression: data shuffle+lz4" in text and "col_ptr delta+lz4" in text
    assert main(["info", "--json", str(out)]) == 0
    c = json.loads(capsys.readouterr().out)["compression"]
    assert c["arrays"]["data"]["raw_bytes"] == 2 * SingleCellMemMapDataset(flat).number_nonzero_values()
    assert main(["validate", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: OK"

    frames = out / "chunk_00001" / "data.frames"
    frames.write_bytes(frames.read_bytes()[:-1])
    assert main(["validate", str(out)]) == 1
    err = capsys.readouterr().err
    assert "chunk_00001/data.frames" in err and "INVALID" in err


def test_compress_refusals_and_delete_original(tmp_path, capsys):
    flat = write_archive(tmp_path / "flat", random_matrix(9, 5, "float32", seed=1, density=0.5))
    out = tmp_path / "z"
    assert main(["compress", str(flat), "-o", str(out), "--chunk-size", "0"]) == 1
    assert "chunk_size must be at least 1" in capsys.readouterr().err and not out.exists()
    assert main(["compress", str(flat), "-o", str(flat)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["compress", str(flat), "-o", str(out), "--codec", "zstd", "--level", "99"]) == 1
    assert "zstd level must be in [-5, 22]" in capsys.readouterr().err and not out.exists()
    assert main(["compress", str(flat), "-o", str(out), "--delete-original", "--codec", "zlib", "--level", "9"]) == 0
    assert "deleted" in capsys.readouterr().out and not flat.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial directory left


def test_convert_compress(tmp_path, capsys):
    h5ad = Path(__file__).parents[1] / "data" / "cxg_example_valid.h5ad"
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    assert main(["convert", str(h5ad), "-o", str(plain), "-q"]) == 0
    assert main(["convert", str(h5ad), "-o", str(packed), "--compress"]) == 0
    err = capsys.readouterr().err
    assert f"wrote {packed}:" in err and "zstd chunk" in err
    _same_rows(plain, packed)
    assert main(["convert", str(h5ad), "-o", str(packed), "--compress", "lz4", "-q"]) == 1  # exists
    assert main(["convert", str(h5ad), "-o", str(packed), "--compress", "lz4", "-q", "--overwrite"]) == 0
    assert json.loads((packed / "scdl_gpu_compression.json").read_text())["arrays"]["data.npy"]["compressor"]["id"] == "lz4"
    _same_rows(plain, packed)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("archive_kind", ["flat", "compressed"])
def test_bench_cold_runs(tmp_path, capsys, archive_kind):
    flat = write_archive(tmp_path / "flat", random_matrix(200, 40, "uint16", seed=3, density=0.2))
    archive = flat
    if archive_kind == "compressed":
        archive = tmp_path / "z"
        assert main(["compress", str(flat), "-o", str(archive), "--chunk-size", "16"]) == 0
        capsys.readouterr()
    rc = main(["bench", str(archive), "--device", "cpu", "--shuffle", "block", "--batch-size", "32", "--seconds", "0.1",
               "--warmup", "0", "--cold", "--no-ceilings", "--json", "-", "--quiet"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["results"][0]["cold"] is True and r["results"][0]["cells_per_s"] > 0
    assert main(["bench", str(archive), "--device", "cpu", "--shuffle", "random", "--batch-size", "32", "--seconds",
                 "0.1", "--warmup", "0", "--cold", "--no-ceilings", "--quiet"]) == 0
    assert "dropped from the page cache (--cold)" in capsys.readouterr().out
