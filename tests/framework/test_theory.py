"""Random-search theory (Bertrand2019, eq. 2.20-2.22, table 2.2) and simulated replays (table
2.3)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hypergeom

from medtune.search import (
    Categorical,
    Goal,
    Int,
    Ordinal,
    ReplayError,
    SearchSpace,
    TabulatedObjective,
    format_table,
    replay,
)
from medtune.search.theory import (
    TABLE_2_2_PRINTED,
    TheoryError,
    acceptable_count,
    draws_needed,
    expected_draws,
    format_table_2_2,
    prob_acceptable_within,
    prob_first_acceptable,
    prob_none_acceptable,
    std_draws,
    table_2_2,
)


# -- eq. 2.20 - 2.22 and table 2.2 ----------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.10])
@pytest.mark.parametrize("probability", [0.5, 0.95, 0.99])
def test_table_2_2_is_reproduced_exactly(fraction: float, probability: float) -> None:
    assert table_2_2()[fraction][probability] == TABLE_2_2_PRINTED[fraction][probability]


def test_table_2_2_printed_values_and_rendering() -> None:
    # the cells as printed in Bertrand2019 (rows top 1 / 5 / 10 %, columns p > .5 / .95 / .99)
    assert [list(row.values()) for row in table_2_2().values()] == [
        [69, 298, 458], [14, 59, 90], [7, 29, 44]
    ]
    lines = format_table_2_2().splitlines()
    assert lines[0].split() == ["p", ">", "0.5", "p", ">", "0.95", "p", ">", "0.99"]
    assert lines[1].split() == ["Top", "1%", "69", "298", "458"]


def test_table_2_2_needs_draws_without_replacement() -> None:
    # independent draws need one more draw in two cells: Bertrand2019's table is without replacement
    with_replacement = table_2_2(replacement=True)
    assert with_replacement[0.01][0.95] == 299 and with_replacement[0.01][0.99] == 459


@pytest.mark.parametrize(("acceptable", "total"), [(1, 10), (3, 20), (30, 600), (20, 20)])
def test_equations_agree_with_the_hypergeometric_distribution(acceptable: int, total: int) -> None:
    first = [prob_first_acceptable(k, acceptable, total) for k in range(total + 1)]
    for draws in range(total + 1):
        none = prob_none_acceptable(draws, acceptable, total)
        assert none == pytest.approx(hypergeom.pmf(0, total, acceptable, draws), abs=1e-12)
        within = prob_acceptable_within(draws, acceptable, total)
        # eq. 2.22 is the sum of eq. 2.21 over the first draws
        assert within == pytest.approx(math.fsum(first[:draws]), abs=1e-12)
        assert within == pytest.approx(1 - none, abs=1e-12)
    assert prob_acceptable_within(total - acceptable + 1, acceptable, total) == 1.0


@pytest.mark.parametrize(("acceptable", "total"), [(1, 600), (6, 600), (30, 600), (7, 50)])
@pytest.mark.parametrize("replacement", [False, True])
def test_expected_and_std_draws_match_the_distribution(
    acceptable: int, total: int, replacement: bool
) -> None:
    horizon = total if not replacement else 200 * total
    pmf = np.array([prob_first_acceptable(n, acceptable, total, replacement)
                    for n in range(horizon)])
    draws = np.arange(1, horizon + 1)
    mean = float(np.sum(pmf * draws))
    std = math.sqrt(float(np.sum(pmf * (draws - mean) ** 2)))
    assert mean == pytest.approx(expected_draws(acceptable, total, replacement), rel=1e-6)
    assert std == pytest.approx(std_draws(acceptable, total, replacement), rel=1e-5)
    assert expected_draws(1, 600) == 300.5  # Bertrand2019's "theoretical value of 300"


def test_draws_needed_is_the_smallest_sufficient_count() -> None:
    for acceptable, total, p in [(1, 600, 0.5), (30, 600, 0.9), (5, 40, 0.99), (1000, 100_000, 0.95)]:
        n = draws_needed(p, acceptable, total)
        assert prob_acceptable_within(n, acceptable, total) > p
        assert prob_acceptable_within(n - 1, acceptable, total) <= p + 1e-12
        r = draws_needed(p, acceptable, total, replacement=True)
        assert prob_acceptable_within(r, acceptable, total, True) > p
        assert prob_acceptable_within(r - 1, acceptable, total, True) <= p + 1e-12
    # an exact tie is not "greater": 300 draws find the best of 600 with probability 1/2
    assert draws_needed(0.5, 1, 600) == 301


def test_theory_argument_errors() -> None:
    with pytest.raises(TheoryError, match="1 <= acceptable <= total"):
        prob_none_acceptable(3, 11, 10)
    with pytest.raises(TheoryError, match="cannot draw 11 distinct"):
        prob_none_acceptable(11, 1, 10)
    with pytest.raises(TheoryError, match="probability must be in"):
        draws_needed(1.0, 1, 10)
    assert acceptable_count(0.05, 600) == 30 and acceptable_count(0.01, 50) == 1


# -- replay ---------------------------------------------------------------------------------------
def skewed_objective(total: int = 150, seed: int = 0) -> TabulatedObjective:
    """Losses shaped like Bertrand2019, Fig. 2.7: a few good models, a long tail of bad ones."""
    rng = np.random.default_rng(seed)
    losses = 0.6 + rng.gamma(2.0, 0.15, size=total)
    space = SearchSpace([Int("model", 0, total - 1)])
    return TabulatedObjective.from_callable(space, lambda c: float(losses[c["model"]]))


def test_random_search_replay_matches_the_theory() -> None:
    objective = skewed_objective()
    runs = 300
    report = replay("random", objective, runs=runs, seed=0)
    assert report.runs == runs and report.total == 150
    for summary in report.summaries:
        assert summary.reached == runs
        # the mean of `runs` draws counts is within 4 standard errors of eq. 2.21's mean
        error = summary.theory_std / math.sqrt(runs)
        assert abs(summary.mean - summary.theory_mean) < 4 * error, summary
        assert summary.std == pytest.approx(summary.theory_std, rel=0.2)
        assert summary.worst <= objective.total
    # the empirical P(X <= n) follows eq. 2.22
    top = report.summary("Top 5%")
    assert top.acceptable == 8
    for n in (1, 5, 10, 20, 40):
        empirical = np.mean(report.draws["Top 5%"] <= n)
        p = prob_acceptable_within(n, top.acceptable, objective.total)
        assert abs(empirical - p) < 4 * math.sqrt(p * (1 - p) / runs) + 1e-9


def test_goal_thresholds() -> None:
    values = [1.0, 1.005, 1.04, 1.2, 2.0] + [3.0] * 95
    space = SearchSpace([Int("model", 0, 99)])
    objective = TabulatedObjective.from_callable(space, lambda c: values[c["model"]])
    assert objective.acceptable(Goal("best")) == 1
    assert objective.acceptable(Goal("within", 0.01)) == 2
    assert objective.acceptable(Goal("within", 0.05)) == 3
    assert objective.acceptable(Goal("top", 0.04)) == 4
    assert objective.acceptable(Goal("top", 0.10)) == 100  # ties with the 10th best count too
    maximize = TabulatedObjective.from_callable(space, lambda c: values[c["model"]],
                                                direction="maximize")
    assert maximize.acceptable(Goal("best")) == 95
    assert maximize.acceptable(Goal("within", 0.5)) == 96  # |2 - 3| <= 0.5 * 3


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_replay_from_csv_with_grid_is_deterministic(tmp_path: Path) -> None:
    rows = [
        {"width": w, "loss": loss, "value": round(abs(w - 16) / 8 + (loss == "dice") + 0.5, 3),
         "test": round(abs(w - 32) / 8 + 0.5, 3)}
        for w in (8, 16, 32) for loss in ("dice", "glf")
    ]
    path = write_csv(tmp_path / "models.csv", rows)
    objective = TabulatedObjective.from_csv(path, test_column="test")
    assert objective.space == SearchSpace([Ordinal("width", [8, 16, 32]),
                                           Categorical("loss", ["dice", "glf"])])
    report = replay("grid", objective, runs=5)
    best = report.summary("Best model")
    # grid order: (8, dice) (8, glf) (16, dice) (16, glf): the best (16, glf) is the 4th draw
    assert (best.mean, best.std, best.worst, best.reached) == (4.0, 0.0, 4.0, 5)
    # regret on the held-out column: the incumbents are (8, dice), (8, glf), (16, glf)
    np.testing.assert_allclose(report.mean_regret, [3.0, 3.0, 3.0, 2.0])
    assert "Best model" in report.table() and "grid average" in report.table()


def test_conditional_table_from_csv(tmp_path: Path) -> None:
    space = SearchSpace.from_dict({
        "loss": {"type": "categorical", "choices": ["dice", "glf"]},
        "beta2": {"type": "ordinal", "values": [0.5, 2.0], "condition": {"loss": ["glf"]}},
    })
    rows = [{"loss": "dice", "beta2": "", "value": 0.3},
            {"loss": "glf", "beta2": 0.5, "value": 0.25},
            {"loss": "glf", "beta2": 2.0, "value": "nan"}]  # could not be trained
    path = write_csv(tmp_path / "conditional.csv", rows)
    objective = TabulatedObjective.from_csv(path, space=space)
    assert objective.value({"loss": "dice"}) == 0.3
    assert objective.value({"loss": "glf", "beta2": 2.0}) is None
    assert (objective.total, objective.population) == (2, 3)
    report = replay("random", objective, runs=30)
    assert report.summary("Best model").worst <= 3
    with pytest.raises(ReplayError, match="column 'beta2' has empty cells"):
        replay("random", path, runs=1)


def test_csv_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", [{"width": 8, "value": "x"}])
    with pytest.raises(ReplayError, match=r"line 2, column 'value': expected a number"):
        TabulatedObjective.from_csv(path)
    path = write_csv(tmp_path / "dup.csv", [{"width": 8, "value": 1}, {"width": 8, "value": 2}])
    with pytest.raises(ReplayError, match="line 3: configuration {'width': 8} appears twice"):
        TabulatedObjective.from_csv(path)
    with pytest.raises(ReplayError, match="no column 'loss'"):
        TabulatedObjective.from_csv(path, value_column="loss")


def test_missing_and_failed_configurations() -> None:
    space = SearchSpace([Int("model", 0, 9)])
    partial = {space.key({"model": m}): float(m) for m in range(1, 9)}  # no row for 0 and 9
    partial[space.key({"model": 3})] = math.nan  # could not be trained
    objective = TabulatedObjective(space, partial)
    with pytest.raises(ReplayError, match=r"configuration {'model': 0} is not in the table"):
        replay("grid", objective, runs=1)
    failing = TabulatedObjective(space, partial, missing="fail")
    report = replay("grid", failing, runs=1, goals=[Goal("best")])
    assert report.summary("Best model").mean == 2  # model 0 failed, model 1 is the best
    report = replay("random", failing, runs=50, goals=[Goal("best")])
    assert failing.total == 7 and failing.population == 10
    assert report.summary("Best model").theory_mean == pytest.approx(expected_draws(1, 10))


def test_replay_of_adaptive_searchers_and_comparison_table() -> None:
    objective = skewed_objective(total=60, seed=1)
    reports = [
        replay("random", objective, runs=20),
        replay("local", objective, runs=20),
        replay("evolution", objective, runs=20, budget=60),
        replay("hyperband", objective, runs=10, R=9, iterations=None),
    ]
    for report in reports:
        assert report.summary("Best model").reached == report.runs
        assert np.all(np.diff(report.mean_regret) <= 1e-12)  # no test column: regret only drops
        assert report.mean_regret[-1] == 0.0
    table = format_table(reports).splitlines()
    assert len(table) == 1 + 7
    assert "hyperband average" in table[0] and "theory (random)" in table[0]
