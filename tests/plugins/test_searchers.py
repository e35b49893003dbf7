"""Searchers behind ask/tell: the contract suite that every registered searcher passes (built in
or from a plugin package), then what each built-in searcher does."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np
import pytest

import medtune
import medtune.registry as registry_module
from medtune.plugins.searchers import EvolutionSearcher, HyperbandSearcher, bracket_plan
from medtune.registry import Registry
from medtune.search import (
    Categorical,
    Float,
    Int,
    Ordinal,
    Searcher,
    SearcherError,
    SearchSpace,
    Suggestion,
)
from medtune.study import RunOptions, StudyRunError, StudyStore, TrialState, run_study
from tests.conftest import python_path

GRID_2D = SearchSpace([Int("x", 0, 20), Int("y", 0, 20)])


def bowl(config: dict) -> float:
    """A convex toy function on GRID_2D, minimal (0) at x = 7, y = 13."""
    return (config["x"] - 7) ** 2 + 2 * (config["y"] - 13) ** 2


def mixed_space() -> SearchSpace:
    return SearchSpace.from_dict({
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "width": {"type": "ordinal", "values": [8, 16, 32]},
        "loss": {"type": "categorical", "choices": ["dice", "glf"]},
        "beta2": {"type": "float", "low": 0.5, "high": 2, "condition": {"loss": ["glf"]}},
    })


def mixed_objective(config: dict) -> float:
    value = (math.log10(config["lr"]) + 2.5) ** 2 + abs(config["width"] - 16) / 16
    return value + (abs(config["beta2"] - 1.0) if config["loss"] == "glf" else 0.3)


def drive(searcher: Searcher, objective: Callable[[dict], float | None], limit: int = 10_000,
          ) -> list[tuple[Suggestion, float | None]]:
    """Ask and tell one suggestion at a time until the searcher finishes (or ``limit``)."""
    history = []
    while not searcher.finished and len(history) < limit:
        suggestion = searcher.ask()
        assert suggestion is not None, "nothing pending, not finished, yet no suggestion"
        value = objective(suggestion.config)
        searcher.tell(suggestion, value)
        history.append((suggestion, value))
    return history


# -- the contract suite: every registered searcher, and the fixture plugin's ---------------------
#: searchers of the fixture plugin packages: name -> (fixture, distribution)
PLUGIN_SEARCHERS = {"jitter": ("example_plugin", "medtune-example-plugin")}

#: built-in searchers that need an optional extra: name -> the module it needs
OPTIONAL_SEARCHERS = {"optuna": "optuna"}

#: options that keep a searcher quick on `mixed_space` (the others need none)
CONTRACT_OPTIONS: dict[str, dict] = {
    "grid": {"grid_points": 3},
    "hyperband": {"R": 9, "eta": 3, "iterations": None},
    "bohb": {"R": 9, "eta": 3, "restarts": 0, "refit_every": 8, "candidates": 64,
             "local_candidates": 16, "refine_steps": 5},
    "bayes": {"n_initial": 4, "restarts": 0, "refit_every": 8, "candidates": 64,
              "local_candidates": 16, "refine_steps": 5},
    "evolution": {"budget": 1000},
}


@pytest.fixture(params=list(dict.fromkeys([*medtune.available("searcher"), *PLUGIN_SEARCHERS])))
def contract(request, monkeypatch) -> tuple[str, Callable[..., Searcher]]:
    """``(name, make)``: ``make(**arguments)`` builds the searcher ``name`` on `mixed_space`
    through the plugin registry (one that sees the fixture plugin, for its searchers)."""
    name = request.param
    if name in OPTIONAL_SEARCHERS:
        pytest.importorskip(OPTIONAL_SEARCHERS[name])
    if name in PLUGIN_SEARCHERS:
        fixture, distribution = PLUGIN_SEARCHERS[name]
        monkeypatch.syspath_prepend(str(request.getfixturevalue("installed_plugins")[fixture]))
        registry = Registry()
        assert registry.get("searcher", name).plugin.distribution == distribution
        monkeypatch.setattr(registry_module, "_REGISTRY", registry)

    def make(**arguments) -> Searcher:
        options = {"space": mixed_space(), **CONTRACT_OPTIONS.get(name, {}), **arguments}
        return medtune.create("searcher", name, **options)

    return name, make


def failing_every_fourth(suggestion: Suggestion) -> float | None:
    """`mixed_objective`, except that every fourth suggestion fails."""
    return None if suggestion.id % 4 == 1 else mixed_objective(suggestion.config)


def interleaved(make: Callable[..., Searcher], seed: int) -> list[tuple]:
    """A parallel-looking run: up to 3 outstanding suggestions, told out of order, some of
    them failures."""
    searcher = make(seed=seed)
    pending: list[Suggestion] = []
    record = []
    step = 0
    while (not searcher.finished or pending) and step < 48:
        step += 1
        suggestion = searcher.ask() if len(pending) < 3 else None
        if suggestion is not None:
            record.append(("ask", suggestion.id, suggestion.config, suggestion.resource,
                           suggestion.tag))
            pending.append(suggestion)
            continue
        assert pending, "nothing pending, not finished, yet no suggestion"
        done = pending.pop(step % len(pending))
        value = failing_every_fourth(done)
        searcher.tell(done, value, failed=value is None)
        record.append(("tell", done.id, value))
    return record


def test_builtin_searchers_are_registered() -> None:
    assert {"grid", "random", "bayes", "hyperband", "bohb", "evolution", "local",
            "optuna"} <= set(medtune.available("searcher"))


def test_contract_a_searcher_takes_the_shared_arguments(contract) -> None:
    name, make = contract
    searcher = make(seed=3, direction="maximize", on_failure="penalize", penalty=2.0,
                    max_trials=7)
    assert isinstance(searcher, Searcher) and searcher.name == name
    assert (searcher.seed, searcher.direction, searcher.on_failure, searcher.penalty,
            searcher.max_trials) == (3, "maximize", "penalize", 2.0, 7)
    assert searcher.space == mixed_space()
    assert searcher.planned_trials is None or searcher.planned_trials <= 7
    assert (searcher.asked, searcher.pending, searcher.best) == (0, [], None)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"direction": "down"}, "direction must be 'minimize' or 'maximize', got 'down'"),
    ({"on_failure": "ignore"}, "on_failure must be 'exclude' or 'penalize'"),
    ({"penalty": math.nan}, "penalty must be a finite number or None, got nan"),
    ({"penalty": "high"}, "penalty must be a finite number or None"),
    ({"max_trials": -1}, "max_trials must be an integer >= 0 or None"),
    ({"seed": "zero"}, "seed must be an integer"),
    ({"space": "x in [0, 1]"}, "space must be a SearchSpace or its TOML table"),
])
def test_contract_the_shared_arguments_are_checked_by_name(contract, arguments, message) -> None:
    name, make = contract
    with pytest.raises(SearcherError, match=f"^{name}: {message}"):
        make(**arguments)


def test_contract_ask_and_tell_keep_the_books(contract) -> None:
    _, make = contract
    searcher = make(seed=0)
    asked = [searcher.ask() for _ in range(3)]
    asked = [s for s in asked if s is not None]
    assert asked and [s.id for s in asked] == list(range(len(asked)))
    assert searcher.pending == asked and searcher.asked == len(asked)
    for suggestion in asked:
        assert mixed_space().validate(suggestion.config) == suggestion.config
    first = asked[0]
    forged = Suggestion({**first.config, "width": 1234}, first.resource, {}, first.id)
    with pytest.raises(SearcherError, match="was asked with config"):
        searcher.tell(forged, 1.0)
    with pytest.raises(SearcherError, match="must be a number or None"):
        searcher.tell(first, "good")
    searcher.tell(first, 1.0)
    with pytest.raises(SearcherError, match="is not pending"):
        searcher.tell(first, 1.0)
    for suggestion in asked[1:]:  # results may come in any order
        searcher.tell(suggestion, None, failed=True)
    assert searcher.pending == []


def test_contract_same_seed_and_same_tells_give_the_same_suggestions(contract) -> None:
    name, make = contract
    first = interleaved(make, seed=5)
    assert first == interleaved(make, seed=5)
    assert sum(1 for event in first if event[0] == "ask") >= 20
    if name != "grid":  # the grid's order does not depend on the seed
        assert first != interleaved(make, seed=6)


@pytest.mark.parametrize("policy", ["exclude", "penalize"])
def test_contract_the_base_class_applies_direction_and_failure_policy(contract, policy) -> None:
    """Maximising -f proposes exactly what minimising f does: the direction is applied in one
    place, before the searcher sees a result. Failures never count as the best result."""
    _, make = contract
    runs = {}
    for direction, sign in (("minimize", 1.0), ("maximize", -1.0)):
        # a penalty better than any value: still, a failure is never the best result
        searcher = make(seed=2, direction=direction, on_failure=policy, penalty=-sign * 1e3)
        history = []
        while len(history) < 24 and not searcher.finished:
            suggestion = searcher.ask()
            value = failing_every_fourth(suggestion)
            searcher.tell(suggestion, None if value is None else sign * value,
                          failed=value is None)
            history.append((suggestion.id, suggestion.config, suggestion.resource))
        runs[direction] = (history, searcher.best)
    (minimised, best), (maximised, best_maximised) = runs["minimize"], runs["maximize"]
    assert minimised == maximised and len(minimised) == 24
    if best is not None:  # a multi-fidelity searcher's best needs a full-budget result
        assert best_maximised == (best[0], -best[1])
        assert best[1] == mixed_objective(best[0])
        assert any(c == best[0] and i % 4 != 1 for i, c, _ in minimised)  # not a failure


def test_contract_max_trials_ends_the_search(contract) -> None:
    _, make = contract
    searcher = make(seed=0, max_trials=5)
    for _ in range(5):
        suggestion = searcher.ask()
        searcher.tell(suggestion, mixed_objective(suggestion.config))
    assert searcher.finished and searcher.ask() is None and searcher.asked == 5
    assert searcher.planned_trials is None or searcher.planned_trials <= 5


def test_contract_a_study_runs_the_searcher(contract, tmp_path) -> None:
    _, make = contract
    with StudyStore.create(tmp_path / "s.db", direction="maximize", seed=4) as store:
        searcher = make(seed=store.seed, direction="maximize")
        summary = run_study(store, searcher, peak, RunOptions(n_trials=6, progress=False))
        trials = store.trials()
    assert summary.n_complete == 6 and searcher.asked == 6
    assert all(mixed_space().validate(t.config) == t.config for t in trials)
    with StudyStore.create(tmp_path / "other.db", direction="maximize") as store:
        with pytest.raises(StudyRunError, match="build it with direction='maximize'"):
            run_study(store, make(seed=0), peak, RunOptions(n_trials=1, progress=False))
        assert store.count() == 0


def peak(config, resource, seed, report) -> float:
    """An objective to maximise over `mixed_space`."""
    return -mixed_objective(config)


def test_a_plugin_searcher_runs_a_study_from_the_command_line(installed_plugins, tmp_path):
    """`medtune run` with the fixture plugin's searcher, the package found on PYTHONPATH."""
    storage = tmp_path / "jitter.sqlite"
    config = tmp_path / "jitter.toml"
    config.write_text(
        f'[study]\nname = "jitter"\ndirection = "minimize"\nn_trials = 8\nseed = 1\n'
        f'storage = "{storage}"\n\n[searcher]\nname = "jitter"\nexploit = 0.9\nwarmup = 2\n\n'
        '[objective]\nfunction = "tests.framework.study_fakes:quadratic"\n\n'
        '[space.x]\ntype = "float"\nlow = -1.0\nhigh = 1.0\n')
    env = dict(os.environ, COLUMNS="200", PYTHONPATH=os.pathsep.join(
        [str(installed_plugins["example_plugin"]), python_path()]))
    result = subprocess.run([sys.executable, "-m", "medtune.cli", "run", str(config)],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stopped (n_trials)" in result.stdout
    with StudyStore(storage, read_only=True) as store:
        trials = store.trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    origins = Counter(t.tag["origin"] for t in trials)
    assert origins["random"] >= 2 and origins["mutation"] >= 1


# -- grid and random -------------------------------------------------------------------------------
def test_grid_is_complete_and_in_order() -> None:
    space = SearchSpace([
        Ordinal("width", [8, 16, 32]),
        Categorical("loss", ["dice", "glf"]),
        Float("beta2", 0.5, 2.0, condition={"loss": ["glf"]}),
        Float("lr", 1e-3, 1e-1, log=True),
    ])
    with pytest.raises(SearcherError, match="'beta2', 'lr' need grid_points"):
        medtune.create("searcher", "grid", space=space)
    searcher = medtune.create("searcher", "grid", space=space, grid_points={"beta2": 4, "lr": 3})
    history = drive(searcher, lambda c: 0.0)
    configs = [s.config for s, _ in history]
    assert len(configs) == searcher.total == 3 * (1 + 4) * 3
    assert [space.key(c) for c in configs] == [space.key(c) for c in searcher.grid.enumerate()]
    assert sorted({c["lr"] for c in configs}) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert sorted({c["beta2"] for c in configs if "beta2" in c}) == pytest.approx([0.5, 1, 1.5, 2])
    assert searcher.finished and searcher.ask() is None
    assert [s.tag["grid_index"] for s, _ in history] == list(range(len(history)))


def test_grid_repeats_each_configuration_in_a_row() -> None:
    space = SearchSpace([Categorical("method", ["a", "b"]), Ordinal("width", [4, 8])])
    searcher = medtune.create("searcher", "grid", space=space, repeats=3)
    history = drive(searcher, lambda c: 0.0)
    assert len(history) == searcher.total == 12
    keys = [space.key(s.config) for s, _ in history]
    expected = [space.key(c) for c in space.enumerate() for _ in range(3)]
    assert keys == expected
    assert [s.tag["replicate"] for s, _ in history] == [0, 1, 2] * 4
    assert [s.tag["grid_index"] for s, _ in history] == [i for i in range(4) for _ in range(3)]
    assert searcher.finished and searcher.ask() is None
    for bad in (0, 1.5, True):
        with pytest.raises(SearcherError, match="repeats must be an integer >= 1"):
            medtune.create("searcher", "grid", space=space, repeats=bad)


def test_random_never_repeats_and_finishes_on_a_finite_space() -> None:
    searcher = medtune.create("searcher", "random", space=GRID_2D, seed=3)
    history = drive(searcher, bowl)
    keys = [GRID_2D.key(s.config) for s, _ in history]
    assert len(keys) == len(set(keys)) == GRID_2D.size() == 441
    assert searcher.finished and searcher.ask() is None
    assert searcher.best == ({"x": 7, "y": 13}, 0.0)
    assert [s.id for s, _ in history] == list(range(441))


def test_random_max_trials_and_infinite_spaces() -> None:
    searcher = medtune.create("searcher", "random", space=mixed_space(), seed=0, max_trials=50)
    history = drive(searcher, mixed_objective)
    assert len(history) == 50 and searcher.finished
    for suggestion, _ in history:
        assert mixed_space().validate(suggestion.config) == suggestion.config
        assert suggestion.resource is None


# -- hyperband -------------------------------------------------------------------------------------
def test_bracket_plan_matches_li_et_al_for_R81_eta3() -> None:
    plans = bracket_plan(81, 3)
    assert [p.s for p in plans] == [4, 3, 2, 1, 0]
    assert [p.rungs for p in plans] == [
        ((81, 1), (27, 3), (9, 9), (3, 27), (1, 81)),
        ((34, 3), (11, 9), (3, 27), (1, 81)),
        ((15, 9), (5, 27), (1, 81)),
        ((8, 27), (2, 81)),
        ((5, 81),),
    ]
    # Bertrand2019's setting (sec. 2.5.3): R = 27 minutes, eta = 3
    assert [p.rungs[0] for p in bracket_plan(27, 3)] == [(27, 1), (12, 3), (6, 9), (4, 27)]
    # each bracket uses about the same budget, (s_max + 1) R
    assert all(p.budget <= 5 * 81 * 1.5 for p in plans)
    with pytest.raises(SearcherError, match="eta must be a number > 1"):
        bracket_plan(81, 1)


def hyperband_run(tell_order: str, seed: int = 0, **options) -> tuple[HyperbandSearcher, list]:
    """Run hyperband over `bowl`, telling results in `tell_order` among outstanding ones."""
    searcher = medtune.create("searcher", "hyperband", space=GRID_2D, seed=seed, R=81, eta=3,
                              **options)
    rng = np.random.default_rng(99)
    pending: list[Suggestion] = []
    history = []
    while not searcher.finished or pending:
        suggestion = searcher.ask()
        if suggestion is not None:
            pending.append(suggestion)
            continue
        assert pending, "hyperband is stuck: nothing to propose and nothing pending"
        index = {"fifo": 0, "lifo": -1, "shuffled": int(rng.integers(len(pending)))}[tell_order]
        done = pending.pop(index)
        value = bowl(done.config) + 100 / done.resource  # training longer helps
        searcher.tell(done, value)
        history.append((done, value))
    return searcher, history


def test_hyperband_rungs_follow_the_plan_with_successive_halving() -> None:
    searcher, history = hyperband_run("fifo")
    by_rung: dict[tuple[int, int], list] = defaultdict(list)
    for suggestion, value in history:
        by_rung[suggestion.tag["bracket"], suggestion.tag["rung"]].append((suggestion, value))
    for plan in bracket_plan(81, 3):
        for rung, (size, resource) in enumerate(plan.rungs):
            trials = by_rung[plan.s, rung]
            assert len(trials) == size
            assert {s.resource for s, _ in trials} == {resource}
            if rung == 0:
                assert all(s.tag["promoted_from"] is None for s, _ in trials)
                continue
            # the promoted configurations are the best `size` of the previous rung
            previous = sorted(by_rung[plan.s, rung - 1], key=lambda item: item[1])
            best_ids = {s.id for s, _ in previous[:size]}
            assert {s.tag["promoted_from"] for s, _ in trials} == best_ids
            configs = {s.id: s.config for s, _ in previous}
            assert all(s.config == configs[s.tag["promoted_from"]] for s, _ in trials)
    assert len(history) == sum(n for p in bracket_plan(81, 3) for n, _ in p.rungs)
    first_configs = [GRID_2D.key(s.config) for s, _ in history if s.tag["rung"] == 0]
    assert len(set(first_configs)) == len(first_configs) == 81 + 34 + 15 + 8 + 5
    best_config, best_value = searcher.best
    full = [(v, s.config) for s, v in history if s.resource == 81]
    assert best_value == min(v for v, _ in full)


@pytest.mark.parametrize("order", ["lifo", "shuffled"])
def test_hyperband_accepts_results_out_of_order(order: str) -> None:
    _, in_order = hyperband_run("fifo")
    _, reordered = hyperband_run(order)

    def schedule(history: list) -> Counter:
        return Counter((s.tag["bracket"], s.tag["rung"], s.resource, GRID_2D.key(s.config))
                       for s, _ in history)

    assert schedule(reordered) == schedule(in_order)


def test_hyperband_brackets_in_sequence_without_overlap() -> None:
    searcher = medtune.create("searcher", "hyperband", space=GRID_2D, seed=0, R=9, eta=3,
                              overlap_brackets=False)
    first_rung = []
    while (suggestion := searcher.ask()) is not None:
        first_rung.append(suggestion)
    assert len(first_rung) == 9 and {s.tag["bracket"] for s in first_rung} == {2}
    for suggestion in first_rung[:-1]:
        searcher.tell(suggestion, bowl(suggestion.config))
        assert searcher.ask() is None  # the rung waits for its last result
    searcher.tell(first_rung[-1], bowl(first_rung[-1].config))
    promoted = [searcher.ask() for _ in range(3)]
    assert all(s.tag["rung"] == 1 and s.resource == 3 for s in promoted)
    overlapping = medtune.create("searcher", "hyperband", space=GRID_2D, seed=0, R=9, eta=3)
    brackets = [overlapping.ask().tag["bracket"] for _ in range(9 + 5 + 3)]
    assert brackets == [2] * 9 + [1] * 5 + [0] * 3  # waiting brackets let the next ones start


@pytest.mark.parametrize("policy", ["exclude", "penalize"])
def test_hyperband_failure_policies(policy: str) -> None:
    searcher = medtune.create("searcher", "hyperband", space=GRID_2D, seed=0, R=9, eta=3,
                              on_failure=policy, penalty=-1e9, overlap_brackets=False)
    rung = [searcher.ask() for _ in range(9)]
    failed = rung[0]
    searcher.tell(failed, None, failed=True)
    for suggestion in rung[1:]:
        searcher.tell(suggestion, bowl(suggestion.config))
    promoted = {s.tag["promoted_from"] for s in (searcher.ask() for _ in range(3))}
    # excluded: never promoted; penalised with a (here very good) penalty: ranked by it
    assert (failed.id in promoted) == (policy == "penalize")


@pytest.mark.parametrize(("proposer", "options"), [("grid", {}), ("local", {}),
                                                   ("evolution", {"budget": 500})])
def test_hyperband_with_other_proposers(proposer: str, options: dict) -> None:
    searcher = medtune.create("searcher", "hyperband", space=GRID_2D, seed=0, R=27, eta=3,
                              searcher=proposer, iterations=None, max_trials=400, **options)
    history = drive(searcher, bowl)
    assert len(history) == 400
    if proposer == "grid":
        first = [s.config for s, _ in history if s.tag["rung"] == 0]
        assert first == list(GRID_2D.enumerate())[: len(first)]
    assert searcher.proposer.asked == sum(1 for s, _ in history if s.tag["rung"] == 0)


def test_hyperband_finishes_when_a_small_space_runs_out() -> None:
    space = SearchSpace([Categorical("loss", ["dice", "glf", "tversky", "effectiveness"])])
    searcher = medtune.create("searcher", "hyperband", space=space, seed=0, R=9, eta=3)
    history = drive(searcher, lambda c: len(c["loss"]))
    rung0 = [s for s, _ in history if s.tag["rung"] == 0]
    assert len(rung0) == 4 and searcher.finished
    # the bracket planned 9, 3 and 1 configurations; with 4 it keeps 4 // 3 = 1, which still
    # goes on to the full resource
    assert [s.resource for s, _ in history] == [1, 1, 1, 1, 3, 9]
    assert searcher.best == ({"loss": "glf"}, 3)


# -- evolution -------------------------------------------------------------------------------------
def test_mutation_rate_decays_from_one_to_one_over_d() -> None:
    searcher = EvolutionSearcher(GRID_2D, budget=101)
    rates = [searcher.mutation_rate(t) for t in range(101)]
    assert rates[0] == 1.0 and rates[-1] == pytest.approx(1 / 2) and rates[50] == pytest.approx(0.75)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    space = SearchSpace([Categorical(f"c{i}", ["a", "b"]) for i in range(45)])  # Pourchot2022
    geometric = EvolutionSearcher(space, budget=11, schedule="geometric")
    assert geometric.mutation_rate(10) == pytest.approx(1 / 45)
    assert geometric.mutation_rate(5) == pytest.approx(math.sqrt(1 / 45))
    history = drive(geometric, lambda c: 0.0)
    assert [s.tag.get("mutation_rate") for s, _ in history][1:] == pytest.approx(
        [geometric.mutation_rate(t) for t in range(1, 11)])


def test_evolution_improves_on_a_toy_function() -> None:
    space = SearchSpace([Int(f"x{i}", -20, 20) for i in range(6)])
    sphere = lambda c: float(sum(v * v for v in c.values()))  # noqa: E731
    start = {f"x{i}": 15 for i in range(6)}
    finals = []
    for seed in range(5):
        searcher = medtune.create("searcher", "evolution", space=space, seed=seed, budget=300,
                                  start=start)
        history = drive(searcher, sphere)
        assert len(history) == 300 and searcher.finished
        assert history[0][0].config == start and history[0][0].tag["origin"] == "start"
        keys = [space.key(s.config) for s, _ in history]
        assert len(set(keys)) == len(keys)  # never proposes a configuration twice
        finals.append(searcher.parent[1])
        assert searcher.parent[1] == min(v for _, v in history)
    assert max(finals) < 0.02 * sphere(start)  # from 1350 to a few units
    random_best = []
    for seed in range(5):
        random = medtune.create("searcher", "random", space=space, seed=seed, max_trials=300)
        random_best.append(min(v for _, v in drive(random, sphere)))
    assert np.mean(finals) < np.mean(random_best)


@pytest.mark.parametrize("policy", ["exclude", "penalize"])
def test_evolution_failure_policies(policy: str) -> None:
    searcher = medtune.create("searcher", "evolution", space=GRID_2D, seed=0, budget=10,
                              on_failure=policy, penalty=-1.0, start={"x": 0, "y": 0})
    first = searcher.ask()
    searcher.tell(first, 5.0)
    child = searcher.ask()
    searcher.tell(child, None, failed=True)
    expected = child.config if policy == "penalize" else first.config
    assert searcher.parent == (expected, -1.0 if policy == "penalize" else 5.0)


def test_evolution_parallel_asks_before_the_first_result() -> None:
    searcher = medtune.create("searcher", "evolution", space=GRID_2D, seed=0, budget=20)
    suggestions = [searcher.ask() for _ in range(4)]
    assert [s.tag["origin"] for s in suggestions] == ["random"] * 4
    searcher.tell(suggestions[2], 1.0)
    assert searcher.ask().tag["origin"] == "mutation"


# -- local -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["best", "first"])
def test_local_search_reaches_the_optimum_of_a_convex_function(strategy: str) -> None:
    for seed in range(5):
        searcher = medtune.create("searcher", "local", space=GRID_2D, seed=seed,
                                  strategy=strategy, start={"x": 20, "y": 0})
        history = []
        while not searcher.optima:
            suggestion = searcher.ask()
            history.append(suggestion)
            searcher.tell(suggestion, bowl(suggestion.config))
        assert searcher.optima == [({"x": 7, "y": 13}, 0.0)]
        # a climb of 13 + 13 steps needs at most 4 neighbours per step (and the start)
        assert len(history) <= 1 + 4 * 27
        for suggestion in history[1:]:
            assert suggestion.tag["role"] == "neighbour"
        restart = searcher.ask()
        assert restart.tag["role"] == "restart" and restart.tag["restart"] == 1


def test_best_improvement_moves_to_the_best_neighbour() -> None:
    searcher = medtune.create("searcher", "local", space=GRID_2D, seed=0,
                              start={"x": 10, "y": 10})
    start = searcher.ask()
    neighbours = [searcher.ask() for _ in range(4)]
    assert searcher.ask() is None  # the neighbourhood is out: wait for its results
    assert {GRID_2D.key(s.config) for s in neighbours} == {
        GRID_2D.key(c) for c in GRID_2D.neighbours(start.config)}
    for suggestion in [start, *neighbours]:
        searcher.tell(suggestion, bowl(suggestion.config))
    # best neighbour of (10, 10) is (10, 11); its neighbours, minus those seen, come next
    following = [searcher.ask() for _ in range(3)]
    assert {(s.config["x"], s.config["y"]) for s in following} == {(9, 11), (11, 11), (10, 12)}


def test_local_search_runs_through_a_finite_space_with_restarts() -> None:
    space = SearchSpace([Int("x", 0, 30)])
    bumpy = lambda c: float([3, 1, 2][c["x"] % 3] + abs(c["x"] - 20) / 10)  # noqa: E731
    searcher = medtune.create("searcher", "local", space=space, seed=0, strategy="first")
    history = drive(searcher, bumpy)
    assert len(history) == 31 and searcher.finished
    assert len({s.config["x"] for s, _ in history}) == 31
    assert len(searcher.optima) > 1
    assert searcher.best == ({"x": 19}, 1.1)


@pytest.mark.parametrize("policy", ["exclude", "penalize"])
def test_local_failure_policies(policy: str) -> None:
    searcher = medtune.create("searcher", "local", space=GRID_2D, seed=0, start={"x": 10, "y": 10},
                              on_failure=policy)
    start = searcher.ask()
    searcher.tell(start, bowl(start.config))
    for suggestion in [searcher.ask() for _ in range(4)]:
        fails = suggestion.config == {"x": 10, "y": 11}  # the best neighbour cannot be trained
        searcher.tell(suggestion, None if fails else bowl(suggestion.config), failed=fails)
    # exclude: not a candidate; penalize (worst value seen so far): no better than the others
    following = searcher.ask()
    assert following.config != {"x": 10, "y": 12}
    assert following.tag["step"] == 1  # it moved to the best trainable neighbour instead
