"""Build and load ``medtune._C``, the C++ (OpenMP) CPU kernels, on first use.

The sources in ``medtune/csrc`` are compiled with ``torch.utils.cpp_extension`` against the very
torch that is imported, into ``$MEDTUNE_CACHE_DIR`` (default ``~/.cache/medtune``) under a
folder keyed by the torch version and a hash of the sources and flags. A torch upgrade or an
edited source therefore triggers a rebuild and can never load a mismatched binary. When no
compiler is found the ops fall back to the PyTorch reference with one warning; ``medtune
doctor`` shows why. ``MEDTUNE_DISABLE_EXTENSION=1`` skips the build on purpose.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

# -fno-trapping-math lets GCC vectorise floor() and selects on floats (the kernels never rely
# on floating-point exceptions); results are unchanged.
CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-march=native", "-fno-trapping-math"]
LDFLAGS = ["-fopenmp"]


class ExtensionWarning(UserWarning):
    """The compiled kernels are unavailable; the PyTorch reference is used instead."""


_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "module": None, "error": None}


def source_files() -> list[Path]:
    """The C++ sources shipped with the package, sorted by name."""
    root = Path(str(importlib.resources.files("medtune.csrc")))
    return sorted(root.glob("*.cpp"))


def cache_dir() -> Path:
    """Root of medtune's build cache."""
    env = os.environ.get("MEDTUNE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "medtune"


def build_key() -> str:
    """Hash of the sources, headers, flags and torch version the binary depends on."""
    digest = hashlib.sha256()
    root = Path(str(importlib.resources.files("medtune.csrc")))
    for path in sorted(root.glob("*.cpp")) + sorted(root.glob("*.h")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    digest.update(_cpu_flags().encode())  # -march=native binds the binary to this CPU
    return digest.hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def build_directory() -> Path:
    return cache_dir() / f"torch-{torch.__version__}" / build_key()


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"medtune_C_{build_key()}"
    if not any(directory.glob(f"{name}*.so")):
        print(
            "medtune: compiling the C++ kernels for this torch (once, about a minute)...",
            file=sys.stderr,
            flush=True,
        )
    return cpp_extension.load(
        name=name,
        sources=[str(p) for p in source_files()],
        extra_cflags=CFLAGS,
        extra_ldflags=LDFLAGS,
        build_directory=str(directory),
        verbose=False,
    )


def load_extension() -> ModuleType | None:
    """``medtune._C`` if it can be built and loaded, else ``None`` (after one warning)."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            if os.environ.get("MEDTUNE_DISABLE_EXTENSION") == "1":
                _state["error"] = "disabled by MEDTUNE_DISABLE_EXTENSION=1"
            else:
                try:
                    module = _build()
                except Exception as exc:  # no compiler, no headers, no ninja, ...
                    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    _state["error"] = f"{type(exc).__name__}: {first_line}"
                    warnings.warn(
                        "medtune: the C++ kernels could not be built "
                        f"({_state['error']}); falling back to the PyTorch reference, which is "
                        "slower. Run `medtune doctor` for details.",
                        ExtensionWarning,
                        stacklevel=3,
                    )
                else:
                    sys.modules["medtune._C"] = module
                    _state["module"] = module
        return _state["module"]  # type: ignore[return-value]


def extension_error() -> str | None:
    """Why the extension is not loaded (``None`` if it is, or was never tried)."""
    return _state["error"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """``None`` if the C++ kernels can run, else the reason (builds on first call)."""
    return None if load_extension() is not None else extension_error()
