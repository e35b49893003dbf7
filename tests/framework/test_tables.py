"""Named metrics beside a trial's value, the study file's migration, and results tables."""

from __future__ import annotations

import math
import sqlite3
import statistics

import pytest

from medtune.cli import main
from medtune.config import TableSpec
from medtune.study import StudyStore, TrialState
from medtune.study.executors import TrialTask, run_trial
from medtune.study.store import SCHEMA_VERSION
from medtune.tables import summarise
from tests.framework.study_fakes import with_metrics


def _run(config: dict, seed: int = 3):
    return run_trial(with_metrics, TrialTask(trial_id=1, config=config, resource=None, seed=seed))


def test_an_objective_returns_named_metrics_beside_its_value():
    result = _run({"x": 0.5})
    assert result.state == TrialState.COMPLETE and result.value == pytest.approx(0.25)
    metrics = dict(result.execution.metrics)
    assert metrics.pop("curve")[::2] == [0.25, 3.0]
    assert metrics == {"double": 0.5, "seed_parity": 1.0}


@pytest.mark.parametrize(("broken", "message"), [
    ("no_value", "mapping without a 'value' key"),
    ("text", "metric 'label' is 'good'"),
    ("series_value", "'value' is a sequence; it must be one number"),
])
def test_a_malformed_mapping_fails_the_trial_with_the_reason(broken, message):
    result = _run({"x": 0.5, "broken": broken})
    assert result.state == TrialState.FAIL and message in result.traceback


def test_metrics_are_stored_and_read_back(tmp_path):
    with StudyStore.create(tmp_path / "s.db") as store:
        trial_id = store.create_trial(suggestion_id=0, config={"x": 0.5}, seed=3)
        result = _run({"x": 0.5})
        stored = store.complete_trial(trial_id, result.value, result.execution)
        curve = stored.metrics.pop("curve")  # a series; NaN survives the round trip
        assert curve[0] == 0.25 and math.isnan(curve[1]) and curve[2] == 3.0
        assert stored.metrics == {"double": 0.5, "seed_parity": 1.0}
        assert store.trials()[0].metrics["double"] == 0.5


def test_a_version_1_study_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.db"
    with StudyStore.create(path) as store:
        store.complete_trial(store.create_trial(suggestion_id=0, config={"x": 1}, seed=0), 2.0)
    with sqlite3.connect(path) as db:  # what a version-1 file looked like
        db.execute("ALTER TABLE trials DROP COLUMN metrics")
        db.execute("ALTER TABLE trials DROP COLUMN artifact")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with StudyStore(path) as store:
        assert store.info.schema_version == SCHEMA_VERSION == 4
        (trial,) = store.trials()
        assert trial.value == 2.0 and trial.metrics == {}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)


def test_summarise_groups_by_row_keys_in_order_of_appearance(tmp_path):
    with StudyStore.create(tmp_path / "s.db") as store:
        values = {"a": [0.5, 0.7, 0.9], "b": [0.1, 0.3]}
        for method, series in values.items():
            for v in series:
                trial_id = store.create_trial(suggestion_id=0, config={"method": method}, seed=0)
                result = run_trial(lambda *a, v=v: {"value": v, "half": v / 2},
                                   TrialTask(trial_id, {}, None, 0))
                store.complete_trial(trial_id, result.value, result.execution)
        failed = store.create_trial(suggestion_id=9, config={"method": "c"}, seed=0)
        store.fail_trial(failed, "exception", "boom")
        table = summarise(store.trials(), TableSpec("t", ("method",), ("value", "half", "gone")))
    assert table.header == ("method", "value", "half", "gone", "n")
    assert [row.labels for row in table.rows] == [("a",), ("b",)]  # failed trials left out
    first = table.rows[0]
    assert first.cells[0].mean == pytest.approx(0.7)
    assert first.cells[0].std == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert first.cells[1].mean == pytest.approx(0.35) and first.cells[2].count == 0
    assert table.text_rows()[0] == ["a", "0.700 ± 0.200", "0.350 ± 0.100", "-", "3"]


STUDY = """
[study]
name = "metrics_table"
direction = "minimize"

[searcher]
name = "grid"
repeats = 2

[objective]
function = "tests.framework.study_fakes:with_metrics"

[space.x]
type = "categorical"
choices = [0.5, 1.0]

[table]
title = "Squares by x"
rows = ["x"]
columns = ["value", "double"]
"""


def test_run_prints_the_table_and_the_report_shows_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(STUDY)
    assert main(["run", "study.toml"]) == 0
    out = capsys.readouterr().out
    assert "Squares by x" in out
    lines = [line for line in out.splitlines() if "0.250" in line or "1.000" in line]
    assert any("0.250" in line and "0.500" in line and " 2 " in line for line in lines), out
    page = (tmp_path / "studies" / "metrics_table_report" / "index.html").read_text()
    assert "<h2>Results</h2>" in page and "<td>2.000 ± 0.000</td>" in page and "Squares by x" in page


def test_row_labels_show_numbers_to_significant_digits(tmp_path):
    with StudyStore.create(tmp_path / "s.sqlite") as store:
        for lr in (0.029999999999999995, 0.1):
            trial_id = store.create_trial(suggestion_id=0, config={"lr": lr, "width": 16}, seed=0)
            store.complete_trial(trial_id, lr)
        table = summarise(store.trials(), TableSpec("t", ("lr", "width"), ("value",)))
    assert [row.labels for row in table.rows] == [("0.03", "16"), ("0.1", "16")]
