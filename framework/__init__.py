"""medtune: tune medical-imaging deep learning models with pluggable, kernel-backed components.

The public entry points are :func:`create` and :func:`available` (plugins of every kind), the
kernel ops in :mod:`medtune.kernels`, and the ``medtune`` command line.
"""

from __future__ import annotations

from typing import Any

from medtune.hookspecs import hookimpl
from medtune.errors import MedtuneError, PluginError, UnknownPluginError
from medtune.registry import KINDS, available, create

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "MedtuneError",
    "PluginError",
    "UnknownPluginError",
    "available",
    "create",
    "hookimpl",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # ``medtune._C`` is the compiled CPU extension; it is built on first access.
    if name == "_C":
        from medtune.kernels.extension import load_extension

        module = load_extension()
        if module is None:
            raise AttributeError("medtune._C is not available: run `medtune doctor` to see why")
        return module
    raise AttributeError(f"module 'medtune' has no attribute {name!r}")
