"""The kernels compile with NVRTC, CuPy's run-time compiler, for every template instantiation the
GPU backend can request (the exact name expressions it passes to ``cupy.RawModule``).

Needs the ``kernel-check`` extra (cuda-bindings + NVRTC, no GPU or driver); skipped without it.
"""

from __future__ import annotations

import pytest

from scdl_gpu import kernels

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="install the kernel-check extra")


def _check(result):
    err = result[0] if isinstance(result, tuple) else result
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    return result[1:] if isinstance(result, tuple) else None


# Instantiations per file: keep_flags per column type, then per value x column type (6 x 4) row_sums,
# densify x 2 outputs and emit x 4 outputs; gather and gather_chunks once per value x column type; the
# four decode kernels per unsigned item type, and the CRC.
COUNTS = {"csr_batch.cu": 4 + 6 * 4 * (1 + 2 + 4), "gather.cu": 2 * 6 * 4, "decode.cu": 4 * 4 + 1}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("file", kernels.SOURCES)
def test_nvrtc_compiles_every_instantiation(file, arch):
    exprs = kernels.all_expressions(file)
    assert len(exprs) == len(set(exprs)) == COUNTS[file]
    try:
        (prog,) = _check(nvrtc.nvrtcCreateProgram(kernels.source(file).encode(), file.encode(), 0, [], []))
    except RuntimeError as e:  # the wheel is there but libnvrtc is not
        pytest.skip(f"NVRTC library not loadable: {e}")
    for e in exprs:
        _check(nvrtc.nvrtcAddNameExpression(prog, e.encode()))
    result = nvrtc.nvrtcCompileProgram(prog, 2, [f"-arch={arch}".encode(), b"-std=c++17"])
    (size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog))
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert result[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    for e in exprs:  # every requested name resolves to a compiled symbol
        (lowered,) = _check(nvrtc.nvrtcGetLoweredName(prog, e.encode()))
        assert lowered.startswith(b"_Z")
    (cubin_size,) = _check(nvrtc.nvrtcGetCUBINSize(prog))
    assert cubin_size > 0
    nvrtc.nvrtcDestroyProgram(prog)
