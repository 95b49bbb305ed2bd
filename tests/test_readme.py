"""Every code example of the README runs as written.

The Python blocks run in order in one namespace, as a reader pasting them into one session would;
the shell blocks run line by line. They run in a scratch directory holding the files the examples
name: ``cells.h5ad``, ``extra.h5ad``, ``plates/`` and ``genes.txt`` (bundled real data). Blocks
that install or call ``make`` (the quick start, which CI runs itself) are the only ones skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

from tests.conftest import BUNDLED

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"^\s*(make |pip install|python -m venv)")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    shutil.copy(BUNDLED / "cxg_small_perturbations.h5ad", d / "cells.h5ad")
    shutil.copy(BUNDLED / "cxg_small_perturbations.h5ad", d / "extra.h5ad")
    (d / "plates").mkdir()
    for k in (1, 2):
        shutil.copy(BUNDLED / "cxg_example_valid.h5ad", d / "plates" / f"plate_{k}.h5ad")
    genes = ad.read_h5ad(BUNDLED / "cxg_small_perturbations.h5ad", backed="r").var_names[:500]
    (d / "genes.txt").write_text("\n".join(genes) + "\n")
    return d


def test_the_readme_has_examples():
    assert len(blocks("python")) >= 4 and len(blocks("bash")) >= 3


def test_python_examples_run_in_order(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": "readme"}
    for k, code in enumerate(blocks("python")):
        try:
            exec(compile(code, f"README.md python block {k + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README python block {k + 1} failed: {type(e).__name__}: {e}\n{code}") from e
    assert namespace["model_input"].shape == (64, 1000)


def test_shell_examples_run(workdir):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    lines = [ln.split(" #")[0].strip() for block in blocks("bash") for ln in block.splitlines()]
    run = [ln for ln in lines if ln and not SKIP.match(ln)]
    assert any(ln.startswith("scdl-gpu convert") for ln in run)
    for line in run:
        proc = subprocess.run(shlex.split(line), cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"`{line}` exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
