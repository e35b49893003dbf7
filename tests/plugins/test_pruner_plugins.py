"""Each built-in pruner's rule on hand-made histories (the contract suite is in
tests/framework/test_pruners.py)."""

from __future__ import annotations

import pytest

import medtune
from medtune.plugins.pruners import AshaPruner, PrunerError
from medtune.pruners import History


def _history(curves: dict[int, list[float]], completed=None) -> History:
    """``{trial: [value at step 1, 2, ...]}``; every trial completed unless listed."""
    history = History()
    for trial, values in curves.items():
        for step, value in enumerate(values, start=1):
            history.record(trial, step, value)
        if completed is None or trial in completed:
            history.complete(trial)
    return history


def _judge(name: str, history: History, trial: int, step: int, direction: str = "minimize",
           **options):
    pruner = medtune.create("pruner", name, direction=direction, **options)
    return pruner.should_prune(trial, step, history.trial(trial)[step], history)


# -- median and percentile ----------------------------------------------------------------------

def test_median_compares_the_best_so_far_with_the_median_at_this_step():
    others = {1: [0.9, 0.5], 2: [0.8, 0.4], 3: [0.7, 0.3]}  # median at step 2: 0.4
    assert _judge("median", _history({**others, 9: [0.6, 0.45]}), 9, 2) is not None
    assert _judge("median", _history({**others, 9: [0.6, 0.4]}), 9, 2) is None  # ties go on
    # its best so far counts, not its latest value
    assert _judge("median", _history({**others, 9: [0.35, 0.45]}), 9, 2) is None
    rule = _judge("median", _history({**others, 9: [0.6, 0.45]}), 9, 2)
    assert rule == ("median: best value 0.45 so far is worse than the median 0.4 of 3 trials "
                    "at step 2")


def test_median_maximizing_keeps_the_higher_values():
    others = {1: [0.1, 0.5], 2: [0.2, 0.6], 3: [0.3, 0.7]}
    assert _judge("median", _history({**others, 9: [0.1, 0.65]}), 9, 2, "maximize") is None
    assert _judge("median", _history({**others, 9: [0.1, 0.55]}), 9, 2, "maximize") is not None


def test_median_waits_for_n_min_trials_at_the_step():
    history = _history({1: [0.1], 9: [0.9]})
    assert _judge("median", history, 9, 1) is not None
    assert _judge("median", history, 9, 1, n_min_trials=2) is None


def test_percentile_keeps_the_top_fraction():
    others = {t: [t / 10] for t in range(1, 11)}  # 0.1 .. 1.0 at step 1 (to minimise)
    history = _history({**others, 20: [0.35]})
    assert _judge("percentile", history, 20, 1, percentile=25) is not None  # 25th: 0.325
    assert _judge("percentile", history, 20, 1, percentile=50) is None
    assert _judge("percentile", history, 20, 1, percentile=10) is not None


@pytest.mark.parametrize("value", [-1, 100.5, "25"])
def test_percentile_refuses_a_bad_percentile(value):
    with pytest.raises(PrunerError, match="percentile pruner: percentile must be"):
        medtune.create("pruner", "percentile", percentile=value)


def test_startup_counts_completed_trials_only():
    curves = {1: [0.1], 2: [0.2], 9: [0.9]}
    history = _history(curves, completed={1})
    assert _judge("median", history, 9, 1, n_startup_trials=2) is None
    history.complete(2)
    assert _judge("median", history, 9, 1, n_startup_trials=2) is not None


# -- patience -----------------------------------------------------------------------------------

def test_patience_stops_after_patience_reports_without_improvement():
    history = _history({1: [0.5, 0.4, 0.41, 0.42, 0.43]})
    assert _judge("patience", history, 1, 4, patience=2) is not None  # 0.41, 0.42 > 0.4
    assert _judge("patience", history, 1, 4, patience=3) is None  # 0.4 is in the last three
    assert _judge("patience", history, 1, 2, patience=2) is None  # too few reports


def test_patience_min_delta_asks_for_a_real_improvement():
    history = _history({1: [0.5, 0.49, 0.485]})
    assert _judge("patience", history, 1, 3, patience=2) is None
    rule = _judge("patience", history, 1, 3, patience=2, min_delta=0.02)
    assert rule.startswith("patience: no improvement over 0.5 by more than 0.02")


@pytest.mark.parametrize(("option", "value"), [("patience", 0), ("min_delta", -0.1)])
def test_patience_refuses_bad_options(option, value):
    with pytest.raises(PrunerError, match=f"patience pruner: {option}"):
        medtune.create("pruner", "patience", **{option: value})


# -- asha ---------------------------------------------------------------------------------------

def test_asha_rungs_follow_min_resource_and_eta():
    pruner = AshaPruner(min_resource=2, eta=3)
    assert [pruner.rung(s) for s in (1, 2, 5, 6, 17, 18, 54)] == [None, 0, 0, 1, 1, 2, 3]


def test_asha_promotes_the_top_fraction_of_a_rung_without_waiting():
    # to minimise; rungs at 1, 3, 9; three trials reached rung 0 before trial 9
    others = {1: [0.5, 0.4, 0.3], 2: [0.6], 3: [0.7]}
    assert _judge("asha", _history({**others, 9: [0.4]}), 9, 1) is None  # best of 4: top 1
    assert _judge("asha", _history({**others, 9: [0.55]}), 9, 1) is not None
    # fewer than eta values at a rung: promoted, nobody waits
    assert _judge("asha", _history({1: [0.5], 9: [0.9]}), 9, 1) is None
    # judged only at its first report at a rung: step 2 is still rung 0
    assert _judge("asha", _history({**others, 9: [0.4, 0.9]}), 9, 2) is None


def test_asha_judges_at_the_rung_reached_with_the_value_there():
    curves = {1: [0.9, 0.9, 0.2], 2: [0.9, 0.9, 0.3], 3: [0.9, 0.9, 0.4]}
    history = _history({**curves, 9: [0.1, 0.1, 0.5]})
    rule = _judge("asha", history, 9, 3)
    assert rule == ("asha: value 0.5 at rung 1 (resource 3, step 3) is not in the best 1 of "
                    "the 4 values recorded there")


@pytest.mark.parametrize(("option", "value"), [("eta", 1), ("min_resource", 0), ("eta", 2.5)])
def test_asha_refuses_bad_options(option, value):
    with pytest.raises(PrunerError, match=f"asha pruner: {option}"):
        medtune.create("pruner", "asha", **{option: value})


# -- wilcoxon -----------------------------------------------------------------------------------

def _cases(history: History, trial: int, step: int, scores: list[float]) -> None:
    history.record(trial, step, sum(scores) / len(scores), scores)


def test_wilcoxon_stops_a_trial_significantly_worse_case_by_case():
    history = History()
    best = [0.80, 0.70, 0.90, 0.85, 0.75, 0.60, 0.95, 0.82, 0.78, 0.88]
    _cases(history, 1, 1, best)
    _cases(history, 9, 1, [s - 0.05 - 0.001 * i for i, s in enumerate(best)])
    rule = _judge("wilcoxon", history, 9, 1, "maximize")
    assert rule.startswith("wilcoxon: per-case scores at step 1 worse than the best trial 1's")
    assert "over 10 cases, p = 0.000977 < 0.1" in rule


def test_wilcoxon_goes_on_when_the_difference_is_not_significant():
    history = History()
    best = [0.80, 0.70, 0.90, 0.85, 0.75, 0.60, 0.95, 0.82, 0.78, 0.88]
    mixed = [s + d for s, d in zip(best, [-0.1, 0.09, -0.08, 0.07, -0.06, 0.05, -0.04, 0.03,
                                          -0.02, 0.0])]
    _cases(history, 1, 1, best)
    _cases(history, 9, 1, mixed)
    assert _judge("wilcoxon", history, 9, 1, "maximize") is None
    # the best trial at the step is never stopped; nor a report without scores
    assert _judge("wilcoxon", history, 1, 1, "maximize") is None
    history.record(8, 1, 0.1)
    assert _judge("wilcoxon", history, 8, 1, "maximize") is None


def test_wilcoxon_pairs_only_equal_numbers_of_cases():
    history = History()
    _cases(history, 1, 1, [0.9] * 10)
    _cases(history, 9, 1, [0.1] * 9)
    assert _judge("wilcoxon", history, 9, 1, "maximize") is None


@pytest.mark.parametrize("value", [0, 1.5])
def test_wilcoxon_refuses_a_bad_threshold(value):
    with pytest.raises(PrunerError, match="wilcoxon pruner: p_threshold must be in"):
        medtune.create("pruner", "wilcoxon", p_threshold=value)
