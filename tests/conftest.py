"""Shared fixtures: third-party plugin packages pip-installed into throw-away folders, a Ray
cluster, one torch thread for tiny-matrix modules."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]
REQUIRE_RAY = os.environ.get("MEDTUNE_REQUIRE_RAY") == "1"

# A backend named here must be available: its tests fail instead of being skipped (CI sets it).
REQUIRED_BACKENDS = {b for b in os.environ.get("MEDTUNE_REQUIRE_BACKENDS", "").split(",") if b}


@pytest.fixture(scope="session")
def installed_plugins(tmp_path_factory) -> dict[str, Path]:
    """``{fixture name: folder}``: each fixture plugin installed by pip into its own folder."""
    folders = {}
    for name in ("example_plugin", "broken_plugin", "duplicate_plugin"):
        target = tmp_path_factory.mktemp(name)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--target", str(target), str(FIXTURES / name)],
            check=True,
        )
        folders[name] = target
    return folders


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny ops (GP matrices, small networks): on a busy
    machine a second OpenMP thread makes each small op tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def backend_or_skip(op: str, backend: str, device: str = "cpu") -> None:
    """Skip (or fail, when required by MEDTUNE_REQUIRE_BACKENDS) if ``backend`` cannot run."""
    from medtune.kernels import candidates

    reasons = {impl.backend: reason for impl, reason in candidates(op, device)}
    if backend not in reasons:
        reason = f"{backend} does not run {op} on {device}"
    else:
        reason = reasons[backend]
    if reason is not None:
        if backend in REQUIRED_BACKENDS:
            pytest.fail(f"required backend {backend} unavailable: {reason}")
        pytest.skip(reason)


def python_path() -> str:
    """PYTHONPATH for subprocesses and Ray workers: the repository root first."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------- Ray


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_cluster(monkeypatch):
    """A local two-CPU Ray cluster (``ray start --head``), stopped after the test."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if REQUIRE_RAY:
            pytest.fail("MEDTUNE_REQUIRE_RAY=1 but ray is not installed")
        pytest.skip("ray is not installed (pip install ray)")
    port = _free_port()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throw-away cluster on loopback
    env = dict(os.environ, PYTHONPATH=python_path())
    ray_command = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    head = subprocess.Popen(
        [*ray_command, "start", "--head", f"--port={port}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
         "--block"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the GCS port accepts connections once the head is up
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not start in 60 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # --block stops the cluster's processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        _forget_cluster(port)


def _forget_cluster(port: int) -> None:
    """Remove Ray's "last cluster started here" note if it names our stopped cluster (`ray stop`
    would, but it stops every Ray cluster of this user), so a later ``ray.init()`` does not
    try to join it."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # another Ray layout: leave the note, Ray copes with a stale one
        return
    note = Path(get_ray_address_file(None))
    if note.is_file() and note.read_text().strip().endswith(f":{port}"):
        note.unlink()


def rewrite_settings(text: str, settings: dict[str, str]) -> str:
    """A TOML ``text`` with the line ``key = ...`` of each setting given a new value (each key
    must occur exactly once; a trailing comment is kept): the tiny variants of the examples."""
    for key, value in settings.items():
        text, count = re.subn(rf"(?m)^{key} = [^#\n]*", f"{key} = {value} ", text)
        assert count == 1, key
    return text
