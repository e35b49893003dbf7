"""Several objectives and constraints: random, NSGA-II and ParEGO on a ZDT1-like problem,
constrained search, the study loop (a missing value fails its trial; resume replays), and the
command line's front."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import medtune
from medtune.cli import main
from medtune.search.objectives import Objectives, hypervolume
from medtune.study import RunOptions, StudyStore, resume_study, run_study
from medtune.study.store import TrialState

SPACE = {name: {"type": "float", "low": 0.0, "high": 1.0} for name in ("x1", "x2", "x3")}
ZDT = Objectives(("f1", "f2"), ("minimize", "minimize"))
#: x3 does not move the objectives; its cost is bounded (30 % of the space is feasible)
CONSTRAINED = Objectives(("f1", "f2"), ("minimize", "minimize"),
                         (Objectives.parse(None, ["minimize"], ["cost <= 0.3"]).constraints))
REFERENCE = (1.1, 11.0)
QUIET = RunOptions(progress=False)


def zdt_values(config):
    """ZDT1 (Zitzler et al. 2000) on x1, x2: a convex front at x2 = 0."""
    g = 1.0 + 9.0 * config["x2"]
    f1 = config["x1"]
    return {"f1": f1, "f2": g * (1.0 - math.sqrt(f1 / g)), "cost": config["x3"]}


def zdt(config, resource, seed, report):
    """The objective of the studies here (its value is the first objective, as a mapping
    passed to the study loop directly must give)."""
    values = zdt_values(config)
    return {"value": values["f1"], **values}


def without_f2(config, resource, seed, report):
    return {"value": config["x1"], "f1": config["x1"]}


def _search(name, seed, objectives=ZDT, budget=40, **options):
    if name == "bayes":
        options.setdefault("refit_every", 4)  # kernel fits are most of the time
    searcher = medtune.create("searcher", name, space=SPACE, seed=seed, objectives=objectives,
                              **options)
    points, infeasible = [], 0
    for _ in range(budget):
        suggestion = searcher.ask()
        values = zdt_values(suggestion.config)
        vector = (values["f1"], values["f2"])
        constraint_values = [values["cost"]] if objectives.constraints else None
        searcher.tell(suggestion, vector, constraint_values=constraint_values)
        if objectives.constraints and values["cost"] > 0.3:
            infeasible += 1
        else:
            points.append(vector)
    return np.array(points).reshape(-1, 2), infeasible


@pytest.mark.parametrize("name", ["random", "evolution", "bayes"])
def test_every_multi_objective_searcher_finds_a_front(name):
    points, _ = _search(name, 0, budget=25)
    assert len(points) == 25 and hypervolume(points, REFERENCE) > 0


def test_nsga2_and_parego_beat_random_search_in_hypervolume():
    def mean_volume(name, **options):
        return np.mean([hypervolume(_search(name, seed, **options)[0], REFERENCE)
                        for seed in range(3)])

    random = mean_volume("random")
    assert mean_volume("evolution", population=10) > random
    assert mean_volume("bayes") > random


def test_nsga2_is_the_evolution_searcher_for_several_objectives():
    searcher = medtune.create("searcher", "evolution", space=SPACE, objectives=ZDT)
    assert searcher.algorithm == "nsga2"
    with pytest.raises(medtune.search.SearcherError, match="nsga2"):
        medtune.create("searcher", "evolution", space=SPACE, objectives=ZDT, algorithm="es")


def test_a_single_objective_searcher_refuses_several_objectives():
    with pytest.raises(medtune.search.SearcherError, match="use a searcher that handles several"):
        medtune.create("searcher", "hyperband", space=SPACE, objectives=ZDT, R=9)


def test_feasibility_weighting_steers_bayes_away_from_infeasible_proposals():
    random = sum(_search("random", seed, CONSTRAINED, budget=30)[1] for seed in range(2))
    bayes = sum(_search("bayes", seed, CONSTRAINED, budget=30)[1] for seed in range(2))
    nsga2 = sum(_search("evolution", seed, CONSTRAINED, budget=30, population=10)[1]
                for seed in range(2))
    assert bayes < 0.6 * random
    assert nsga2 < random


def test_a_single_objective_bayes_with_a_constraint_best_is_feasible():
    objectives = Objectives.parse(None, ["minimize"], ["cost <= 0.3"])
    searcher = medtune.create("searcher", "bayes", space=SPACE, seed=1, objectives=objectives)
    for _ in range(20):
        suggestion = searcher.ask()
        values = zdt_values(suggestion.config)
        # the objective rewards a high cost: the constraint is what stops it
        searcher.tell(suggestion, values["f1"] - values["cost"],
                      constraint_values=[values["cost"]])
    config, _ = searcher.best
    assert config["x3"] <= 0.3


def test_optuna_samplers_take_several_objectives():
    pytest.importorskip("optuna")
    points, _ = _search("optuna", 0, budget=15, sampler="nsga2")
    assert len(points) == 15
    with pytest.raises(medtune.search.SearcherError, match="cmaes"):
        medtune.create("searcher", "optuna", space=SPACE, objectives=ZDT, sampler="cmaes")


# -- the study loop ---------------------------------------------------------------------------


def _bayes(seed):
    return medtune.create("searcher", "bayes", space=SPACE, seed=seed, objectives=CONSTRAINED,
                          n_initial=4, refit_every=3)


def _told(path):
    with StudyStore(path) as store:
        return [(t.suggestion_id, t.config, t.value, t.metrics, t.state) for t in store.trials()]


def test_a_multi_objective_constrained_study_resumes_to_the_uninterrupted_result(tmp_path):
    objective = "tests.plugins.test_multi_objective:zdt"
    with StudyStore.create(tmp_path / "reference.db", seed=3) as store:
        run_study(store, _bayes(store.seed), objective,
                  RunOptions(progress=False, n_trials=10))
    with StudyStore.create(tmp_path / "resumed.db", seed=3) as store:
        run_study(store, _bayes(store.seed), objective, RunOptions(progress=False, n_trials=6))
    resume_study(tmp_path / "resumed.db", _bayes, objective,
                 RunOptions(progress=False, n_trials=10))
    assert _told(tmp_path / "resumed.db") == _told(tmp_path / "reference.db")
    with StudyStore(tmp_path / "reference.db") as store:
        trials = store.trials()
    infeasible = [t for t in trials if t.metrics["cost"] > 0.3]
    assert infeasible and all(t.state is TrialState.COMPLETE for t in infeasible)  # kept
    front = CONSTRAINED.front(trials)
    assert front and not {t.id for t in front} & {t.id for t in infeasible}


def test_a_trial_that_lacks_a_named_objective_fails_naming_it(tmp_path):
    searcher = medtune.create("searcher", "random", space=SPACE, seed=0, objectives=ZDT)
    with StudyStore.create(tmp_path / "s.db") as store:
        summary = run_study(store, searcher, "tests.plugins.test_multi_objective:without_f2",
                            RunOptions(progress=False, n_trials=2))
        trials = store.trials()
    assert summary.n_failed == 2
    assert all("returned no 'f2'" in t.traceback for t in trials)


STUDY = """
[study]
name = "zdt"
objectives = ["f1", "f2"]
directions = ["minimize", "minimize"]
constraints = ["cost <= 0.3"]
n_trials = 12
[searcher]
name = "evolution"
population = 6
[objective]
function = "tests.plugins.test_multi_objective:{function}"
"""


@pytest.mark.parametrize("function", ["zdt_without_value", "zdt"])
def test_medtune_run_and_status_show_the_front_and_the_report_draws_it(
        tmp_path, monkeypatch, capsys, function):
    monkeypatch.chdir(tmp_path)
    space = "".join(f'[space.{n}]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n' for n in SPACE)
    (tmp_path / "zdt.toml").write_text(STUDY.format(function=function) + space)
    assert main(["run", "zdt.toml"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front (minimize f1, minimize f2; cost <= 0.3)" in out
    assert re.search(r"break a constraint", out)
    assert (tmp_path / "studies" / "zdt_report" / "pareto.png").exists()
    assert "Pareto front" in (tmp_path / "studies" / "zdt_report" / "index.html").read_text()
    assert main(["status", "studies/zdt.sqlite"]) == 0
    status = capsys.readouterr().out
    assert "Pareto front" in status and "no: cost = " in status
    with StudyStore(tmp_path / "studies" / "zdt.sqlite") as store:
        assert store.count([TrialState.FAIL]) == 0


def zdt_without_value(config, resource, seed, report):
    """A mapping of named values only: `medtune run` takes the first objective as the value."""
    return zdt_values(config)


def test_parallel_coordinates_for_three_objectives(tmp_path):
    from medtune.report.pareto import pareto_figure

    objectives = Objectives(("f1", "f2", "cost"), ("minimize",) * 3)
    with StudyStore.create(tmp_path / "s.db") as store:
        run_study(store, medtune.create("searcher", "random", space=SPACE, objectives=objectives),
                  "tests.plugins.test_multi_objective:zdt", RunOptions(progress=False, n_trials=8))
        trials = store.trials()
    name, caption = pareto_figure(trials, objectives, tmp_path)
    assert (tmp_path / name).exists() and "parallel coordinates" in caption
