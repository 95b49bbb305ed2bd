"""How the package installs: metadata without deprecation warnings, and our commands on PATH."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_string_the_build_backend_supports():
    """The ``{ text = ... }`` table makes setuptools print a deprecation warning on every install."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    (setuptools,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools).group(1)) >= 77  # PEP 639 strings from 77


def test_every_subpackage_is_in_the_wheel():
    """An editable install finds any subpackage; a wheel carries only the listed ones (scdl_gpu.compat
    was missing: `pip install .` then had no compatibility layer)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "scdl_gpu").rglob("__init__.py")}
    listed = set(meta["tool"]["setuptools"]["packages"])
    assert on_disk <= listed, sorted(on_disk - listed)


def test_every_install_of_bionemo_scdl_is_followed_by_ours():
    """The test and bench extras bring bionemo-scdl, whose convert_h5ad_to_scdl may be written after ours."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = {name for name, deps in meta["project"]["optional-dependencies"].items() if any("bionemo-scdl" in d for d in deps)}
    recipe = (ROOT / "Makefile").read_text().splitlines()
    installs = [i for i, line in enumerate(recipe) if re.search(r"pip install .*-e \"\.\[", line)]
    covered = set()
    for i in installs:
        names = set(re.search(r"\.\[([^\]]+)\]", recipe[i]).group(1).split(","))
        if names & extras:
            assert recipe[i + 1].strip() == "$(OUR_SCRIPTS)", recipe[i]
            covered |= names & extras
    assert covered == extras


def test_convert_h5ad_to_scdl_on_the_venv_path_is_ours():
    venv = Path(sys.prefix)
    if sys.prefix == sys.base_prefix or not (venv / ".installed").exists():
        pytest.skip("not running from a virtual environment made by the Makefile (no .installed stamp)")
    script = venv / "bin" / "convert_h5ad_to_scdl"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--overwrite" in r.stdout, f"{script} is not scdl_gpu's:\n{r.stdout}{r.stderr}"
