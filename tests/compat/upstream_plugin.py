"""A pytest plugin that runs upstream bionemo-scdl's own test files against scdl_gpu.

    pytest -p tests.compat.upstream_plugin <upstream checkout>/sub-packages/bionemo-scdl/tests

It installs the compatibility layer before upstream's conftest imports ``bionemo.scdl``, and
stands in for upstream's test-data downloader (``bionemo.scdl.data.load``, which scdl_gpu does not
provide): ``load(tag)`` returns a path that does not exist, and a test that fails because it
touched that path is reported as skipped (it needs a download), so every test that can run does.
Run it with scdl_gpu importable and the real bionemo-scdl not yet imported.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import pytest

import scdl_gpu.compat

NOT_DOWNLOADED = Path(tempfile.gettempdir()) / "scdl-gpu-upstream-data-not-downloaded"


def _load(tag: str, *args, **kwargs) -> Path:
    return NOT_DOWNLOADED / str(tag)


def _downloader() -> None:
    for name in ("bionemo.scdl.data", "bionemo.scdl.data.load"):
        module = types.ModuleType(name, "stand-in for upstream's test-data downloader (see upstream_plugin)")
        module.load = _load
        module.__path__ = []  # a package, so the child import resolves
        sys.modules[name] = module


def _needs_download(excinfo) -> bool:
    exc = excinfo.value if excinfo is not None else None
    while exc is not None:
        if str(NOT_DOWNLOADED) in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _needs_download(call.excinfo):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, "needs upstream's test-data download")


scdl_gpu.compat.install()
_downloader()
