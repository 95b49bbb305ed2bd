"""Every ``kernels/*.cu`` compiles with nvcc for the GPUs we target, with every template instantiated,
and stays loadable by NVRTC (CuPy's compiler), which has no host standard headers.

Without a GPU this is what catches a broken kernel; the CPU shim tests check what the kernels compute.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scdl_gpu import kernels

KERNELS = sorted((Path(__file__).resolve().parents[2] / "kernels").glob("*.cu"))
ARCHS = ["sm_80", "sm_90"]  # A100, H100/H200


def test_kernel_files_exist():
    """Every kernel file is one the package knows (the NVRTC test compiles each one's expressions)."""
    assert [p.name for p in KERNELS] == sorted(kernels.SOURCES)


@pytest.mark.nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_nvcc_compiles(path, arch, tmp_path):
    cmd = [shutil.which("nvcc") or "nvcc", "-std=c++17", "-DSCDL_INSTANTIATE_ALL", f"-arch={arch}", "-cubin",
           "-Werror", "all-warnings", "-o", str(tmp_path / f"{path.stem}.{arch}.cubin"), str(path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / f"{path.stem}.{arch}.cubin").stat().st_size > 0


@pytest.mark.nvcc
@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_no_subnormal_flush_under_cupys_ftz(path, tmp_path):
    """CuPy compiles with ``-ftz=true``; a float<->double conversion must still keep subnormals, as the CPU
    does (no ``cvt.ftz``/``cvt.rn.ftz`` in the PTX)."""
    out = tmp_path / f"{path.stem}.ptx"
    cmd = [shutil.which("nvcc") or "nvcc", "-std=c++17", "-DSCDL_INSTANTIATE_ALL", "-arch=sm_90", "-ptx", "-ftz=true",
           "-o", str(out), str(path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    flushing = sorted(set(re.findall(r"cvt(?:\.\w+)*\.ftz(?:\.\w+)*", out.read_text())))
    assert not flushing, f"{path.name}: {flushing}"


def _outside_rtc_guard(text: str) -> list[str]:
    """``#include`` lines NVRTC would see: all but those in the ``#else`` of ``#ifdef __CUDACC_RTC__``
    or inside ``#ifndef __CUDACC_RTC__`` (other conditionals nest but are assumed true)."""
    stack: list[list] = []  # per open conditional: [kind, is the current branch hidden from NVRTC]
    seen = []
    for line in text.splitlines():
        d = re.sub(r"^#\s*", "#", line.strip())
        if re.match(r"#ifdef\s+__CUDACC_RTC__\b", d):
            stack.append(["rtc", False])
        elif re.match(r"#ifndef\s+__CUDACC_RTC__\b", d) or re.match(r"#if\s+!\s*defined\s*\(?\s*__CUDACC_RTC__", d):
            stack.append(["not_rtc", True])
        elif d.startswith("#if"):
            stack.append(["other", False])
        elif d.startswith("#else") and stack:
            kind = stack[-1][0]
            stack[-1][1] = kind == "rtc" if kind != "other" else False
        elif d.startswith("#elif") and stack:
            stack[-1][1] = False  # conservatively visible
        elif d.startswith("#endif") and stack:
            stack.pop()
        elif d.startswith("#include") and not any(hidden for _, hidden in stack):
            seen.append(line.strip())
    return seen


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_no_include_visible_to_nvrtc(path):
    assert _outside_rtc_guard(path.read_text()) == []


def test_include_guard_check_itself():
    good = "#ifdef __CUDACC_RTC__\ntypedef int x;\n#else\n#include <cstdint>\n#endif\n"
    also_good = "#ifndef __CUDACC_RTC__\n#include <cstdint>\n#endif\n"
    bad = "#include <cstdint>\n"
    inside_rtc = "#ifdef __CUDACC_RTC__\n#include <cstdint>\n#endif\n"
    assert _outside_rtc_guard(good) == _outside_rtc_guard(also_good) == []
    assert _outside_rtc_guard(bad) == _outside_rtc_guard(inside_rtc) == ["#include <cstdint>"]
