"""Objectives and constraints: Pareto fronts and hypervolume against brute force, the
constraint grammar, and the configuration errors `medtune run` refuses before writing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medtune.cli import main
from medtune.search.objectives import (
    Constraint,
    Objectives,
    ObjectivesError,
    crowding_distance,
    hypervolume,
    non_dominated_sort,
    pareto_front,
)


def _brute_front(points: np.ndarray) -> list[int]:
    return [i for i, p in enumerate(points)
            if not any(np.all(q <= p) and np.any(q < p) for q in points)]


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_pareto_front_matches_brute_force(dims):
    rng = np.random.default_rng(dims)
    for _ in range(20):
        points = rng.integers(0, 6, size=(int(rng.integers(1, 30)), dims)).astype(float)
        assert pareto_front(points) == _brute_front(points)
        fronts = non_dominated_sort(points)
        assert sorted(itertools.chain(*fronts)) == list(range(len(points)))
        remaining = list(range(len(points)))
        for front in fronts:  # each front is the non-dominated set of what is left
            assert sorted(front) == sorted(remaining[i] for i in _brute_front(points[remaining]))
            remaining = [i for i in remaining if i not in front]


def _brute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Unit cells of the integer grid below ``reference`` dominated by some point."""
    count = 0
    for cell in itertools.product(*(range(int(r)) for r in reference)):
        corner = np.asarray(cell, dtype=float)  # the cell [corner, corner + 1]
        if any(np.all(p <= corner) for p in points):
            count += 1
    return float(count)


@pytest.mark.parametrize("dims", [1, 2, 3, 4])
def test_hypervolume_matches_brute_force(dims):
    rng = np.random.default_rng(10 + dims)
    reference = np.full(dims, 6.0)
    for _ in range(15):
        points = rng.integers(0, 8, size=(int(rng.integers(1, 12)), dims)).astype(float)
        assert hypervolume(points, reference) == pytest.approx(
            _brute_hypervolume(points, reference))
    assert hypervolume(np.empty((0, dims)), reference) == 0.0


def test_hypervolume_of_continuous_points_is_order_free_and_monotone():
    rng = np.random.default_rng(0)
    points = rng.random((25, 3))
    reference = [1.1, 1.1, 1.1]
    volume = hypervolume(points, reference)
    assert volume == pytest.approx(hypervolume(points[::-1], reference))
    assert hypervolume(points[:10], reference) <= volume + 1e-12


def test_crowding_distance_gives_the_ends_infinity():
    distance = crowding_distance(np.array([[0.0, 3.0], [1.0, 2.0], [2.0, 0.5], [3.0, 0.0]]))
    assert np.isinf(distance[[0, 3]]).all() and np.isfinite(distance[[1, 2]]).all()


def test_constraints_parse_and_classify():
    assert Constraint.parse("params <= 2e6") == Constraint("params", "<=", 2e6)
    assert Constraint.parse(" peak_memory_gb<10 ") == Constraint("peak_memory_gb", "<", 10.0)
    strict, loose = Constraint.parse("x < 1"), Constraint.parse("x >= 1")
    assert not strict.satisfied(1.0) and strict.violation(1.0) > 0 and loose.satisfied(1.0)
    assert Constraint.parse("x <= 1").violation(3.0) == 2.0
    for bad in ("params", "params == 3", "<= 3", "params <= big", 3):
        with pytest.raises(ObjectivesError, match="does not parse"):
            Constraint.parse(bad)


def test_objectives_read_named_values_and_name_what_is_missing():
    objectives = Objectives.parse(["dice", "hd95"], ["maximize", "minimize"], ["params <= 10"])
    named = objectives.values(0.8, {"dice": 0.8, "hd95": 3.0, "params": 12})
    assert objectives.vector(named) == (0.8, 3.0)
    assert objectives.scores((0.8, 3.0)) == (-0.8, 3.0)
    assert not objectives.feasible(named) and objectives.violation(named) == 2.0
    with pytest.raises(ObjectivesError, match="returned no 'hd95'"):
        objectives.values(0.8, {"dice": 0.8, "params": 1})
    with pytest.raises(ObjectivesError, match="one direction per objective"):
        Objectives(("a", "b"), ("minimize",))
    with pytest.raises(ObjectivesError, match="name it first"):
        Objectives(("a", "value"), ("minimize", "minimize"))


SPACE = '[space.x1]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n'
OBJECTIVE = '[objective]\nfunction = "tests.plugins.test_multi_objective:zdt"\n'

#: (what is wrong, [study] lines and other tables, the message)
BAD = [
    ("directions of another length",
     'objectives = ["f1", "f2"]\ndirections = ["minimize"]\n',
     "study.directions: 1 entries for 2 objectives; give exactly one direction per objective"),
    ("several objectives without directions", 'objectives = ["f1", "f2"]\n',
     "study.directions: objectives names 2 values; add directions"),
    ("direction and directions", 'direction = "minimize"\ndirections = ["minimize"]\n',
     "study.direction: give direction (one objective) or directions"),
    ("a direction that is none", 'objectives = ["f1", "f2"]\ndirections = ["up", "down"]\n',
     'study.directions: expected "minimize" or "maximize"'),
    ("a constraint that does not parse", 'constraints = ["params is small"]\n',
     "study.constraints: constraint 'params is small' does not parse"),
    ("a penalty with several objectives",
     'objectives = ["f1", "f2"]\ndirections = ["minimize", "minimize"]\n'
     'on_failure = "penalize"\npenalty = 1.0\n',
     "study.penalty: one value cannot penalise several objectives"),
    ("a searcher that optimises one objective",
     'objectives = ["f1", "f2"]\ndirections = ["minimize", "minimize"]\n'
     '[searcher]\nname = "local"\n',
     "local: optimises one objective, but the study has 2 (f1, f2); use a searcher that "
     "handles several: random, grid, evolution, bayes, optuna"),
]


@pytest.mark.parametrize(("problem", "study", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_objectives_get_one_line_and_status_2_and_write_nothing(
        tmp_path, monkeypatch, capsys, problem, study, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("[study]\n" + study + OBJECTIVE + SPACE)
    assert main(["run", "bad.toml"]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error:") and message in out and "\n" not in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]
