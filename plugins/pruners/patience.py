"""The ``patience`` pruner: stop a trial that has not improved for ``patience`` reports (as
Optuna's PatientPruner, on its own rather than wrapped around another rule)."""

from __future__ import annotations

from typing import Any

from medtune.pruners import History, Pruner, number


class PatiencePruner(Pruner):
    """Stop a trial whose best value over its last ``patience`` reports is not better, by more
    than ``min_delta``, than its best value before them.

    Args:
        patience: how many reports without improvement are tolerated (>= 1).
        min_delta: how much better a value must be to count as an improvement (>= 0).
        **shared: the options of :class:`medtune.pruners.Pruner`.
    """

    name = "patience"

    def __init__(self, *, patience: int = 3, min_delta: float = 0.0, **shared: Any) -> None:
        super().__init__(**shared)
        self.patience = int(self._number("patience", patience, integer=True, low=1))
        self.min_delta = float(self._number("min_delta", min_delta, low=0))

    def _judge(self, trial_id: int, step: float, history: History) -> str | None:
        values = [v for s, v in history.trial(trial_id).items() if s <= step]
        if len(values) <= self.patience:
            return None
        before = min(values[:-self.patience], key=self._score)
        recent = min(values[-self.patience:], key=self._score)
        if self._score(recent) < self._score(before) - self.min_delta:
            return None
        return (f"{self.name}: no improvement over {number(before)} by more than "
                f"{self.min_delta:g} in the last {self.patience} reports (best {number(recent)}) "
                f"at step {step:g}")
