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

Several objectives and constraints (:class:`medtune.search.objectives.Objectives`, the
``objectives`` option): a searcher that declares :attr:`Searcher.multi_objective` is told a
sequence of values, one per objective, and scores them as a vector (each negated for
``"maximize"``); one that does not refuses a study with several objectives. With
constraints, ``tell`` also gets the constrained values (``constraint_values``), which
:meth:`Searcher._observe_constraints` hands to searchers that model them; the best result
(:attr:`Searcher.best`) is then the best feasible one.

Reproducibility: a searcher's suggestions are a deterministic function of its seed and of the
sequence of calls it received (asks, and tells with their values), so a resumed study that
replays the same asks and tells, in the same order, gets the same suggestions back.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from medtune.errors import MedtuneError
from medtune.search.objectives import DIRECTIONS, Objectives
from medtune.search.space import SearchSpace

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
        direction: ``"minimize"`` (default) or ``"maximize"`` the told values; with
            ``objectives``, the first objective's direction (None: take it from there).
        objectives: the study's objectives and constraints (None: one value, no constraint).
        on_failure: ``"exclude"`` or ``"penalize"`` failed trials (see the module docstring).
        penalty: the value a failed trial counts as under ``"penalize"``; None for the worst
            value told so far (or a score worse than any, before the first result).
        max_trials: stop proposing after this many suggestions (None: no limit).

    Raises:
        SearcherError: an argument is invalid; the message names the searcher.
    """

    name: ClassVar[str] = "searcher"
    #: True for a searcher that optimises several objectives at once (told value vectors).
    multi_objective: ClassVar[bool] = False

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        seed: int = 0,
        direction: str | None = None,
        objectives: Objectives | None = None,
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
        if objectives is not None:
            if not isinstance(objectives, Objectives):
                raise SearcherError(f"{self.name}: objectives must be a medtune.search."
                                    f"objectives.Objectives or None, got {objectives!r}")
            if direction is not None and direction != objectives.directions[0]:
                raise SearcherError(
                    f"{self.name}: direction {direction!r} disagrees with the first objective's "
                    f"({objectives.directions[0]!r}); leave direction out")
            direction = objectives.directions[0]
            if objectives.multi and not self.multi_objective:
                raise SearcherError(
                    f"{self.name}: optimises one objective, but the study has "
                    f"{len(objectives.names)} ({', '.join(objectives.names)}); use a searcher "
                    f"that handles several: {', '.join(MULTI_OBJECTIVE_SEARCHERS)}")
            if objectives.multi and penalty is not None:
                raise SearcherError(
                    f"{self.name}: penalty is one value, but the study has several objectives; "
                    "leave penalty out (a failure counts as the worst value told per objective)")
        direction = "minimize" if direction is None else direction
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
        self.objectives = objectives if objectives is not None else Objectives(
            ("value",), (direction,))
        self.on_failure = on_failure
        self.penalty = None if penalty is None else float(penalty)
        self.max_trials = None if max_trials is None else int(max_trials)
        self.rng = np.random.default_rng(self.seed)
        self._next_id = 0
        self._pending: dict[int, Suggestion] = {}
        self._worst_score: Any = None  # a float, or a tuple with several objectives
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

    def tell(self, suggestion: Suggestion, value: float | Sequence[float] | None,
             failed: bool = False, constraint_values: Sequence[float] | None = None) -> None:
        """Report the outcome of ``suggestion`` (any order among pending suggestions).

        ``value`` is the objective's, in the searcher's direction (with several objectives,
        one value per objective, in order); None or NaN, or ``failed=True``, marks a failed
        trial, handled by the ``on_failure`` policy. ``constraint_values``: the values the
        study's constraints bound, in their order (None when it has none, or for a failure).
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
        multi = self.objectives.multi
        if value is not None and not failed:
            try:
                value = (tuple(float(v) for v in value)  # type: ignore[union-attr]
                         if multi else float(value))  # type: ignore[arg-type]
                if multi and len(value) != len(self.objectives.names):  # type: ignore[arg-type]
                    raise ValueError
            except (TypeError, ValueError):
                raise SearcherError(
                    f"{self.name}: the value of suggestion {asked.id} must be "
                    + (f"{len(self.objectives.names)} numbers (one per objective)" if multi
                       else "a number") + f" or None, got {value!r}"
                ) from None
        del self._pending[asked.id]
        failed = failed or value is None or any(
            math.isnan(v) for v in (value if multi else (value,)))  # type: ignore[union-attr]
        if failed:
            score = self._failure_score()
        else:
            score = self._as_score(value)  # type: ignore[arg-type]
            self._worst_score = score if self._worst_score is None else (
                tuple(map(max, score, self._worst_score)) if multi
                else max(score, self._worst_score))
            constraints = self.objectives.constraints
            if constraints:
                values = tuple(float(v) for v in (constraint_values or ()))
                if len(values) != len(constraints):
                    raise SearcherError(
                        f"{self.name}: suggestion {asked.id} needs constraint_values, one per "
                        f"constraint ({', '.join(c.text for c in constraints)}), got "
                        f"{constraint_values!r}")
                feasible = all(c.satisfied(v) for c, v in zip(constraints, values))
                self._observe_constraints(asked, values)
            else:
                feasible = True
            if (not multi and feasible and self._counts_for_best(asked)
                    and (self._best is None or score < self._best[0])):
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
        """``(config, value)`` of the best full-budget feasible result told so far (failures
        never count), or None; None with several objectives (they have a front instead)."""
        if self._best is None:
            return None
        score, config = self._best
        return dict(config), self._as_value(score)

    @property
    def shared_options(self) -> dict[str, Any]:
        """``seed``, ``direction``, ``objectives``, ``on_failure`` and ``penalty``: what a
        searcher this one delegates proposals to (Hyperband's proposer) is built with, so
        that it scores results and failures the same way."""
        return {"seed": self.seed, "direction": self.direction, "objectives": self.objectives,
                "on_failure": self.on_failure, "penalty": self.penalty}

    # -- helpers for subclasses --------------------------------------------------------------
    def _as_score(self, value: Any) -> Any:
        """A told value as a score (lower is better); a tuple of scores with several
        objectives."""
        if self.objectives.multi:
            return self.objectives.scores(value)
        return to_score(value, self.direction)

    def _as_value(self, score: Any) -> Any:
        """A score back as a value in the searcher's direction (the negation is its own
        inverse)."""
        return self._as_score(score)

    def _failure_score(self) -> Any:
        """The score a failed trial counts as: None under "exclude"; with several
        objectives, the worst told per objective."""
        if self.on_failure == "exclude":
            return None
        if self.penalty is not None:
            return self._as_score(self.penalty)
        if self._worst_score is None:
            return (math.inf,) * len(self.objectives.names) if self.objectives.multi else math.inf
        return self._worst_score

    def _counts_for_best(self, suggestion: Suggestion) -> bool:
        return suggestion.resource is None

    # -- implemented by subclasses -----------------------------------------------------------
    @abc.abstractmethod
    def _propose(self) -> Proposal | None:
        """The next proposal, or None when the searcher must wait for results."""

    def _observe(self, suggestion: Suggestion, score: Any, failed: bool) -> None:
        """A result: ``score`` (lower is better; the penalty for a failure under "penalize")
        or None for a failure under "exclude"; ``failed`` says whether the trial failed. With
        several objectives ``score`` is a tuple, one score per objective."""

    def _observe_constraints(self, suggestion: Suggestion, values: tuple[float, ...]) -> None:
        """The constrained values of a result that did not fail (called just before
        :meth:`_observe`; see ``self.objectives.constraints``); ignored by default."""

    def _exhausted(self) -> bool:
        """True when the searcher has nothing left to propose (besides max_trials)."""
        return False

    def _planned(self) -> int | None:
        """How many suggestions the search makes, when known in advance (besides
        max_trials); None by default."""
        return None


#: The built-in searchers that optimise several objectives (named in refusals).
MULTI_OBJECTIVE_SEARCHERS = ("random", "grid", "evolution", "bayes", "optuna")

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
