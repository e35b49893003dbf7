"""examples/multi_objective.toml (validation Dice against weights, NSGA-II, the asha pruner) runs
from its TOML file: a tiny variant (sizes rewritten in the TOML text) in the default run, the
example as shipped as a slow test. Both print the Pareto front and prune some trials."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from medtune.cli import main
from tests.conftest import rewrite_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multi_objective.toml"
#: setting -> value of the tiny variant (6 trials of up to 3 small epochs)
TINY = {"n_trials": "6", "budget": "6", "population": "3", "n_startup_trials": "1",
        "epochs": "3", "train_size": "8", "val_size": "8"}
FRONT_TITLE = "Pareto front (maximize value, minimize parameters)"


def _run_and_check(path: Path, folder: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # the front table's rows on one line each
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    n_trials = int(re.search(r"(?m)^n_trials = (\d+)", path.read_text()).group(1))
    with sqlite3.connect(folder / "studies" / "multi_objective.sqlite") as db:
        states = dict(db.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall())
        complete = db.execute(
            "SELECT id, value, json_extract(metrics, '$.parameters'), json_extract(config, "
            "'$.width') FROM trials WHERE state = 'COMPLETE'").fetchall()
    assert sum(states.values()) == n_trials and "RUNNING" not in states and "FAIL" not in states
    assert states.get("PRUNED", 0) >= 1 and complete  # the pruner stopped some, not all
    # The front: its title, then one row per non-dominated complete trial with both values.
    assert FRONT_TITLE in out
    front = out[out.index(FRONT_TITLE):]
    rows = re.findall(r"(?m)^│ (\d+)\s+│ ([\d.e+-]+)\s+│ ([\d.e+-]+)\s+│ yes", front)
    assert rows, front
    by_id = {trial_id: (value, parameters) for trial_id, value, parameters, _ in complete}
    for trial_id, value, parameters in rows:
        assert int(trial_id) in by_id
        assert float(value) == pytest.approx(by_id[int(trial_id)][0], abs=1e-3)
        assert float(parameters) == pytest.approx(by_id[int(trial_id)][1], rel=1e-3)
    # Wider networks have more weights, whatever else the trial tried.
    weights = {width: parameters for _, _, parameters, width in complete}
    assert all(weights[a] < weights[b] for a in weights for b in weights if a < b)
    assert re.search(rf"{states['PRUNED']} pruned", out)
    assert (folder / "studies" / "multi_objective_report" / "index.html").stat().st_size > 0


def test_tiny_multi_objective(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "multi_objective.toml"
    path.write_text(rewrite_settings(EXAMPLE.read_text(), TINY))
    _run_and_check(path, tmp_path, monkeypatch, capsys)


@pytest.mark.slow
def test_multi_objective_as_shipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_and_check(EXAMPLE, tmp_path, monkeypatch, capsys)
