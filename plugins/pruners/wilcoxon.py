"""The ``wilcoxon`` pruner: compare a trial's per-case (or per-fold) scores with the best
trial's at the same step by the Wilcoxon signed-rank test, and stop it when it is significantly
worse - the paired comparison a medical validation makes (as Optuna's WilcoxonPruner, which
pairs evaluation instances the same way)."""

from __future__ import annotations

import math
import warnings
from typing import Any

from medtune.pruners import History, Pruner, number


class WilcoxonPruner(Pruner):
    """Stop a trial whose per-case scores at a step are significantly worse (one-sided
    Wilcoxon signed-rank test, ``p < p_threshold``) than those of the trial with the best
    value at that step. Scores are paired by position, so every trial must score the same
    cases in the same order (``report(step, value, scores=per_case)``); a report without
    scores, or with another number of them than the best trial's, is not judged.

    Args:
        p_threshold: the significance level in (0, 1]; lower stops fewer trials.
        **shared: the options of :class:`medtune.pruners.Pruner`.
    """

    name = "wilcoxon"

    def __init__(self, *, p_threshold: float = 0.1, **shared: Any) -> None:
        super().__init__(**shared)
        self.p_threshold = float(self._number("p_threshold", p_threshold, low=0, high=1,
                                              low_open=True))

    def _judge(self, trial_id: int, step: float, history: History) -> str | None:
        own = history.scores_at(step, trial_id)
        if own is None:
            return None
        others = {t: v for t, v in history.values_at(step, exclude=trial_id).items()
                  if (scores := history.scores_at(step, t)) is not None and len(scores) == len(own)}
        if not others:
            return None
        best = min(others, key=lambda t: self._score(others[t]))
        if self._score(history.trial(trial_id)[step]) <= self._score(others[best]):
            return None  # it is the best at this step
        reference = history.scores_at(step, best)
        assert reference is not None
        differences = [self._score(a) - self._score(b) for a, b in zip(own, reference)]
        if not any(differences):
            return None
        from scipy.stats import wilcoxon

        with warnings.catch_warnings():  # small samples: scipy warns, the p-value stands
            warnings.simplefilter("ignore")
            p_value = float(wilcoxon(differences, alternative="greater").pvalue)
        if not math.isfinite(p_value) or p_value >= self.p_threshold:
            return None
        return (f"{self.name}: per-case scores at step {step:g} worse than the best trial "
                f"{best}'s (value {number(others[best])}) over {len(own)} cases, p = "
                f"{p_value:.3g} < {self.p_threshold:g}")
