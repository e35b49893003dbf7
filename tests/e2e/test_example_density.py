"""The density_weighting example (Pourchot2022, ch. 6) runs from its TOML file: a tiny variant
(sizes rewritten in the TOML text) in the default run, the example as shipped as a slow test."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from medtune.cli import main
from tests.conftest import rewrite_settings
from tests.e2e.recorded import check_recorded
from medtune.study.store import StudyStore
from medtune.plugins.tasks.regression import report_figures

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "density_weighting.toml"
#: setting -> value of the tiny variant (one small epoch per trial)
TINY = {"train_size": "16", "val_size": "32", "epochs": "1", "image_size": "32", "width": "4"}
WEIGHTINGS = {"none", "inverse_density"}
METRICS = {"mae_female", "mae_male", "mae_low", "mae_middle", "mae_high", "bias_low",
           "bias_high", "sensitivity", "specificity"}


def _run_and_check(path: Path, folder: Path, monkeypatch, capsys) -> list[dict]:
    monkeypatch.setenv("COLUMNS", "400")  # the whole table on one line per row
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Pourchot2022" in out
    repeats = int(re.search(r"(?m)^repeats = (\d+)", path.read_text()).group(1))
    for weighting in WEIGHTINGS:
        assert re.search(rf"│ {weighting}\s.*±.*│ {repeats} │", out), weighting
    study = folder / "studies" / "density_weighting.sqlite"
    with sqlite3.connect(study) as db:
        rows = db.execute("SELECT state, config, metrics, value FROM trials").fetchall()
    assert len(rows) == len(WEIGHTINGS) * repeats
    assert all(state == "COMPLETE" for state, _, _, _ in rows)
    trials = [{"config": json.loads(config), "metrics": json.loads(metrics), "value": value}
              for _, config, metrics, value in rows]
    assert {t["config"]["weighting"] for t in trials} == WEIGHTINGS
    for trial in trials:
        assert METRICS <= set(trial["metrics"]) and trial["value"] > 0
    assert (folder / "studies" / "density_weighting_report" / "index.html").stat().st_size > 0
    with StudyStore(study) as store:
        figures = report_figures(store.trials(), folder)
    assert [name for name, _ in figures] == ["mae_by_range.png"]
    assert (folder / "mae_by_range.png").stat().st_size > 0
    return trials


def test_tiny_density_weighting(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "density_weighting.toml"
    path.write_text(rewrite_settings(EXAMPLE.read_text(), TINY))
    _run_and_check(path, tmp_path, monkeypatch, capsys)
    check_recorded("density_weighting", tmp_path / "studies" / "density_weighting.sqlite")


@pytest.mark.slow
def test_density_weighting_as_shipped(tmp_path, monkeypatch, capsys):
    """At the shipped size the networks learn (MAE well below the ~38 months of predicting the
    mean age of the uniform validation set)."""
    monkeypatch.chdir(tmp_path)
    trials = _run_and_check(EXAMPLE, tmp_path, monkeypatch, capsys)
    assert max(t["value"] for t in trials) < 18.0
