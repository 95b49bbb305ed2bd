"""The command-line tools: exit status, messages, and what they leave on disk."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu import SingleCellMemMapDataset
from scdl_gpu.cli import main
from scdl_gpu.cli.upstream import main as upstream_main
from tests.conftest import BUNDLED, make_adata, random_csr
from tests.convert.sources import reference, row_dict


@pytest.fixture
def inputs(tmp_path) -> Path:
    d = tmp_path / "inputs"
    d.mkdir()
    shutil.copy(BUNDLED / "cxg_example_valid.h5ad", d)
    shutil.copy(BUNDLED / "10x_v3_chr21_filtered_feature_bc_matrix.h5", d)
    a = make_adata(random_csr(12, 30, seed=3))
    a.write_h5ad(d / "synthetic.h5ad")
    return d


def _archive_rows(path: Path) -> int:
    return len(SingleCellMemMapDataset(path))


def test_convert_directory(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    assert main(["convert", str(inputs), "-o", str(out), "--use-X-not-raw", "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert "cells/s" in err and f"wrote {out}: 1,439 cells" in err  # 320 + 1107 + 12
    assert _archive_rows(out) == 1439
    rep = json.loads(report.read_text())
    assert [Path(r["path"]).name for r in rep["inputs"]] == [
        "10x_v3_chr21_filtered_feature_bc_matrix.h5", "cxg_example_valid.h5ad", "synthetic.h5ad"]
    assert rep["n_rows"] == 1439 and rep["data_dtype"] == "float32"


def test_convert_gene_vocab_and_auto_dtype(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    vocab = tmp_path / "genes.txt"
    m, genes = reference(BUNDLED / "cxg_example_valid.h5ad", True)
    vocab.write_text("\n".join(genes[:50]))
    rc = main(["convert", str(inputs / "cxg_example_valid.h5ad"), str(inputs / "synthetic.h5ad"), "-o", str(out),
               "--use-X-not-raw", "--gene-vocab", str(vocab), "--data-dtype", "auto", "--workers", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "matched" in err and "dropped" in err
    ds = SingleCellMemMapDataset(out)
    assert ds.number_of_variables() == [50] and ds.dtypes["data.npy"] == "uint16"  # counts up to 2821
    (vals, cols), _, _ = ds.get_row(0)
    s, e = m.indptr[0], m.indptr[1]
    assert row_dict(vals, cols) == {c: v for c, v in row_dict(m.data[s:e], m.indices[s:e]).items() if c < 50}


def test_convert_failures(tmp_path, inputs, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), "-o", str(tmp_path / "o1")]) == 1
    assert "No inputs found" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.h5ad").write_bytes(b"\x89HDF\r\n truncated")
    assert main(["convert", str(bad), "-o", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.h5ad" in err and "Traceback" not in err

    neg = tmp_path / "neg"
    neg.mkdir()
    make_adata(sp.csr_matrix(np.array([[-2.0, 1.0]], dtype=np.float32))).write_h5ad(neg / "scaled.h5ad")
    shutil.copy(inputs / "synthetic.h5ad", neg)
    assert main(["convert", str(neg), "-o", str(tmp_path / "o3"), "--use-X-not-raw", "--data-dtype", "uint16", "-q"]) == 1
    assert "scaled.h5ad" in capsys.readouterr().err
    # an int and a float input together: auto picks the float family, nothing fails
    assert main(["convert", str(neg), "-o", str(tmp_path / "o4"), "--use-X-not-raw", "--data-dtype", "auto", "-q"]) == 0
    assert SingleCellMemMapDataset(tmp_path / "o4").dtypes["data.npy"] == "float32"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("o", "."))) == ["o4"]

    with pytest.raises(SystemExit) as e:
        main(["convert", str(inputs), "-o", str(tmp_path / "o5"), "--data-dtype", "int8"])
    assert e.value.code == 2


def test_existing_output_refused_then_overwritten(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(inputs / "synthetic.h5ad"), "-o", str(out), "--use-X-not-raw", "-q"]) == 0
    before = (out / "data.npy").read_bytes()
    assert main(["convert", str(inputs), "-o", str(out), "--use-X-not-raw", "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "data.npy").read_bytes() == before
    assert main(["convert", str(inputs), "-o", str(out), "--use-X-not-raw", "-q", "--overwrite"]) == 0
    assert _archive_rows(out) == 1439


def test_info_validate_cast(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(inputs / "cxg_example_valid.h5ad"), "-o", str(out), "--use-X-not-raw", "-q"]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "320" in text and "136" in text and "float32" in text
    assert main(["info", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["n_rows"] == 320

    assert main(["validate", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: OK"

    before = SingleCellMemMapDataset(out).data.copy()
    assert main(["cast", str(out), "uint8"]) == 1  # counts up to 2821 do not fit
    assert "uint8" in capsys.readouterr().err
    assert SingleCellMemMapDataset(out).dtypes["data.npy"] == "float32"
    assert main(["cast", str(out), "uint16"]) == 0
    ds = SingleCellMemMapDataset(out)
    assert ds.dtypes["data.npy"] == "uint16"
    np.testing.assert_array_equal(ds.data, before.astype(np.uint16))
    assert main(["validate", str(out)]) == 0
    capsys.readouterr()

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    cols = broken / "col_ptr.npy"
    cols.write_bytes(cols.read_bytes()[:-2])
    assert main(["validate", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "problem:" in err and "col_ptr.npy" in err and "INVALID" in err
    assert main(["validate", str(tmp_path / "nothing")]) == 1
    assert main(["info", str(tmp_path / "nothing")]) == 1


def test_upstream_cli(tmp_path, inputs, capsys):
    save = tmp_path / "scdl"
    assert upstream_main(["--data-path", str(inputs), "--save-path", str(save), "--use-X-not-raw"]) == 0
    assert _archive_rows(save) == 332  # h5ad files only, as upstream: 320 + 12
    assert upstream_main(["--data-path", str(inputs), "--save-path", str(save)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == ["obs_features", "var_features"]  # nothing nested
    assert upstream_main(["--data-path", str(inputs), "--save-path", str(save), "--use-X-not-raw", "--overwrite",
                          "--num-workers", "2", "--use-mp", "--data-dtype", "uint16"]) == 0
    assert SingleCellMemMapDataset(save).dtypes["data.npy"] == "uint16"
    assert upstream_main(["--data-path", str(inputs / "synthetic.h5ad"), "--save-path", str(tmp_path / "x")]) == 1
    assert "There a no h5ad files in" in capsys.readouterr().err


def test_console_scripts_are_installed():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.value.startswith("scdl_gpu")}
    assert scripts == {"scdl-gpu": "scdl_gpu.cli:main", "convert_h5ad_to_scdl": "scdl_gpu.cli.upstream:main"}
    exe = Path(sys.executable).parent / "scdl-gpu"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.startswith("scdl-gpu ")
    r = subprocess.run([sys.executable, "-m", "scdl_gpu.cli", "validate", "/nonexistent"], capture_output=True, text=True)
    assert r.returncode == 1 and "problem:" in r.stderr


def test_validate_checksums_notes_quick_and_write_checksums(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(inputs / "synthetic.h5ad"), "-o", str(out), "--use-X-not-raw", "-q"]) == 0
    capsys.readouterr()
    manifest = out / "scdl_gpu_checksums.json"
    assert manifest.is_file()

    # no checksums (as upstream writes archives): valid, with a note on stderr, exit status 0
    saved = manifest.read_bytes()
    manifest.unlink()
    assert main(["validate", str(out)]) == 0
    res = capsys.readouterr()
    assert res.out.strip() == f"{out}: OK" and "note: " in res.err and "carries no checksums" in res.err
    assert main(["validate", "--write-checksums", str(out)]) == 0
    res = capsys.readouterr()
    assert f"checksums recorded in {manifest}" in res.out and manifest.read_bytes() == saved
    assert main(["validate", str(out)]) == 0
    res = capsys.readouterr()
    assert res.out.strip() == f"{out}: OK" and res.err == ""

    # a changed value: named by the full check, not by --quick; and not blessed by --write-checksums
    data = out / "data.npy"
    b = bytearray(data.read_bytes())
    b[0] ^= 1
    data.write_bytes(bytes(b))
    assert main(["validate", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"problem: {data} does not match its recorded crc32c checksum" in err and "INVALID (1 problem)" in err
    assert main(["validate", "--quick", str(out)]) == 0
    res = capsys.readouterr()
    assert res.out.strip() == f"{out}: OK" and "note: Quick check" in res.err
    assert main(["validate", "--write-checksums", str(out)]) == 1
    assert "checksums not recorded" in capsys.readouterr().err and manifest.read_bytes() == saved
    with pytest.raises(SystemExit) as e:
        main(["validate", "--quick", "--write-checksums", str(out)])
    assert e.value.code == 2


def test_validate_reports_leftovers(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(inputs / "synthetic.h5ad"), "-o", str(out), "--use-X-not-raw", "-q"]) == 0
    (tmp_path / ".out.partial-0123abcd").mkdir()
    (out / "data.npy.partial").write_bytes(b"x")
    capsys.readouterr()
    assert main(["validate", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("left over from an interrupted write") == 2 and "INVALID (2 problems)" in err


def test_the_cli_starts_without_torch():
    """`scdl-gpu` imports torch only for the commands that load batches (startup and prompt Ctrl-C)."""
    import subprocess
    import sys

    code = "import sys, scdl_gpu.cli, scdl_gpu.backend; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
