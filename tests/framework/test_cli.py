"""The command line and the installed layout."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from medtune.cli import main
from medtune.study import StudyStore

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


STUDY = """
[study]
name = "damaged"
n_trials = 4

[searcher]
name = "random"

[objective]
function = "tests.framework.study_fakes:quadratic"

[space.x]
type = "float"
low = 0.0
high = 1.0
"""


def _study_with_three_trials(path: Path) -> None:
    with StudyStore.create(path, config_text=STUDY) as store:
        for index, value in enumerate([0.5, 0.1, 0.9]):
            trial = store.create_trial(suggestion_id=index, config={"x": value}, seed=index)
            store.complete_trial(trial, value)


def _sql(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


def test_status_and_report_of_an_old_study_read_it_without_changing_a_byte(tmp_path, capsys):
    path = tmp_path / "old.sqlite"
    _study_with_three_trials(path)
    _sql(path, "ALTER TABLE trials DROP COLUMN metrics",  # what schema version 1 wrote
         "ALTER TABLE trials DROP COLUMN artifact",
         "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    before = path.read_bytes()
    assert main(["status", str(path)]) == 0
    assert path.read_bytes() == before
    out = capsys.readouterr().out
    assert "COMPLETE" in out and "Best: trial 2" in out
    assert "schema version 1; `medtune resume` upgrades it" in out
    assert main(["report", str(path)]) == 0
    assert path.read_bytes() == before
    assert (tmp_path / "old_report" / "index.html").is_file()


def test_a_damaged_trial_is_counted_apart_by_status_and_refused_by_resume(tmp_path, capsys,
                                                                          caplog):
    path = tmp_path / "s.sqlite"
    _study_with_three_trials(path)
    _sql(path, "UPDATE trials SET config = '{\"x\": 0.1' WHERE id = 2")
    assert main(["status", str(path)]) == 0
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in capsys.readouterr().out.splitlines() if line.count("│") == 3}
    assert rows["COMPLETE"] == "2" and rows["damaged"] == "1"
    assert [r.getMessage().split(" (")[0] for r in caplog.records
            if r.levelname == "WARNING"] == [f"{path}: trial 2 is damaged"]

    assert main(["resume", str(path)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"error: {path}: trial 2 is damaged (config is not valid JSON")
    assert out.count("\n") == 1 and "Traceback" not in out


def test_backup_copies_a_study_to_a_new_file_and_never_overwrites(tmp_path, capsys):
    path, copy = tmp_path / "s.sqlite", tmp_path / "copies" / "s.sqlite"
    _study_with_three_trials(path)
    assert main(["backup", str(path), str(copy)]) == 0
    assert capsys.readouterr().out == f"Copied 3 trials of {path} to {copy}.\n"
    with StudyStore(copy) as store:
        assert [t.value for t in store.trials()] == [0.5, 0.1, 0.9]
    saved = copy.read_bytes()
    assert main(["backup", str(path), str(copy)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"error: {copy} already exists") and out.count("\n") == 1
    assert copy.read_bytes() == saved
    assert main(["backup", str(tmp_path / "missing.sqlite"), str(tmp_path / "b.sqlite")]) == 2
    assert "no study at" in capsys.readouterr().out and not (tmp_path / "b.sqlite").exists()
