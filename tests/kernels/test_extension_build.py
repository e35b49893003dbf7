"""The C++ extension's build: a killed build never blocks the next process, a waiting process
names the builder it waits for, and two installs of the same sources share one binary.

Each test builds a stand-in extension (one C function, no torch headers: it compiles in about
a second) through the code path that builds ``medtune._C``, in subprocesses that share a
throw-away ``MEDTUNE_CACHE_DIR``. The compiler is a wrapper script around the real one that
logs each call and, when asked, blocks in the compile step, so a build can be killed while it
compiles.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, python_path

# Linux: the tests find a killed build's orphans in /proc
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
TIMEOUT = 90  # seconds a loading process may take; a hang fails instead of blocking the suite

STANDIN_CPP = textwrap.dedent(
    """\
    // A one-function Python module named by torch's -DTORCH_EXTENSION_NAME.
    #include <Python.h>
    #include "standin.h"
    #define CONCAT2(a, b) a##b
    #define CONCAT(a, b) CONCAT2(a, b)
    #define STR2(x) #x
    #define STR(x) STR2(x)
    static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(STANDIN_ANSWER); }
    static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, nullptr},
                                    {nullptr, nullptr, 0, nullptr}};
    static PyModuleDef definition = {PyModuleDef_HEAD_INIT, STR(TORCH_EXTENSION_NAME), nullptr,
                                     -1, methods};
    PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
        return PyModule_Create(&definition);
    }
    """
)

LOADER = textwrap.dedent(
    """\
    import sys
    from pathlib import Path
    from medtune.kernels import extension
    module = extension.build_and_load(extension.source_files(Path(sys.argv[1])), "standin")
    print("ANSWER", module.answer(), module.__file__)
    """
)


def _compiler_and_ninja_or_skip() -> str:
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        pytest.skip("no C++ compiler")
    if shutil.which("ninja") is None:
        pytest.skip("ninja is not installed")
    return compiler


def _standin(folder: Path, answer: int = 42) -> Path:
    """The stand-in extension's sources in ``folder`` (as in one install of the package)."""
    folder.mkdir(parents=True)
    (folder / "standin.cpp").write_text(STANDIN_CPP)
    (folder / "standin.h").write_text(f"#define STANDIN_ANSWER {answer}\n")
    return folder


def _wrapped_compiler(folder: Path, *, block_compiles: bool = False) -> Path:
    """A compiler named g++ (as torch expects) that appends each call to ``folder/calls.log``
    and then runs the real one; with ``block_compiles``, a compile step first touches
    ``folder/compiling`` and sleeps instead (until its process group is killed)."""
    folder.mkdir(parents=True)
    block = f'touch "{folder}/compiling"; sleep 600' if block_compiles else ":"
    script = folder / "g++"
    script.write_text(textwrap.dedent(
        f"""\
        #!/bin/sh
        echo "$*" >> "{folder}/calls.log"
        case " $* " in *" -c "*) {block};; esac
        exec "{_compiler_and_ninja_or_skip()}" "$@"
        """
    ))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _calls(compiler: Path) -> int:
    log = compiler.parent / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _env(cache: Path, compiler: Path) -> dict[str, str]:
    env = dict(os.environ, MEDTUNE_CACHE_DIR=str(cache), CXX=str(compiler),
               PYTHONPATH=python_path())
    env.pop("MEDTUNE_DISABLE_EXTENSION", None)
    return env


def _load(sources: Path, cache: Path, compiler: Path) -> subprocess.CompletedProcess:
    """Load the stand-in from ``sources`` in a fresh process; fails the test past TIMEOUT."""
    return subprocess.run([sys.executable, "-c", LOADER, str(sources)], cwd=ROOT, text=True,
                          capture_output=True, env=_env(cache, compiler), timeout=TIMEOUT)


def _start_blocked_build(sources: Path, cache: Path, compiler: Path) -> subprocess.Popen:
    """A process that builds the stand-in and is stopped in the compile step (returned once
    it is there); it leads a session of its own, so its compiler children can be ended
    with it."""
    builder = subprocess.Popen([sys.executable, "-c", LOADER, str(sources)], cwd=ROOT,
                               env=_env(cache, compiler), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while not (compiler.parent / "compiling").exists():
        assert builder.poll() is None, "the blocked build ended before compiling"
        assert time.monotonic() < deadline, "the blocked build never reached the compiler"
        time.sleep(0.05)
    return builder


def _end_session(process: subprocess.Popen) -> None:
    """Kill what is left of the session ``process`` leads: its orphaned ninja and the compiler
    commands, which ninja starts in process groups of their own."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getsid(int(entry.name)) == process.pid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait()


def test_a_build_killed_while_compiling_does_not_block_the_next_process(tmp_path):
    sources, cache = _standin(tmp_path / "install"), tmp_path / "cache"
    blocking = _wrapped_compiler(tmp_path / "slow", block_compiles=True)
    builder = _start_blocked_build(sources, cache, blocking)
    try:
        os.kill(builder.pid, signal.SIGKILL)  # the Python process only, as the OOM killer would
        builder.wait()
        (build,) = cache.glob("torch-*/*/build")
        assert (build / "lock").exists()  # torch's lock file, left behind by the dead build
        started = time.monotonic()
        loaded = _load(sources, cache, _wrapped_compiler(tmp_path / "cc"))
        elapsed = time.monotonic() - started
    finally:
        _end_session(builder)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("ANSWER 42"), loaded.stdout + loaded.stderr
    assert elapsed < TIMEOUT
    assert not list(cache.glob("torch-*/*/stale-*")), "the dead build's folder was not removed"


def test_a_waiting_process_names_the_builder_and_goes_on_when_it_dies(tmp_path):
    sources, cache = _standin(tmp_path / "install"), tmp_path / "cache"
    blocking = _wrapped_compiler(tmp_path / "slow", block_compiles=True)
    builder = _start_blocked_build(sources, cache, blocking)
    stderr = tmp_path / "waiter.err"
    try:
        with open(stderr, "w") as err:
            waiter = subprocess.Popen([sys.executable, "-c", LOADER, str(sources)], cwd=ROOT,
                                      env=_env(cache, _wrapped_compiler(tmp_path / "cc")),
                                      stdout=subprocess.PIPE, stderr=err, text=True)
        deadline = time.monotonic() + TIMEOUT
        while f"waiting for process {builder.pid} on " not in stderr.read_text():
            assert waiter.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "the waiter never said whom it waits for"
            time.sleep(0.05)
        assert "since" in stderr.read_text()
        time.sleep(1.0)
        assert waiter.poll() is None, "the waiter did not wait for the live builder"
        os.kill(builder.pid, signal.SIGKILL)
        out, _ = waiter.communicate(timeout=TIMEOUT)
    finally:
        _end_session(builder)
    assert waiter.returncode == 0, stderr.read_text()
    assert out.startswith("ANSWER 42"), out + stderr.read_text()


def test_two_installs_share_one_binary_and_never_rebuild_each_other(tmp_path):
    """Two copies of the same sources (two environments, a clone and an install) alternate
    without a compiler call; an edited source still gets a build of its own."""
    first, second = _standin(tmp_path / "env1"), _standin(tmp_path / "env2")
    cache, compiler = tmp_path / "cache", _wrapped_compiler(tmp_path / "cc")
    built = _load(first, cache, compiler)
    assert built.returncode == 0 and built.stdout.startswith("ANSWER 42"), built.stderr
    calls = _calls(compiler)
    assert calls > 0
    (binary,) = cache.glob("torch-*/*/standin_*.so")
    before = binary.stat()
    for sources in (second, first):
        loaded = _load(sources, cache, compiler)
        assert loaded.returncode == 0 and loaded.stdout.startswith("ANSWER 42"), loaded.stderr
        assert "compiling" not in loaded.stderr
        assert loaded.stdout.split()[2] == str(binary)
    assert _calls(compiler) == calls, "an install rebuilt (or probed the compiler)"
    assert (binary.stat().st_ino, binary.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert str(first) not in (binary.parent / "build" / "build.ninja").read_text()

    (second / "standin.h").write_text("#define STANDIN_ANSWER 43\n")
    edited = _load(second, cache, compiler)
    assert edited.returncode == 0 and edited.stdout.startswith("ANSWER 43"), edited.stderr
    assert _calls(compiler) > calls
