"""The ask/tell interface every searcher implements, and the bookkeeping they share.

A study loop asks for a :class:`Suggestion`, trains the configuration (for ``resource`` units
of budget, e.g. epochs, or fully when ``resource`` is None) and tells the searcher the value::

    searcher = medtune.create("searcher", "random", space=space, seed=0, direction="minimize")
    while not searcher.finished:
        suggestion = searcher.ask()
        if suggestion is None:       # waiting for results of suggestions still running
            ...                      # tell a pending result, then ask again
            continue
        searcher.tell(suggestion, train(suggestion.config, suggestion.resource))

Several suggestions may be outstanding at once, and results may be told in any order.

Reproducibility: a searcher's suggestions are a deterministic function of its seed and of the
sequence of calls it received (asks, and tells with their values), so a resumed study that
replays the same asks and tells, in the same order, gets the same suggestions back.

Failures (seed 004, sec. 2.6.3). A trial that failed (``failed=True``, a ``None`` or NaN
value) is handled by the ``on_failure`` policy: ``"exclude"`` (default) leaves the
configuration out: it is never proposed again and never counts as a result; ``"penalize"``
counts it as the value ``penalty`` (default: the worst value observed so far), which steers
model-based and local searchers away from its region, at the cost of valid neighbours.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from medtune.errors import MedtuneError
from medtune.search.space import SearchSpace

DIRECTIONS = ("minimize", "maximize")
FAILURE_POLICIES = ("exclude", "penalize")


class SearcherError(MedtuneError, ValueError):
    """A searcher was built with invalid options or told something it did not ask."""


@dataclass
class Suggestion:
    """One configuration to evaluate.

    Attributes:
        config: parameter values (inactive conditional parameters are absent).
        resource: training budget (e.g. epochs) for multi-fidelity searchers such as
            Hyperband; None means a full training.
        tag: the searcher's bookkeeping (e.g. Hyperband's bracket and rung), JSON-serialisable.
        id: unique among this searcher's suggestions, assigned in ask order from 0.
    """

    config: dict[str, Any]
    resource: float | None
    tag: dict[str, Any]
    id: int


@dataclass
class Proposal:
    """What a searcher's :meth:`Searcher._propose` returns; :meth:`Searcher.ask` assigns the id."""

    config: dict[str, Any]
    resource: float | None = None
    tag: dict[str, Any] = field(default_factory=dict)


class Searcher(abc.ABC):
    """Base class of searchers: ids, pending suggestions, direction and failure policy.

    Scores: internally every searcher minimises a *score*, the told value for
    ``direction="minimize"`` and its negation for ``"maximize"``. A subclass implements
    :meth:`_propose` (the next proposal, or None when it must wait) and :meth:`_observe`
    (a result as a score, or None for a failure left out under ``on_failure="exclude"``),
    and may override :meth:`_exhausted`.

    Args:
        space: the search space (a :class:`SearchSpace` or its TOML table).
        seed: seed of the searcher's random generator.
        direction: ``"minimize"`` or ``"maximize"`` the told values.
        on_failure: ``"exclude"`` or ``"penalize"`` failed trials (see the module docstring).
        penalty: the value a failed trial counts as under ``"penalize"``; None for the worst
            value observed so far (or a value worse than any, before the first result).
        max_trials: stop proposing after this many suggestions (None: no limit).
    """

    name: ClassVar[str] = "searcher"

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        seed: int = 0,
        direction: str = "minimize",
        on_failure: str = "exclude",
        penalty: float | None = None,
        max_trials: int | None = None,
    ) -> None:
        if isinstance(space, Mapping):
            space = SearchSpace.from_dict(space)
        if not isinstance(space, SearchSpace):
            raise SearcherError(
                f"{self.name}: space must be a SearchSpace or its TOML table, got {space!r}"
            )
        if direction not in DIRECTIONS:
            raise SearcherError(
                f"{self.name}: direction must be 'minimize' or 'maximize', got {direction!r}"
            )
        if on_failure not in FAILURE_POLICIES:
            raise SearcherError(
                f"{self.name}: on_failure must be 'exclude' (leave failed configurations out) "
                f"or 'penalize' (count them as the penalty value), got {on_failure!r}"
            )
        if penalty is not None and not (isinstance(penalty, (int, float)) and not math.isnan(penalty)):
            raise SearcherError(f"{self.name}: penalty must be a number, got {penalty!r}")
        if max_trials is not None and (
            not isinstance(max_trials, (int, np.integer)) or isinstance(max_trials, bool)
            or max_trials < 0
        ):
            raise SearcherError(
                f"{self.name}: max_trials must be an integer >= 0 or None, got {max_trials!r}"
            )
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise SearcherError(f"{self.name}: seed must be an integer, got {seed!r}")
        self.space = space
        self.seed = int(seed)
        self.direction = direction
        self.on_failure = on_failure
        self.penalty = None if penalty is None else float(penalty)
        self.max_trials = None if max_trials is None else int(max_trials)
        self.rng = np.random.default_rng(self.seed)
        self._next_id = 0
        self._pending: dict[int, Suggestion] = {}
        self._worst_score: float | None = None
        self._best: tuple[float, dict[str, Any]] | None = None

    # -- the interface ---------------------------------------------------------------------
    def ask(self) -> Suggestion | None:
        """The next suggestion, or None when there is nothing to propose right now (check
        :attr:`finished` to know whether the search is over)."""
        if self.finished:
            return None
        proposal = self._propose()
        if proposal is None:
            return None
        suggestion = Suggestion(
            config=proposal.config, resource=proposal.resource, tag=proposal.tag, id=self._next_id
        )
        self._next_id += 1
        self._pending[suggestion.id] = suggestion
        return suggestion

    def tell(self, suggestion: Suggestion, value: float | None, failed: bool = False) -> None:
        """Report the result of ``suggestion`` (any order among pending suggestions).

        ``value`` None or NaN, or ``failed=True``, marks a failed trial, handled by the
        ``on_failure`` policy.
        """
        asked = self._pending.get(getattr(suggestion, "id", None))  # type: ignore[arg-type]
        if asked is None:
            raise SearcherError(
                f"{self.name}: suggestion {getattr(suggestion, 'id', suggestion)!r} is not "
                "pending: it was not asked from this searcher or was already told (to resume, "
                "replay the asks and tells in their original order)"
            )
        if asked.config != suggestion.config or asked.resource != suggestion.resource:
            raise SearcherError(
                f"{self.name}: suggestion {asked.id} was asked with config {asked.config!r} "
                f"and resource {asked.resource!r}, but told with {suggestion.config!r} and "
                f"{suggestion.resource!r}"
            )
        if value is not None and not failed:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise SearcherError(
                    f"{self.name}: the value of suggestion {asked.id} must be a number or "
                    f"None, got {value!r}"
                ) from None
        del self._pending[asked.id]
        failed = failed or value is None or math.isnan(value)
        if failed:
            score = self._failure_score()
        else:
            score = value if self.direction == "minimize" else -value
            if self._worst_score is None or score > self._worst_score:
                self._worst_score = score
            if self._counts_for_best(asked) and (self._best is None or score < self._best[0]):
                self._best = (score, dict(asked.config))
        self._observe(asked, score, failed)

    @property
    def finished(self) -> bool:
        """True when no suggestion will ever be proposed again (results of suggestions already
        asked may still be told)."""
        if self.max_trials is not None and self._next_id >= self.max_trials:
            return True
        return self._exhausted()

    @property
    def planned_trials(self) -> int | None:
        """How many suggestions this searcher makes in all, when that is known before the
        search (a grid's size, Hyperband's brackets times iterations, ``max_trials``); None
        when it depends on the results or has no end. A study shows it as its progress bar's
        total; failures and a finite space may end a search before it."""
        planned = self._planned()
        if self.max_trials is None:
            return planned
        return self.max_trials if planned is None else min(planned, self.max_trials)

    @property
    def pending(self) -> list[Suggestion]:
        """Suggestions asked and not told yet, in ask order."""
        return list(self._pending.values())

    @property
    def asked(self) -> int:
        """Number of suggestions asked so far."""
        return self._next_id

    @property
    def best(self) -> tuple[dict[str, Any], float] | None:
        """``(config, value)`` of the best full-budget result told so far, or None."""
        if self._best is None:
            return None
        score, config = self._best
        return dict(config), (score if self.direction == "minimize" else -score)

    # -- helpers for subclasses --------------------------------------------------------------
    def _failure_score(self) -> float | None:
        """The score a failed trial counts as: None under "exclude"."""
        if self.on_failure == "exclude":
            return None
        if self.penalty is not None:
            return self.penalty if self.direction == "minimize" else -self.penalty
        return math.inf if self._worst_score is None else self._worst_score

    def _counts_for_best(self, suggestion: Suggestion) -> bool:
        return suggestion.resource is None

    # -- implemented by subclasses -----------------------------------------------------------
    @abc.abstractmethod
    def _propose(self) -> Proposal | None:
        """The next proposal, or None when the searcher must wait for results."""

    def _observe(self, suggestion: Suggestion, score: float | None, failed: bool) -> None:
        """A result: ``score`` (lower is better; the penalty for a failure under "penalize")
        or None for a failure under "exclude"; ``failed`` says whether the trial failed."""

    def _exhausted(self) -> bool:
        """True when the searcher has nothing left to propose (besides max_trials)."""
        return False

    def _planned(self) -> int | None:
        """How many suggestions the search makes, when known in advance (besides
        max_trials); None by default."""
        return None
