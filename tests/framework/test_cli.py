"""The command line and the installed layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medtune.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _medtune(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "medtune.cli", *args], capture_output=True, text=True, env=env
    )


def test_doctor_reports_extension_and_backends():
    result = _medtune("doctor")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for item in ("python", "torch", "triton", "compiler", "C++ extension medtune._C", "GPU"):
        assert item in out
    rows = [line for line in out.splitlines() if "glf_stats " in line or "glf_stats│" in line]
    assert rows, out
    if "MEDTUNE_REQUIRE_BACKENDS" in os.environ and "cpp" in os.environ["MEDTUNE_REQUIRE_BACKENDS"]:
        assert "built and loaded" in out
        assert any("cpu" in row and "cpp" in row.split("│")[3] for row in rows), rows


def test_unknown_command_exits_with_usage(capsys):
    try:
        main(["frobnicate"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_installed_layout_is_one_namespaced_distribution(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(tmp_path), str(ROOT)],
        check=True,
    )
    top = {p.name for p in tmp_path.iterdir() if not p.name.endswith(".dist-info")}
    assert top - {"bin"} == {"medtune"}, top
    for part in ("kernels/glf_stats.py", "plugins/builtin.py", "csrc/glf_stats.cpp", "cli.py"):
        assert (tmp_path / "medtune" / part).is_file(), part
    entry_points = next(tmp_path.glob("medtune-*.dist-info")) / "entry_points.txt"
    assert "builtin = medtune.plugins.builtin" in entry_points.read_text()


def test_bench_passes_its_options_to_the_runner(tmp_path):
    output = tmp_path / "B.md"
    result = subprocess.run(
        [sys.executable, "-m", "medtune.cli", "bench", "--quick", "--cases", "glf_stats",
         "--output", str(output)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert "glf_stats" in text and "speed-up vs peer" in text


def test_bench_outside_a_checkout_says_where_to_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "medtune.cli", "bench", "--quick"],
        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, COLUMNS="200"),
    )
    assert result.returncode == 2
    assert "repository root" in result.stdout
