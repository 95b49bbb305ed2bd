"""The command line as a shell user meets it: flags in messages, pipes, option placement."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu.cli import main
from scdl_gpu.cli._main import FLAGS, build_parser, for_the_shell
from tests.conftest import make_adata, random_csr


@pytest.fixture
def archive(tmp_path):
    make_adata(random_csr(12, 30, seed=3)).write_h5ad(tmp_path / "a.h5ad")
    out = tmp_path / "a.scdl"
    assert main(["convert", str(tmp_path / "a.h5ad"), "-o", str(out), "--use-X-not-raw", "-q"]) == 0
    return out


def test_errors_name_flags_not_python_keywords(tmp_path, archive, capsys):
    capsys.readouterr()
    # a file without raw.X, converted without --use-X-not-raw
    assert main(["convert", str(tmp_path / "a.h5ad"), "-o", str(tmp_path / "o1"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "pass --use-X-not-raw to use normalized counts" in err and "use_X_not_raw" not in err
    # a mistyped neighbor key: an error naming the input and the keys it has, the archive not written
    g = sp.csr_matrix(np.eye(12, dtype=np.float32))
    make_adata(random_csr(12, 30, seed=3), obsp={"connectivities": g}).write_h5ad(tmp_path / "n.h5ad")
    args = ["convert", str(tmp_path / "n.h5ad"), "-o", str(tmp_path / "o2"), "--use-X-not-raw", "-q", "--neighbor-key", "connectivitiez"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"'connectivitiez' not found in {tmp_path / 'n.h5ad'} (obsp keys: connectivities)" in err
    assert "pass --allow-missing-neighbors" in err and not (tmp_path / "o2").exists()
    with warnings.catch_warnings():  # shown as the CLI shows it, not raised by the test's filter
        warnings.simplefilter("default")
        assert main([*args, "--allow-missing-neighbors"]) == 0
    assert "warning: Neighbor key 'connectivitiez' not found" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "neighbor_indices.npy").exists()
    assert main(["convert", str(tmp_path / "n.h5ad"), "-o", str(tmp_path / "o3"), "--use-X-not-raw", "-q", "--neighbor-key", "connectivities"]) == 0
    assert (tmp_path / "o3" / "neighbor_indices.npy").exists()


def test_lossy_cast_needs_the_flag(tmp_path, capsys):
    m = random_csr(12, 30, seed=3, integer=False)  # normalised values in (0, 1)
    make_adata(m).write_h5ad(tmp_path / "f.h5ad")
    out = tmp_path / "f.scdl"
    assert main(["convert", str(tmp_path / "f.h5ad"), "-o", str(out), "--use-X-not-raw", "-q"]) == 0
    before = (out / "data.npy").read_bytes()
    assert main(["cast", str(out), "uint16"]) == 1
    err = capsys.readouterr().err
    assert "uint16 would change stored values" in err and "pass --allow-lossy to cast anyway" in err
    assert (out / "data.npy").read_bytes() == before
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main(["cast", str(out), "uint16", "--allow-lossy"]) == 0
    assert "warning: " in capsys.readouterr().err and (out / "data.npy").stat().st_size == m.nnz * 2


def test_message_translation():
    assert for_the_shell("x; set use_X_not_raw=False to use raw counts") == "x; leave out --use-X-not-raw to use raw counts"
    assert for_the_shell("Error: could not find h5ad path p") == "could not find h5ad path p"
    assert for_the_shell("pass frobnicate=True or not") == "pass frobnicate=True or not"  # no such flag: unchanged
    assert for_the_shell("pass resume=True to keep them") == "pass --resume to keep them"
    parser = build_parser()
    commands = {"allow_lossy": ["cast", "a", "uint8"], "allow_missing_neighbors": ["convert", "a", "-o", "b"]}
    for keyword, flag in FLAGS.items():  # every flag the messages name exists
        args = parser.parse_args([*commands.get(keyword, ["convert", "a", "-o", "b"]), flag])
        assert getattr(args, keyword) is True


def test_missing_archive_has_one_error_prefix(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for target in ("nothing", "empty"):
        assert main(["info", str(tmp_path / target)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Error" not in err, err
    assert main(["info", str(tmp_path / "empty")]) == 1
    assert "the metadata file" in capsys.readouterr().err


def test_debug_after_the_subcommand(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        main(["info", str(tmp_path / "nothing"), "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "info", str(tmp_path / "nothing")])
    assert main(["info", str(tmp_path / "nothing")]) == 1


def test_closed_stdout_exits_quietly_with_the_sigpipe_status(archive):
    """`scdl-gpu info a.scdl | head -1`: no traceback, status 141 (128 + SIGPIPE) as a shell shows."""
    p = subprocess.Popen([sys.executable, "-m", "scdl_gpu.cli", "info", str(archive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first write
    with p.stderr:
        err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""
    # a shell pipeline: head takes the first line, the pipeline succeeds
    r = subprocess.run(f"{sys.executable} -m scdl_gpu.cli info {archive} | head -1", shell=True, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and "Traceback" not in r.stderr
