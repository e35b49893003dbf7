"""bohb: Hyperband brackets with configurations proposed by a Gaussian process."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

import medtune
from medtune.plugins.searchers import BayesSearcher, BOHBSearcher, SearcherError, bracket_plan

SPACE = {name: {"type": "float", "low": 0.0, "high": 1.0} for name in ("a", "b", "c")}
#: cheap model settings: the tests check behaviour, not the last digit of quality
FAST = {"restarts": 0, "candidates": 256, "local_candidates": 64, "refine_steps": 10,
        "refit_growth": 0.3}


def final_loss(config: dict) -> float:
    return (config["a"] - 0.3) ** 2 + (config["b"] - 0.7) ** 2 + 0.5 * (config["c"] - 0.5) ** 2


def multi_fidelity(config: dict, resource: float) -> float:
    """Training longer helps, by an amount that depends on the configuration (so low-budget
    rankings only partly agree with final ones)."""
    return final_loss(config) + 0.3 * (1.0 + config["c"]) * math.exp(-resource / 5.0)


def key(config: dict) -> tuple:
    return tuple(sorted(config.items()))


def run(name: str, seed: int, **options) -> tuple:
    searcher = medtune.create("searcher", name, space=SPACE, seed=seed, R=9, eta=3, **options)
    history = []
    while not searcher.finished:
        suggestion = searcher.ask()
        assert suggestion is not None, "sequential run: a suggestion must always come"
        value = multi_fidelity(suggestion.config, suggestion.resource)
        searcher.tell(suggestion, value)
        history.append((suggestion, value))
    return searcher, history


def test_registered_and_options_checked() -> None:
    assert "bohb" in medtune.available("searcher")
    with pytest.raises(SearcherError, match="mode must be one of"):
        medtune.create("searcher", "bohb", space=SPACE, mode="fast")
    with pytest.raises(SearcherError, match="random_fraction"):
        medtune.create("searcher", "bohb", space=SPACE, random_fraction=1.5)
    with pytest.raises(SearcherError, match="kernel must be one of"):
        medtune.create("searcher", "bohb", space=SPACE, kernel="cubic")


@pytest.mark.parametrize("mode", ["per_budget", "budget"])
def test_brackets_follow_hyperband_and_every_result_reaches_the_model(mode: str) -> None:
    searcher, history = run("bohb", seed=0, mode=mode, iterations=2, **FAST)
    assert isinstance(searcher, BOHBSearcher)
    plans = bracket_plan(9, 3)
    assert len(history) == 2 * sum(n for plan in plans for n, _ in plan.rungs)
    sizes: dict[tuple, int] = defaultdict(int)
    for suggestion, _ in history:
        sizes[suggestion.tag["iteration"], suggestion.tag["bracket"], suggestion.tag["rung"]] += 1
    for iteration in range(2):
        for plan in plans:
            for rung, (n, _) in enumerate(plan.rungs):
                assert sizes[iteration, plan.s, rung] == n
    # every result, at every rung, is an observation of the model, filed by its resource
    told = defaultdict(int)
    for suggestion, _ in history:
        told[suggestion.resource] += 1
    assert {r: len(scores) for r, (_, _, scores) in searcher.model._by_resource.items()} == told
    # the GP took over in the second iteration: those rung-0 suggestions carry its prediction
    predicted = [s for s, _ in history if s.tag["rung"] == 0 and s.tag.get("model")]
    assert len(predicted) >= 5
    for suggestion in predicted:
        model = suggestion.tag["model"]
        assert math.isfinite(model["mean"]) and model["std"] > 0
        assert set(model["relevance"]) == {"a", "b", "c"}
        if mode == "budget":  # predicted at the resource the suggestion is trained for
            assert model["resource"] == suggestion.resource
        else:  # predicted by the model of a resource level with enough results
            assert model["resource"] in told
    first = [key(s.config) for s, _ in history if s.tag["rung"] == 0]
    assert len(set(first)) == len(first), "a configuration was started twice"


def test_budget_mode_models_the_budget_as_one_more_input() -> None:
    searcher, _ = run("bohb", seed=1, mode="budget", iterations=2, **FAST)
    assert searcher.model.gp.dim == searcher.model.encoder.dim + 1 == 4
    per_budget, _ = run("bohb", seed=1, mode="per_budget", iterations=2, **FAST)
    assert per_budget.model.gp.dim == 3


def test_bohb_finds_better_configurations_than_hyperband_with_random_proposals() -> None:
    gaps = {"hyperband": [], "bohb": []}
    for seed in range(3):
        for name, options in (("hyperband", {}), ("bohb", FAST)):
            searcher, _ = run(name, seed=seed, iterations=3, **options)
            gaps[name].append(searcher.best[1])
    assert np.median(gaps["bohb"]) < np.median(gaps["hyperband"]), gaps


def test_failures_are_never_modelled_or_promoted() -> None:
    searcher = medtune.create("searcher", "bohb", space=SPACE, seed=2, R=9, eta=3,
                              iterations=1, **FAST)
    failed_ids = set()
    while not searcher.finished:
        suggestion = searcher.ask()
        if suggestion.tag["rung"] == 0 and suggestion.id % 4 == 1:
            failed_ids.add(suggestion.id)
            searcher.tell(suggestion, None, failed=True)
        else:
            searcher.tell(suggestion, multi_fidelity(suggestion.config, suggestion.resource))
        assert suggestion.tag["promoted_from"] not in failed_ids
    told = sum(len(scores) for _, _, scores in searcher.model._by_resource.values())
    assert told == searcher.asked - len(failed_ids)


def test_finite_space_runs_out_without_repeating_a_configuration() -> None:
    space = {"a": {"type": "int", "low": 0, "high": 3}, "b": {"type": "ordinal",
                                                                 "values": [1, 2, 4]}}
    searcher = medtune.create("searcher", "bohb", space=space, seed=0, R=9, eta=3, **FAST)
    started = []
    for _ in range(500):
        if searcher.finished:
            break
        suggestion = searcher.ask()
        if suggestion.tag["rung"] == 0:
            started.append(key(suggestion.config))
        searcher.tell(suggestion, suggestion.config["a"] + 1.0 / suggestion.config["b"])
    assert searcher.finished
    assert len(started) == len(set(started)) == 12


def _closest_pair(searcher: BOHBSearcher, history: list) -> float:
    starts = [s.config for s, _ in history if s.tag["rung"] == 0]
    x = searcher.model.encoder.encode(starts)
    distances = torch.cdist(x, x) + torch.eye(len(starts), dtype=x.dtype) * 10
    return float(distances.min())


def test_per_budget_model_does_not_propose_the_same_optimum_twice(monkeypatch) -> None:
    """Configurations started at another budget are fantasies of the per-budget model: without
    them, brackets that start at a higher budget get the same optimum proposed again."""
    searcher, history = run("bohb", seed=0, iterations=1, **FAST)
    assert _closest_pair(searcher, history) > 1e-3
    monkeypatch.setattr(BOHBSearcher.__init__.__globals__["_BudgetModel"], "_add_fantasies",
                        BayesSearcher._add_fantasies)
    searcher, history = run("bohb", seed=0, iterations=1, **FAST)
    assert _closest_pair(searcher, history) < 1e-3  # the failure the fantasies prevent
