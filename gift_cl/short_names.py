"""The short names a source checkout offers for three of gift_cl's packages.

The repository keeps ``strategies/``, ``orchestration/`` and ``analysis/`` at its top level; installed, they are
``gift_cl.strategies``, ``gift_cl.orchestration`` and ``gift_cl.analysis`` (``gift_cl/`` links to them), so a
wheel claims no generic top-level name (a package called ``strategies`` exists on PyPI). In a checkout the
short names still import (``from orchestration.loop import run``, ``python -m orchestration.sweep``): the
folder's ``__init__`` calls :func:`alias_package`, which makes the short name and every module below it the
very same module objects as the installed names, so no module is ever executed twice under two names.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType


class _ShortNameFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``<short>.<rest>`` as the module ``<full>.<rest>`` (one object, two names in ``sys.modules``)."""

    def __init__(self, short: str, full: str):
        self.short, self.full = short, full

    def full_name(self, name: str) -> str:
        return self.full + name[len(self.short):]

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(self.short + "."):
            return None
        real = importlib.util.find_spec(self.full_name(name))
        if real is None:
            return None
        spec = importlib.util.spec_from_loader(name, self, origin=real.origin,
                                               is_package=real.submodule_search_locations is not None)
        return spec

    def create_module(self, spec):
        module = importlib.import_module(self.full_name(spec.name))
        spec.loader_state = module.__spec__  # importlib overwrites __spec__ with this alias spec; put it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        # executed already, under its installed name: only its own spec goes back
        alias_spec = module.__spec__
        if alias_spec is not None and alias_spec.loader_state is not None:
            module.__spec__ = alias_spec.loader_state

    def get_code(self, name: str):
        """``python -m <short>.<module>``: runpy runs the installed module's code as ``__main__``."""
        full = self.full_name(name)
        spec = importlib.util.find_spec(full)
        if spec is None or spec.loader is None:
            raise ImportError(f"no module named {full!r}", name=name)
        return spec.loader.get_code(full)  # type: ignore[attr-defined]


def alias_package(short: str, full: str) -> ModuleType:
    """Make ``short`` (the folder's name in a checkout) an alias of the installed package ``full``."""
    package = importlib.import_module(full)
    if not any(isinstance(f, _ShortNameFinder) and f.short == short for f in sys.meta_path):
        sys.meta_path.insert(0, _ShortNameFinder(short, full))
    sys.modules[short] = package
    for name, module in list(sys.modules.items()):  # submodules imported by the installed name so far
        if name.startswith(full + "."):
            sys.modules.setdefault(short + name[len(full):], module)
    return package
