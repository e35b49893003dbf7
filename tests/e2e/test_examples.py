"""The example study of the README runs as shipped: study file, best trials, report with plots."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from medtune.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_search_small_lesions_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLES / "search_small_lesions.toml", tmp_path)
    assert main(["run", "search_small_lesions.toml"]) == 0
    assert "best trials" in capsys.readouterr().out
    study = tmp_path / "studies" / "search_small_lesions.sqlite"
    with sqlite3.connect(study) as db:
        states = dict(db.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall())
        losses = {row[0] for row in db.execute("SELECT json_extract(config, '$.loss') FROM trials")}
        best = db.execute("SELECT max(value) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    assert states.get("COMPLETE", 0) >= 20 and "RUNNING" not in states
    assert losses <= {"dice", "tversky", "glf"} and len(losses) >= 2
    assert best > 0.3  # trained networks find the lesions
    report = tmp_path / "studies" / "search_small_lesions_report"
    for name in ("index.html", "best_by_trial.png", "best_by_time.png", "learning_curves.png",
                 "model.png", "relevance.png"):  # bohb's GP predictions and relevance
        assert (report / name).stat().st_size > 0, name
