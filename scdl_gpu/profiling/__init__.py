"""Throughput and per-stage profiling of the loader (``scdl-gpu bench`` / ``scdl-gpu profile``).

Importing this package imports nothing heavy; :func:`run_bench` and :func:`run_profile` bring in
the loader (torch) and, on ``cuda``, CuPy.
"""

from __future__ import annotations

from ._stages import NO_STAGES, STAGES, StageClock

__all__ = ["NO_STAGES", "STAGES", "StageClock", "format_bench", "format_profile", "measure", "measure_ceilings",
           "plot_bench", "plot_profile", "run_bench", "run_profile"]

_LAZY = {
    "run_bench": "._bench", "run_profile": "._profile", "measure": "._measure", "measure_ceilings": "._ceilings",
    "format_bench": "._report", "format_profile": "._report", "plot_bench": "._plot", "plot_profile": "._plot",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
