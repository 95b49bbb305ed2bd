"""``scdl-gpu chunk``: upstream's chunked layout from the command line; info and validate read it."""

from __future__ import annotations

import json

import numpy as np

from scdl_gpu import SingleCellMemMapDataset
from scdl_gpu.cli import main
from tests.backend.archives import random_matrix, write_archive


def test_chunk_info_validate(tmp_path, capsys):
    flat = write_archive(tmp_path / "flat", random_matrix(30, 12, "float32", seed=2, density=0.3))
    out = tmp_path / "chunked"
    assert main(["chunk", str(flat), "-o", str(out), "--chunk-size", "7"]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: 30 rows in 5 chunks of 7"
    c, f = SingleCellMemMapDataset(out), SingleCellMemMapDataset(flat)
    assert c._is_chunked and len(c) == 30
    for i in range(30):
        np.testing.assert_array_equal(c.get_row_padded(i)[0], f.get_row_padded(i)[0])

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layout:    chunked, 5 chunks of 7 rows" in text and "chunk_*/" in text
    assert main(["info", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == {"chunk_size": 7, "num_chunks": 5}
    assert main(["validate", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: OK"

    cols = out / "chunk_00003" / "col_ptr.npy"
    cols.write_bytes(cols.read_bytes()[:-1])
    assert main(["validate", str(out)]) == 1
    err = capsys.readouterr().err
    assert "problem:" in err and "chunk_00003/col_ptr.npy" in err and "INVALID" in err


def test_chunk_refusals_and_delete_original(tmp_path, capsys):
    flat = write_archive(tmp_path / "flat", random_matrix(9, 5, "float32", seed=1, density=0.5))
    out = tmp_path / "c"
    assert main(["chunk", str(flat), "-o", str(out), "--chunk-size", "0"]) == 1
    assert "chunk_size must be at least 1" in capsys.readouterr().err and not out.exists()
    assert main(["chunk", str(flat), "-o", str(flat)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["chunk", str(flat), "-o", str(out), "--chunk-size", "4", "--delete-original"]) == 0
    assert "deleted" in capsys.readouterr().out and not flat.exists()
    assert main(["chunk", str(out), "-o", str(tmp_path / "again")]) == 1
    assert "already chunked" in capsys.readouterr().err
