"""The searcher contract: the ask/tell interface every searcher implements, built in or not.

A study loop asks for a :class:`Suggestion`, trains its configuration (for ``resource`` units
of budget, e.g. epochs, or fully when ``resource`` is None) and tells the searcher the value::

    searcher = medtune.create("searcher", "random", space=space, seed=0, direction="maximize")
    while not searcher.finished:
        suggestion = searcher.ask()
        if suggestion is None:       # waiting for results of suggestions still running
            ...                      # tell a pending result, then ask again
            continue
        searcher.tell(suggestion, train(suggestion.config, suggestion.resource))

Several suggestions may be outstanding at once, and results may be told in any order. A
searcher is told outcomes as they are: the objective's value, or a failure (``failed=True``,
None or NaN). :meth:`Searcher.tell` is the one place that applies a study's direction (every
searcher minimises a *score*: the value, negated for ``"maximize"``) and its failure policy
(``"exclude"`` leaves a failed configuration out; ``"penalize"`` counts it as ``penalty``, by
default the worst score told so far; Bertrand2019, sec. 2.6.3, and docs/search.md weigh the
two); the study runner and the replays only report outcomes.

Reproducibility: a searcher's suggestions are a deterministic function of its seed and of the
sequence of calls it received (asks, and tells with their values), so a resumed study that
replays the same asks and tells, in the same order, gets the same suggestions back.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Mapping
from numbers import Real
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from medtune.errors import MedtuneError
from medtune.search.space import SearchSpace

#: What a study does with its objective's values.
DIRECTIONS = ("minimize", "maximize")
#: What a searcher makes of a failed trial (see the module docstring).
FAILURE_POLICIES = ("exclude", "penalize")


class SearcherError(MedtuneError, ValueError):
    """A searcher was built with invalid options or told something it did not ask."""


def to_score(value: float, direction: str) -> float:
    """``value`` as a score to minimise: itself for ``"minimize"``, negated for ``"maximize"``.

    The negation is its own inverse: a score goes back to a value the same way.
    """
    return value if direction == "minimize" else -value


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

    A subclass takes its own options as keyword arguments and passes the shared ones on
    (``def __init__(self, space, *, my_option=1, **shared): super().__init__(space,
    **shared)``); it implements :meth:`_propose` (the next proposal, or None when it must wait)
    and :meth:`_observe` (a result as a score, lower is better), and may override
    :meth:`_exhausted` and :meth:`_planned`. It never looks at the direction itself:
    :meth:`_as_score` and :meth:`_as_value` convert.

    Args:
        space: the search space (a :class:`SearchSpace` or its TOML table).
        seed: seed of the searcher's random generator (:attr:`rng`).
        direction: ``"minimize"`` or ``"maximize"`` the told values.
        on_failure: ``"exclude"`` or ``"penalize"`` failed trials (see the module docstring).
        penalty: the value a failed trial counts as under ``"penalize"``; None for the worst
            value told so far (or a score worse than any, before the first result).
        max_trials: stop proposing after this many suggestions (None: no limit).

    Raises:
        SearcherError: an argument is invalid; the message names the searcher.
    """

    name: ClassVar[str] = "searcher"

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
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
            raise SearcherError(f"{self.name}: direction must be {_either(DIRECTIONS)}, got "
                                f"{direction!r}")
        if on_failure not in FAILURE_POLICIES:
            raise SearcherError(
                f"{self.name}: on_failure must be {_either(FAILURE_POLICIES)} (leave failed "
                f"configurations out, or count them as the penalty value), got {on_failure!r}"
            )
        if penalty is not None and (isinstance(penalty, bool) or not isinstance(penalty, Real)
                                    or not math.isfinite(penalty)):
            raise SearcherError(f"{self.name}: penalty must be a finite number or None, got "
                                f"{penalty!r}")
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
        """Report the outcome of ``suggestion`` (any order among pending suggestions).

        ``value`` is the objective's, in the searcher's direction; None or NaN, or
        ``failed=True``, marks a failed trial, handled by the ``on_failure`` policy.
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
            score = self._as_score(value)  # type: ignore[arg-type]
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
        """``(config, value)`` of the best full-budget result told so far (failures never
        count), or None."""
        if self._best is None:
            return None
        score, config = self._best
        return dict(config), self._as_value(score)

    @property
    def shared_options(self) -> dict[str, Any]:
        """``seed``, ``direction``, ``on_failure`` and ``penalty``: what a searcher this one
        delegates proposals to (Hyperband's proposer) is built with, so that it scores
        results and failures the same way."""
        return {"seed": self.seed, "direction": self.direction, "on_failure": self.on_failure,
                "penalty": self.penalty}

    # -- helpers for subclasses --------------------------------------------------------------
    def _as_score(self, value: float) -> float:
        """A told value as a score (lower is better)."""
        return to_score(value, self.direction)

    def _as_value(self, score: float) -> float:
        """A score back as a value in the searcher's direction."""
        return to_score(score, self.direction)

    def _failure_score(self) -> float | None:
        """The score a failed trial counts as: None under "exclude"."""
        if self.on_failure == "exclude":
            return None
        if self.penalty is not None:
            return self._as_score(self.penalty)
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


#: The names of the arguments every searcher takes (the keyword arguments of
#: :class:`Searcher`).
SHARED_OPTIONS = frozenset(
    name for name, parameter in inspect.signature(Searcher.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` split into the arguments every searcher takes (:data:`SHARED_OPTIONS`) and
    the rest, for a searcher that passes its unknown options on to another one."""
    shared = {k: v for k, v in options.items() if k in SHARED_OPTIONS}
    return shared, {k: v for k, v in options.items() if k not in SHARED_OPTIONS}


def _either(choices: tuple[str, ...]) -> str:
    return " or ".join(map(repr, choices))
