"""The pruner contract: early stopping of trials from their intermediate values, for any searcher.

An objective calls ``report(step, value)`` (or ``report(step, value, scores=[...])`` with the
per-case or per-fold scores behind ``value``) as it trains. With a pruner, each report goes to
the study's driver, which alone holds every trial's reports (:class:`History`): it asks
:meth:`Pruner.should_prune` and answers the worker before the objective goes on. A rule that
says stop makes that ``report`` call raise :class:`~medtune.study.executors.TrialPruned` inside
the objective; the trial is recorded PRUNED with the step and the rule::

    pruner = medtune.create("pruner", "median", direction="maximize", n_startup_trials=5)
    rule = pruner.should_prune(trial_id, step, value, history)   # None: go on; else why not

The reported value is one number in the study's direction (with several objectives, the first
objective's); a pruner compares *scores* (the value, negated for ``"maximize"``: lower is
better), as searchers do (:func:`medtune.search.searcher.to_score`). The options every pruner
takes (:class:`Pruner`) are checked here, once: ``n_startup_trials`` (no stop before that many
trials completed), ``n_warmup_steps`` (no stop at a step below it) and ``interval`` (judge every
``interval``-th report of a trial only). A report whose value is not finite stops its trial.

Decisions see the reports received so far and never wait for other trials, so pruning keeps
process and Ray workers busy; the rules and their sources are in docs/search.md.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from typing import Any, ClassVar

from medtune.errors import MedtuneError
from medtune.search.searcher import DIRECTIONS, to_score


class PrunerError(MedtuneError, ValueError):
    """A pruner was built with invalid options."""


class History:
    """Every trial's reports as the driver received them: ``{step: value}`` per trial, the
    per-case scores of the reports that carried them, and which trials completed.

    The driver records each report before it asks the pruner, so the trial being judged is in
    it with its latest report.
    """

    def __init__(self) -> None:
        self._values: dict[int, dict[float, float]] = {}
        self._scores: dict[int, dict[float, tuple[float, ...]]] = {}
        self._completed: set[int] = set()

    @classmethod
    def from_trials(cls, trials: Iterable[Any]) -> History:
        """The history of a stored study's finished trials (what a resumed run starts from;
        per-case scores are not stored, so they start empty)."""
        history = cls()
        for trial in trials:
            if not trial.state.finished:
                continue
            for step, value in trial.intermediate.items():
                if value is not None:
                    history.record(trial.id, step, value)
            if trial.state.value == "COMPLETE":
                history.complete(trial.id)
        return history

    def record(self, trial_id: int, step: float, value: float,
               scores: Sequence[float] | None = None) -> None:
        """Trial ``trial_id`` reported ``value`` (and the per-case ``scores``) at ``step``."""
        self._values.setdefault(trial_id, {})[float(step)] = float(value)
        if scores is not None:
            self._scores.setdefault(trial_id, {})[float(step)] = tuple(map(float, scores))

    def complete(self, trial_id: int) -> None:
        """Trial ``trial_id`` completed (what ``n_startup_trials`` counts)."""
        self._completed.add(trial_id)

    @property
    def n_completed(self) -> int:
        """How many trials completed."""
        return len(self._completed)

    def trial(self, trial_id: int) -> dict[float, float]:
        """``{step: value}`` of one trial, in step order."""
        return dict(sorted(self._values.get(trial_id, {}).items()))

    def trial_ids(self) -> list[int]:
        """The trials that reported at least once."""
        return list(self._values)

    def values_at(self, step: float, exclude: int | None = None) -> dict[int, float]:
        """``{trial id: value}`` of the trials (but ``exclude``) that reported at ``step``."""
        step = float(step)
        return {t: values[step] for t, values in self._values.items()
                if t != exclude and step in values}

    def scores_at(self, step: float, trial_id: int) -> tuple[float, ...] | None:
        """The per-case scores trial ``trial_id`` reported at ``step``, if any."""
        return self._scores.get(trial_id, {}).get(float(step))


class Pruner(abc.ABC):
    """Base class of pruners: the shared options, the direction and the checks before a rule.

    A subclass takes its own options as keyword arguments and passes the shared ones on
    (``def __init__(self, *, my_option=1, **shared): super().__init__(**shared)``), checks its
    options with :meth:`_number`, and implements :meth:`_judge` on scores (lower is better).

    Args:
        direction: ``"minimize"`` or ``"maximize"`` the reported values (the study's).
        n_startup_trials: no trial is stopped before this many trials completed.
        n_warmup_steps: no trial is stopped at a step below this.
        interval: judge every ``interval``-th report of a trial (from the first past the
            warm-up), not every one.

    Raises:
        PrunerError: an option is invalid; the message names the pruner and the option.
    """

    name: ClassVar[str] = "pruner"

    def __init__(self, *, direction: str = "minimize", n_startup_trials: int = 0,
                 n_warmup_steps: float = 0, interval: int = 1) -> None:
        if direction not in DIRECTIONS:
            raise PrunerError(f"{self.name} pruner: direction must be 'minimize' or 'maximize', "
                              f"got {direction!r}")
        self.direction = direction
        self.n_startup_trials = int(self._number("n_startup_trials", n_startup_trials,
                                                 integer=True, low=0))
        self.n_warmup_steps = self._number("n_warmup_steps", n_warmup_steps, low=0)
        self.interval = int(self._number("interval", interval, integer=True, low=1))

    def should_prune(self, trial_id: int, step: float, value: float,
                     history: History) -> str | None:
        """Whether trial ``trial_id``, which just reported ``value`` at ``step`` (already in
        ``history``), should stop: None to go on, else the rule that stops it, one line
        starting with the pruner's name."""
        if not math.isfinite(value):
            return f"{self.name}: the reported value {value} is not finite"
        if step < self.n_warmup_steps or history.n_completed < self.n_startup_trials:
            return None
        judged = [s for s in history.trial(trial_id) if s >= self.n_warmup_steps and s <= step]
        if (len(judged) - 1) % self.interval:
            return None
        return self._judge(trial_id, float(step), history)

    @abc.abstractmethod
    def _judge(self, trial_id: int, step: float, history: History) -> str | None:
        """The rule's decision for the report of ``trial_id`` at ``step`` (see
        :meth:`should_prune`); compare :meth:`_score` of values, lower is better."""

    # -- helpers for subclasses --------------------------------------------------------------
    def _score(self, value: float) -> float:
        """A reported value as a score (lower is better)."""
        return to_score(value, self.direction)

    def _value(self, score: float) -> float:
        """A score back as a value in the study's direction."""
        return to_score(score, self.direction)

    def _number(self, option: str, value: Any, *, integer: bool = False, low: float | None = None,
                high: float | None = None, low_open: bool = False) -> float:
        """``value`` of ``option`` checked: a (whole) finite number within ``[low, high]``
        (``(low, high]`` with ``low_open``)."""
        kind = Integral if integer else Real
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            raise PrunerError(f"{self.name} pruner: {option} must be "
                              f"{'a whole number' if integer else 'a finite number'}, got "
                              f"{value!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            bounds = (f"{'>' if low_open else '>='} {low:g}" if high is None else
                      f"in {'(' if low_open else '['}{low:g}, {high:g}]")
            raise PrunerError(f"{self.name} pruner: {option} must be {bounds}, got {value!r}")
        return value


def number(value: float) -> str:
    """A value as rules print it."""
    return f"{value:.4g}"
