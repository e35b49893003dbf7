"""Shared fixtures: third-party plugin packages pip-installed into throw-away folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

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
