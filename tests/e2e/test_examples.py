"""The demo study that `medtune run` runs without a configuration: study file, results table
with lesion metrics, report with every plot. A tiny variant runs in CI, the full one is slow."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from medtune.cli import main
from medtune.studies import DEMO_CONFIG
from tests.e2e.recorded import check_recorded

#: setting -> value of the tiny variant (same study, a fraction of the work)
TINY = {"train_size": "16", "val_size": "8", "iterations": "1"}

PLOTS = ("index.html", "best_by_trial.png", "best_by_time.png", "learning_curves.png",
         "model.png", "relevance.png", "lesion_sizes.png", "trajectories.png")


def _tiny_demo(folder: Path) -> Path:
    text = DEMO_CONFIG.read_text()
    for key, value in TINY.items():
        text, count = re.subn(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
        assert count == 1, key
    path = folder / "demo_tiny.toml"
    path.write_text(text)
    return path


def _check_study(folder: Path, min_trials: int, min_dice: float, out: str) -> None:
    assert "best trials" in out and "their other metrics" in out
    assert "lesion dice small" in out and "lesion recall small" in out
    study = folder / "studies" / "search_small_lesions.sqlite"
    with sqlite3.connect(study) as db:
        states = dict(db.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall())
        losses = {row[0] for row in db.execute("SELECT json_extract(config, '$.loss') FROM trials")}
        best = db.execute("SELECT max(value) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        glf = db.execute("SELECT json_array_length(json_extract(metrics, '$.glf_alpha_p')) FROM "
                         "trials WHERE json_extract(config, '$.loss') = 'glf'").fetchall()
    assert states.get("COMPLETE", 0) >= min_trials and "RUNNING" not in states
    assert losses <= {"dice", "tversky", "glf"} and len(losses) >= 2
    assert best > min_dice
    assert glf and all(length and length > 0 for (length,) in glf)  # adaptive GLF trajectories
    report = folder / "studies" / "search_small_lesions_report"
    for name in PLOTS:
        assert (report / name).stat().st_size > 0, name


def test_tiny_demo_runs_and_reports_lesions(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal: every column header in full
    assert main(["run", str(_tiny_demo(tmp_path))]) == 0
    _check_study(tmp_path, min_trials=20, min_dice=0.0, out=capsys.readouterr().out)
    check_recorded("demo", tmp_path / "studies" / "search_small_lesions.sqlite")


@pytest.mark.slow
def test_medtune_run_without_a_configuration_runs_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "running the built-in demo study" in out
    _check_study(tmp_path, min_trials=40, min_dice=0.4, out=out)
