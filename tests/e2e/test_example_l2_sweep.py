"""The l2_sweep example (Rukundo2021) runs from its TOML file: a tiny variant (sizes rewritten in
the TOML text) in the default run, the example as shipped as a slow test."""

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
from medtune.plugins.tasks.regions import REGIONS, report_figures

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "l2_sweep.toml"
#: setting -> value of the tiny variant (one small epoch per trial)
TINY = {"train_size": "8", "val_size": "4", "epochs": "1", "image_size": "64", "width": "4"}
DECAYS = {5e-3, 5e-4, 5e-5}


def _run_and_check(path: Path, folder: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the whole table on one line per row
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Rukundo2021" in out
    repeats = int(re.search(r"(?m)^repeats = (\d+)", path.read_text()).group(1))
    for decay in ("0.005", "0.0005", "5e-05"):
        assert re.search(rf"│ {re.escape(decay)}\s.*±.*│ {repeats} │", out), decay
    study = folder / "studies" / "l2_sweep.sqlite"
    with sqlite3.connect(study) as db:
        rows = db.execute("SELECT state, config, metrics FROM trials").fetchall()
    assert len(rows) == len(DECAYS) * repeats
    assert all(state == "COMPLETE" for state, _, _ in rows)
    assert {json.loads(config)["weight_decay"] for _, config, _ in rows} == DECAYS
    for _, _, metrics in rows:
        metrics = json.loads(metrics)
        assert {f"iou_{region}" for region in REGIONS} <= set(metrics)
        assert {"difference_0", "difference_1"} <= set(metrics)
    assert (folder / "studies" / "l2_sweep_report" / "index.html").stat().st_size > 0
    with StudyStore(study) as store:
        trials = store.trials()
    figures = report_figures(trials, folder)
    assert [name for name, _ in figures] == ["regions.png", "differences.png"]
    assert all((folder / name).stat().st_size > 0 for name, _ in figures)


def test_tiny_l2_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "l2_sweep.toml"
    path.write_text(rewrite_settings(EXAMPLE.read_text(), TINY))
    _run_and_check(path, tmp_path, monkeypatch, capsys)
    check_recorded("l2_sweep", tmp_path / "studies" / "l2_sweep.sqlite")


@pytest.mark.slow
def test_l2_sweep_as_shipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_and_check(EXAMPLE, tmp_path, monkeypatch, capsys)
