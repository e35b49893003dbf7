"""A searcher that knows how many trials it will propose says so (``planned_trials``), and a
study without ``n_trials`` shows that total (and so an ETA) on its progress bar."""

from __future__ import annotations

import pytest

import medtune
from medtune.study import StudyStore, run_study
from tests.framework.study_fakes import FakeSearcher

SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
         "width": {"type": "ordinal", "values": [4, 8, 16]}}


def _drive(searcher) -> int:
    """Ask and tell until the searcher is finished (every result at once, a smooth score);
    how many suggestions it made."""
    asked = 0
    while not searcher.finished:
        batch = []
        while (suggestion := searcher.ask()) is not None:
            batch.append(suggestion)
        assert batch, "the searcher waits for nothing"
        for suggestion in batch:
            value = abs(suggestion.config["lr"] - 0.01) * (suggestion.resource or 1)
            searcher.tell(suggestion, value)
        asked += len(batch)
    return asked


@pytest.mark.parametrize("name, options, planned", [
    ("grid", {"grid_points": 2, "repeats": 2}, 2 * 3 * 2),
    ("hyperband", {"R": 9, "eta": 3, "iterations": 2}, 44),  # the demo study's trainings
    ("hyperband", {"R": 81, "eta": 3}, 206),  # Li et al. 2017, table 1: 121 + 49 + 21 + 10 + 5
    ("random", {"max_trials": 7}, 7),
    ("grid", {"grid_points": 2, "max_trials": 4}, 4),
])
def test_planned_trials_is_what_the_searcher_proposes(name, options, planned):
    searcher = medtune.create("searcher", name, space=SPACE, seed=0, **options)
    assert searcher.planned_trials == planned
    assert _drive(searcher) == planned


@pytest.mark.parametrize("name, options", [
    ("random", {}), ("bayes", {}), ("hyperband", {"R": 9, "iterations": None}),
    ("bohb", {"R": 9}),  # brackets until max_trials or a finite space ends them
])
def test_an_open_ended_search_plans_no_total(name, options):
    assert medtune.create("searcher", name, space=SPACE, seed=0, **options).planned_trials is None


def test_bohb_plans_the_demo_studys_trainings():
    searcher = medtune.create("searcher", "bohb", space=SPACE, seed=0, R=9, eta=3, iterations=2)
    assert searcher.planned_trials == 44


def test_the_progress_bar_shows_the_planned_total(tmp_path, capsys):
    space = {"x": {"type": "ordinal", "values": [0.1, 0.2, 0.6]}}
    grid = medtune.create("searcher", "grid", space=space, seed=0)
    with StudyStore.create(tmp_path / "grid.db") as store:
        summary = run_study(store, grid, "tests.framework.study_fakes:quadratic")
    assert summary.stop_reason == "searcher" and summary.n_complete == 3
    out = capsys.readouterr().out
    assert "3/3" in out and "/?" not in out

    # a searcher that plans nothing, and no n_trials: no total
    with StudyStore.create(tmp_path / "open.db") as store:
        run_study(store, FakeSearcher(0, limit=2), "tests.framework.study_fakes:quadratic")
    assert "2/?" in capsys.readouterr().out
