"""A ``sys.meta_path`` finder that answers imports of ``bionemo.scdl`` and its modules with ours.

Each upstream module becomes a module object holding our objects under upstream's names; a name
upstream has and we do not raises an ``AttributeError`` that says so (``from ... import`` turns it
into an ``ImportError`` naming the module). Modules we do not provide fail to import with why.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

from ._table import MODULES, ROOT, Stand

ORIGIN = "scdl_gpu.compat"


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _missing(fullname: str, stand: Stand):
    def __getattr__(name: str):
        if name in stand.missing:
            raise AttributeError(f"{fullname}.{name} is upstream bionemo-scdl's; scdl_gpu does not provide it")
        raise AttributeError(f"module {fullname!r} ({ORIGIN}) has no attribute {name!r}")

    return __getattr__


class UpstreamLoader(importlib.abc.Loader):
    """Fills a module of upstream's name with the objects that stand in for it."""

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        stand = MODULES.get(name)
        if stand is None:  # the parent "bionemo" namespace when no real one is installed
            return
        for upstream_name, target in stand.names.items():
            setattr(module, upstream_name, _resolve(target))
        if stand.names:  # where the names come from; Python quotes it in "cannot import name" errors
            module.__file__ = sys.modules[next(iter(stand.names.values())).partition(":")[0]].__file__
        module.__doc__ = f"{ORIGIN}: upstream's {name}, answered by scdl_gpu." + (
            f" Not provided: {', '.join(stand.missing)}." if stand.missing else ""
        )
        module.__all__ = sorted(stand.names)
        module.__getattr__ = _missing(name, stand)


class UpstreamFinder(importlib.abc.MetaPathFinder):
    """Answers ``bionemo.scdl*``; answers ``bionemo`` only when no real ``bionemo`` is installed."""

    def __init__(self) -> None:
        self.loader = UpstreamLoader()

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname == ROOT.partition(".")[0]:
            if importlib.machinery.PathFinder.find_spec(fullname) is not None:
                return None  # the real namespace package: other bionemo packages stay importable
            return self._spec(fullname, package=True)
        if fullname != ROOT and not fullname.startswith(ROOT + "."):
            return None
        stand = MODULES.get(fullname)
        if stand is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: upstream bionemo-scdl has no such module, "
                f"so {ORIGIN} maps none",
                name=fullname,
            )
        if stand.absent is not None:
            raise ImportError(f"{fullname} is not provided by {ORIGIN}: {stand.absent}", name=fullname)
        return self._spec(fullname, package=stand.package)

    def _spec(self, fullname: str, package: bool):
        return importlib.machinery.ModuleSpec(fullname, self.loader, origin=ORIGIN, is_package=package)


def owned(module: types.ModuleType | None) -> bool:
    """True for a module this layer created."""
    spec = getattr(module, "__spec__", None)
    return spec is not None and isinstance(spec.loader, UpstreamLoader)


def upstream_modules() -> list[str]:
    """Names in ``sys.modules`` that belong to upstream's package (ours or the real one)."""
    return [n for n in sys.modules if n == ROOT or n.startswith(ROOT + ".")]
