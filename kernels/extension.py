"""Build and load ``medtune._C``, the C++ (OpenMP) CPU kernels, on first use.

The sources in ``medtune/csrc`` are compiled with ``torch.utils.cpp_extension`` against the very
torch that is imported, into ``$MEDTUNE_CACHE_DIR`` (default ``~/.cache/medtune``) under a
folder keyed by the torch version and a hash of the sources and flags. A torch upgrade or an
edited source therefore triggers a rebuild and can never load a mismatched binary. When no
compiler is found the ops fall back to the PyTorch reference with one warning; ``medtune
doctor`` shows why. ``MEDTUNE_DISABLE_EXTENSION=1`` skips the build on purpose.

A keyed folder holds::

    build.lock         held (flock) by the one process that builds; names it while it does
    src/               the sources, copied from the install that built first
    build/             torch's build folder (ninja files, objects) of the build in progress
    <name>.so          the finished binary, renamed into place when complete

Two choices make the build robust. The binary is compiled from the copy in ``src/``, never
from the installed package, and once ``<name>.so`` exists it is imported directly (no
compiler, no ninja): two installs of the same sources (two virtual environments, a clone and
an install) share one binary instead of rebuilding each other's. And the build is guarded by
an ``flock`` of medtune's own, which the kernel releases when its holder dies: a build killed
mid-way (its torch lock file left behind, its compiler children perhaps still running) is
found by the next process, whose build folder is moved aside and rebuilt from scratch, instead
of waiting forever on the dead process; a process that waits for a live builder says which
one on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch

# -fno-trapping-math lets GCC vectorise floor() and selects on floats (the kernels never rely
# on floating-point exceptions); results are unchanged.
CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-march=native", "-fno-trapping-math"]
LDFLAGS = ["-fopenmp"]
EXTENSION_NAME = "medtune_C"
# Part of the key: a change of the keyed folder's layout gets folders of its own.
LAYOUT = "src-copy-1"
SOURCE_SUFFIXES = (".cpp", ".h")
WAIT_REPORT_SECONDS = 30.0  # how often a waiting process repeats who it waits for


class ExtensionWarning(UserWarning):
    """The compiled kernels are unavailable; the PyTorch reference is used instead."""


_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "module": None, "error": None}


def source_files(root: Path | None = None) -> list[Path]:
    """The C++ sources and headers in ``root`` (default: those shipped as ``medtune.csrc``),
    sorted by name."""
    if root is None:
        root = Path(str(importlib.resources.files("medtune.csrc")))
    return sorted(p for p in Path(root).iterdir() if p.suffix in SOURCE_SUFFIXES)


def cache_dir() -> Path:
    """Root of medtune's build cache."""
    env = os.environ.get("MEDTUNE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "medtune"


def build_key(sources: Sequence[Path] | None = None) -> str:
    """Hash of the sources' names and contents (default: medtune's), the flags, the torch and
    Python versions and the CPU that the binary depends on; never of where the sources lie."""
    digest = hashlib.sha256()
    for path in sorted(source_files() if sources is None else sources, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    digest.update(_cpu_flags().encode())  # -march=native binds the binary to this CPU
    digest.update(LAYOUT.encode())
    return digest.hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def build_directory(sources: Sequence[Path] | None = None) -> Path:
    """The keyed folder that holds the binary built from ``sources`` (default: medtune's)."""
    return cache_dir() / f"torch-{torch.__version__}" / build_key(sources)


def build_and_load(sources: Sequence[Path], name: str = EXTENSION_NAME) -> ModuleType:
    """Import the extension ``name`` compiled from ``sources`` (``.cpp`` files compiled,
    ``.h`` files beside them), building it first if this keyed folder has no binary yet.

    Safe to call from several processes at once: one builds, the others wait for it (and say
    so on stderr) and then import its binary. Raises what ``torch.utils.cpp_extension`` raises
    when the build fails (no compiler, no ninja, a compile error).
    """
    sources = [Path(p) for p in sources]
    directory = build_directory(sources)
    module_name = f"{name}_{directory.name}"
    binary = directory / f"{module_name}.so"
    if binary.is_file():  # complete: it is renamed into place only after a successful build
        return _import_binary(module_name, binary)
    directory.mkdir(parents=True, exist_ok=True)
    with build_lock(directory):
        if binary.is_file():  # built by the process we waited for
            return _import_binary(module_name, binary)
        _set_aside_unfinished_build(directory)
        copies = _copy_sources(sources, directory / "src")
        return _compile(module_name, copies, directory / "build", binary)


def _import_binary(module_name: str, binary: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, binary)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the compiled extension {binary}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory/build.lock`` exclusively, waiting for its holder if there is one.

    An ``flock``: the kernel releases it when the holder exits or is killed, so a dead
    holder's lock is never waited for. While it waits, this process says on stderr which
    process holds it and since when (the holder writes its pid, host and start time into the
    file), again every ``WAIT_REPORT_SECONDS``.
    """
    import fcntl  # POSIX only; elsewhere the ImportError becomes the fallback's reason

    path = directory / "build.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            started = time.monotonic()
            reported = None
            while True:
                if reported is None or time.monotonic() - reported >= WAIT_REPORT_SECONDS:
                    print(_waiting_message(path, time.monotonic() - started), file=sys.stderr,
                          flush=True)
                    reported = time.monotonic()
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.time()}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _waiting_message(path: Path, waited: float) -> str:
    try:
        holder = json.loads(path.read_text())
        who = f"process {holder['pid']} on {holder['host']}"
        since = time.strftime("%H:%M:%S", time.localtime(holder["since"]))
        when = f"since {since}, {time.time() - holder['since']:.0f} s ago"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written it yet
        who, when = "another process", "since a moment ago"
    return (f"medtune: waiting for {who}, which is building the C++ kernels in {path.parent} "
            f"({when}; waited {waited:.0f} s). If that process is stuck, end it and medtune "
            "builds them here.")


def _set_aside_unfinished_build(directory: Path) -> None:
    """Move away the build folder of a build that never finished (its holder died or failed):
    its torch lock file would block torch forever, its objects may be truncated, and its
    compiler processes may still be running; they go on writing into the moved folder."""
    for stale in directory.glob("stale-*"):
        shutil.rmtree(stale, ignore_errors=True)
    build = directory / "build"
    if build.exists():
        stale = directory / f"stale-{uuid.uuid4().hex[:8]}"
        build.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)


def _copy_sources(sources: Sequence[Path], target: Path) -> list[Path]:
    """``sources`` copied into ``target`` (a file already there with the same bytes is left
    alone), so that the build never names the folder the package is installed in."""
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in sources:
        copy = target / source.name
        content = source.read_bytes()
        if not copy.is_file() or copy.read_bytes() != content:
            partial = copy.with_name(f".{copy.name}.{os.getpid()}")
            partial.write_bytes(content)
            os.replace(partial, copy)
        copies.append(copy)
    return copies


def _compile(module_name: str, sources: Sequence[Path], build: Path, binary: Path) -> ModuleType:
    from torch.utils import cpp_extension

    print(
        "medtune: compiling the C++ kernels for this torch (once, about a minute)...",
        file=sys.stderr,
        flush=True,
    )
    build.mkdir()
    module = cpp_extension.load(
        name=module_name,
        sources=[str(p) for p in sources if p.suffix == ".cpp"],
        extra_cflags=CFLAGS,
        extra_ldflags=LDFLAGS,
        build_directory=str(build),
        verbose=False,
    )
    partial = binary.with_name(f".{binary.name}.{os.getpid()}")
    shutil.copyfile(build / binary.name, partial)
    os.replace(partial, binary)
    return module


def load_extension() -> ModuleType | None:
    """``medtune._C`` if it can be built and loaded, else ``None`` (after one warning)."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            if os.environ.get("MEDTUNE_DISABLE_EXTENSION") == "1":
                _state["error"] = "disabled by MEDTUNE_DISABLE_EXTENSION=1"
            else:
                try:
                    module = build_and_load(source_files())
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
