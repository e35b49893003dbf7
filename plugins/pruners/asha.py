"""The ``asha`` pruner: asynchronous successive halving (Li et al. 2020, see docs/search.md),
the rung rule of Hyperband (Bertrand2019, sec. 2.5.1) applied to each report as it arrives,
without a bracket barrier.

Rungs sit at the resources ``min_resource * eta**k``. A trial whose report is its first at or
past a rung's resource is judged there: it goes on when its value is among the best
``1/eta`` of the values recorded at that rung so far (itself included), and stops otherwise.
While fewer than ``eta`` trials reached the rung it goes on, so no trial ever waits for
others: workers stay busy, and early trials are promoted optimistically, as in ASHA.
"""

from __future__ import annotations

from typing import Any

from medtune.pruners import History, Pruner, number


class AshaPruner(Pruner):
    """Asynchronous successive halving (see the module docstring).

    Args:
        min_resource: the step of the first rung (> 0), e.g. 1 epoch.
        eta: the reduction factor (>= 2): a rung keeps its best ``1/eta``, and rungs are
            ``eta`` times apart, as Hyperband's ``eta``.
        **shared: the options of :class:`medtune.pruners.Pruner`.
    """

    name = "asha"

    def __init__(self, *, min_resource: float = 1, eta: int = 3, **shared: Any) -> None:
        super().__init__(**shared)
        self.min_resource = float(self._number("min_resource", min_resource, low=0,
                                               low_open=True))
        self.eta = int(self._number("eta", eta, integer=True, low=2))

    def rung(self, step: float) -> int | None:
        """The highest rung at or below ``step`` (None below the first)."""
        if step < self.min_resource:
            return None
        k = 0
        while self.min_resource * self.eta ** (k + 1) <= step:
            k += 1
        return k

    def _judge(self, trial_id: int, step: float, history: History) -> str | None:
        own = [s for s in history.trial(trial_id) if s < step]
        k = self.rung(step)
        if k is None or (own and self.rung(own[-1]) == k):
            return None  # not the first report at this rung
        resource = self.min_resource * self.eta ** k
        reached = (self._at_rung(history, t, resource) for t in history.trial_ids())
        rung_values = [value for value in reached if value is not None]
        if len(rung_values) < self.eta:
            return None
        value = history.trial(trial_id)[step]
        better = sum(self._score(v) < self._score(value) for v in rung_values)
        kept = len(rung_values) // self.eta
        if better < kept:
            return None
        return (f"{self.name}: value {number(value)} at rung {k} (resource {resource:g}, step "
                f"{step:g}) is not in the best {kept} of the {len(rung_values)} values recorded "
                "there")

    @staticmethod
    def _at_rung(history: History, trial_id: int, resource: float) -> float | None:
        """A trial's value at its first report at or past ``resource``."""
        for step, value in history.trial(trial_id).items():
            if step >= resource:
                return value
        return None
