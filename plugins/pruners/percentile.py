"""The ``percentile`` and ``median`` pruners: stop a trial whose best value so far is worse than
a percentile of the values the other trials reported at the same step (Optuna's rules of those
names, judged on every trial that reached the step, finished or not, so they never wait)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medtune.pruners import History, Pruner, number


class PercentilePruner(Pruner):
    """Stop a trial whose best value up to this step is worse than the ``percentile``-th best
    of the other trials' values at this step (25: keep the top quarter).

    Args:
        percentile: in [0, 100]; lower stops more trials.
        n_min_trials: judge only when at least this many other trials reported at this step.
        **shared: the options of :class:`medtune.pruners.Pruner`.
    """

    name = "percentile"

    def __init__(self, *, percentile: float = 25.0, n_min_trials: int = 1, **shared: Any) -> None:
        super().__init__(**shared)
        self.percentile = float(self._number("percentile", percentile, low=0, high=100))
        self.n_min_trials = int(self._number("n_min_trials", n_min_trials, integer=True, low=1))

    def _judge(self, trial_id: int, step: float, history: History) -> str | None:
        others = history.values_at(step, exclude=trial_id)
        if len(others) < self.n_min_trials:
            return None
        own = [v for s, v in history.trial(trial_id).items() if s <= step]
        best = min(own, key=self._score)
        threshold = float(np.percentile([self._score(v) for v in others.values()],
                                        self.percentile))
        if self._score(best) <= threshold:
            return None
        return (f"{self.name}: best value {number(best)} so far is worse than the "
                f"{self._what()} {number(self._value(threshold))} of {len(others)} trials at "
                f"step {step:g}")

    def _what(self) -> str:
        return f"{self.percentile:g}th-best percentile"


class MedianPruner(PercentilePruner):
    """Stop a trial whose best value up to this step is worse than the median of the other
    trials' values at this step: :class:`PercentilePruner` with percentile 50."""

    name = "median"

    def __init__(self, *, n_min_trials: int = 1, **shared: Any) -> None:
        super().__init__(percentile=50.0, n_min_trials=n_min_trials, **shared)

    def _what(self) -> str:
        return "median"
