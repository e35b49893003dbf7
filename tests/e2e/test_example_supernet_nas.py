"""The supernet_nas example (Pourchot2022, tables 4.3 and 4.4) runs from its TOML file: a tiny
variant (budgets rewritten in the TOML text) in the default run, the example as shipped as a
slow test. Also checks the shipped tabular benchmark it relies on."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from medtune.cli import main
from tests.conftest import rewrite_settings
from tests.e2e.recorded import check_recorded
from medtune.plugins.nas.analysis import report_figures
from medtune.plugins.nas.cells import Cell, enumerate_cells
from medtune.plugins.nas.tabular import TABLE_SPACE, TableError, load_table, tabulated_objective
from medtune.study.store import StudyStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "supernet_nas.toml"
#: setting -> value of the tiny variant (two super-net steps, five ranked cells)
TINY = {"steps": "2", "rank_cells": "6", "proxy_images": "32", "recalibration_images": "32",
        "ws_evaluations": "3", "runs": "4", "bootstrap": "5", "repeats": "2"}
SUBSPACES = {"A1", "A2", "FULL", "RES", "NRES"}


def _run_and_check(path: Path, folder: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the whole table on one line per row
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Pourchot2022" in out
    repeats = int(re.search(r"(?m)^repeats = (\d+)", path.read_text()).group(1))
    for name in SUBSPACES:
        assert re.search(rf"│ {name}\s.*±.*│ {repeats} │", out), name
    study = folder / "studies" / "supernet_nas.sqlite"
    with sqlite3.connect(study) as db:
        rows = db.execute("SELECT state, config, metrics, seed FROM trials").fetchall()
    assert len(rows) == len(SUBSPACES) * repeats
    assert all(state == "COMPLETE" for state, *_ in rows)
    assert {json.loads(config)["subspace"] for _, config, _, _ in rows} == SUBSPACES
    ranked = int(re.search(r"(?m)^rank_cells = (\d+)", path.read_text()).group(1))
    by_subspace: dict[str, list[dict]] = {}
    for _, config, metrics, _ in rows:
        metrics = json.loads(metrics)
        by_subspace.setdefault(json.loads(config)["subspace"], []).append(metrics)
        for key in ("rho_noft", "rho_bnsft"):
            assert -1 <= metrics[key] <= 1
            assert metrics[f"{key}_low"] <= metrics[key] + 1e-9 or np.isnan(metrics[f"{key}_low"])
        assert metrics["regret_rs_pp"] >= 0 and metrics["regret_ws_pp"] >= 0
        assert len(metrics["proxy_bnsft"]) == len(metrics["standalone"]) == min(ranked, metrics["cells"])
        assert metrics["regret_gain_pp"] == pytest.approx(metrics["regret_rs_pp"] - metrics["regret_ws_pp"])
    # every sub-space was ranked by super-nets of different seeds
    for members in by_subspace.values():
        assert len({m["supernet_loss"] for m in members}) == repeats
    assert (folder / "studies" / "supernet_nas_report" / "index.html").stat().st_size > 0
    with StudyStore(study) as store:
        trials = store.trials()
    figures = report_figures(trials, folder)
    assert [name for name, _ in figures] == ["nas_scatter.png", "nas_regret.png"]
    assert all((folder / name).stat().st_size > 0 for name, _ in figures)
    assert report_figures([t for t in trials if False], folder) == []


def test_shipped_table_covers_its_subspace_and_replays():
    table = load_table()
    assert table.version == 1
    assert {row.hash for row in table.rows.values()} == {c.hash for c in enumerate_cells(TABLE_SPACE)}
    for row in list(table.rows.values())[:20]:
        assert Cell.from_string(row.cell).hash == row.hash
        assert 0 <= row.validation_accuracy <= 1 and 0 <= row.test_accuracy <= 1 and row.train_seconds > 0
    accuracies = np.array([r.validation_accuracy for r in table.rows.values()])
    assert accuracies.max() - accuracies.min() > 0.05  # architectures differ
    with pytest.raises(TableError, match="version"):
        load_table(version=2)
    big = Cell.from_edges(["c3"] * 4, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)])
    with pytest.raises(TableError, match="not in the NAS table"):
        table.row(big)
    from medtune.search.replay import replay

    objective = tabulated_objective(table)
    report = replay("random", objective, runs=5, seed=0, max_draws=40)
    assert len(report.mean_regret) > 0 and report.mean_regret[0] >= report.mean_regret[-1] >= 0


def test_tiny_supernet_nas(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "supernet_nas.toml"
    path.write_text(rewrite_settings(EXAMPLE.read_text(), TINY))
    _run_and_check(path, tmp_path, monkeypatch, capsys)
    check_recorded("supernet_nas", tmp_path / "studies" / "supernet_nas.sqlite")


@pytest.mark.slow
def test_supernet_nas_as_shipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_and_check(EXAMPLE, tmp_path, monkeypatch, capsys)
