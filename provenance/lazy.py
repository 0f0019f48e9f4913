"""Package attributes imported on first use.

The analysis packages re-export their entry points (``from provenance.compare import
compare``), but importing them pulls in torch, numba and scipy: seconds that ``provenance
--help``, ``inspect`` and every command's option parsing should not pay. Their ``__init__``
therefore maps each exported name to the submodule defining it (:func:`lazy_package`), which
is imported when the name is first used.

Two exported functions share their submodule's name (``watermark.trace``, ``refdb.identify``).
An eager ``__init__`` binds the function after importing the submodule, so the name means the
function; here the import system would bind the submodule whenever it is first imported, so
the package refuses that one binding and the name keeps meaning the function."""
from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping

_EXPORTS = "__lazy_exports__"


class _LazyPackage(types.ModuleType):
    def __getattr__(self, name: str) -> object:  # only for names not bound yet
        module = self.__dict__.get(_EXPORTS, {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: object) -> None:
        exported = name in self.__dict__.get(_EXPORTS, {})
        if exported and isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            return  # the submodule behind an exported function of the same name: keep the function
        super().__setattr__(name, value)


def lazy_package(package: str, exports: Mapping[str, str]) -> None:
    """Make ``package`` import each name of ``exports`` (name -> defining submodule) on first use."""
    module = sys.modules[package]
    module.__dict__[_EXPORTS] = dict(exports)
    module.__class__ = _LazyPackage
