"""Opt-in: make upstream's import paths (``bionemo.scdl...``) resolve to scdl_gpu.

    import scdl_gpu.compat
    scdl_gpu.compat.install()
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset  # ours

or run an unmodified script with ``python -m scdl_gpu.compat script.py [args]``. Importing
scdl_gpu never installs it. ``MODULES`` lists every upstream module and what stands in for it.
"""

from __future__ import annotations

import sys

from ._finder import UpstreamFinder, owned, upstream_modules
from ._table import MODULES, ROOT

__all__ = ["MODULES", "install", "installed", "uninstall"]

_finder: UpstreamFinder | None = None


def installed() -> bool:
    return _finder is not None and _finder in sys.meta_path


def install() -> None:
    """Answer imports of ``bionemo.scdl`` with scdl_gpu (idempotent).

    Raises ``RuntimeError`` when the real ``bionemo.scdl`` is already imported: objects from the
    two packages would meet in one process.
    """
    global _finder
    if installed():
        return
    real = [n for n in upstream_modules() if not owned(sys.modules[n])]
    if real:
        raise RuntimeError(
            f"The real bionemo-scdl is already imported ({', '.join(sorted(real)[:3])}); "
            "call scdl_gpu.compat.install() before anything imports bionemo.scdl"
        )
    _finder = UpstreamFinder()
    sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Undo :func:`install`: drop the finder and every module it created (idempotent)."""
    global _finder
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None
    root = ROOT.partition(".")[0]
    for name in upstream_modules() + [root]:
        if owned(sys.modules.get(name)):
            del sys.modules[name]
    parent = sys.modules.get(root)
    if parent is not None and owned(getattr(parent, "scdl", None)):
        del parent.scdl  # the real namespace package kept our child as an attribute
