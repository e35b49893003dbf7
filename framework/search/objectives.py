"""A study's objectives and constraints: which named values it optimises and which way, which
values must stay within bounds, and the Pareto front and hypervolume of the results.

One :class:`Objectives` is the single owner of these rules: the configuration builds it
(``[study] objectives``, ``directions``, ``constraints``), the searcher applies its directions
(:class:`medtune.search.Searcher`), the study loop reads each trial's values through it, and
the status, tables and report draw the front with it::

    objectives = Objectives.parse(["dice", "hd95"], ["maximize", "minimize"],
                                  ["params <= 2e6"])
    named = objectives.values(trial.value, trial.metrics)   # {"dice": ..., "hd95": ..., ...}
    objectives.vector(named), objectives.feasible(named), objectives.violation(named)

Values are read by name from what the objective returned: ``"value"`` is the number it
returned (or the mapping's ``"value"``), other names are its metrics. Scores are the values
turned to minimisation (negated for ``"maximize"``), as everywhere in medtune.

A constraint is ``"name <= bound"``, ``"name >= bound"``, ``"name < bound"`` or
``"name > bound"``; a trial is feasible when it meets every one. Infeasible trials are kept
and shown, never on the Pareto front (nor the best of a single-objective study's front).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtune.errors import MedtuneError

#: What a study does with each objective's values.
DIRECTIONS = ("minimize", "maximize")

#: ``name <op> number``: the one grammar of a constraint.
_CONSTRAINT = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(<=|>=|<|>)\s*"
    r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
)
OPERATORS = ("<=", ">=", "<", ">")


class ObjectivesError(MedtuneError, ValueError):
    """Objectives, directions or constraints are invalid, or a trial lacks a named value."""


@dataclass(frozen=True)
class Constraint:
    """``name operator bound`` on a value the objective returns."""

    name: str
    operator: str
    bound: float

    @classmethod
    def parse(cls, text: Any) -> Constraint:
        """``"params <= 2e6"`` as a constraint; :class:`ObjectivesError` says the form."""
        match = _CONSTRAINT.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ObjectivesError(
                f"constraint {text!r} does not parse; write \"name <= number\" (or >=, <, >), "
                "e.g. \"params <= 2e6\"")
        bound = float(match[3])
        if not math.isfinite(bound):
            raise ObjectivesError(f"constraint {text!r}: the bound must be a finite number")
        return cls(match[1], match[2], bound)

    @property
    def text(self) -> str:
        return f"{self.name} {self.operator} {self.bound:g}"

    def slack(self, value: float) -> float:
        """How far ``value`` is inside the bound (negative: outside)."""
        return self.bound - value if self.operator in ("<=", "<") else value - self.bound

    def satisfied(self, value: float) -> bool:
        slack = self.slack(value)
        return slack > 0 if self.operator in ("<", ">") else slack >= 0

    def violation(self, value: float) -> float:
        """How far ``value`` is outside the bound (0 when satisfied)."""
        return 0.0 if self.satisfied(value) else max(-self.slack(value), 0.0) or math.ulp(1.0)


@dataclass(frozen=True)
class Objectives:
    """The named values a study optimises (``names``, each with its direction) and the
    constraints its results must meet. The first name is the trial's ``value`` in the store
    (what single-objective code reads)."""

    names: tuple[str, ...] = ("value",)
    directions: tuple[str, ...] = ("minimize",)
    constraints: tuple[Constraint, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            raise ObjectivesError("objectives: name at least one value to optimise")
        if len(self.names) != len(self.directions):
            raise ObjectivesError(
                f"directions has {len(self.directions)} entries but objectives has "
                f"{len(self.names)}; give one direction per objective")
        if "value" in self.names[1:]:
            raise ObjectivesError("objectives: \"value\" is the trial's value, the first "
                                  "objective's; name it first or not at all")
        if len(set(self.names)) != len(self.names):
            raise ObjectivesError(f"objectives {list(self.names)} names a value twice")
        for direction in self.directions:
            if direction not in DIRECTIONS:
                raise ObjectivesError(f"directions: expected \"minimize\" or \"maximize\", got "
                                      f"{direction!r}")

    @classmethod
    def parse(cls, names: Sequence[str] | None, directions: Sequence[str],
              constraints: Sequence[str] = ()) -> Objectives:
        """From the configuration's lists (``names`` None: the one ``"value"``)."""
        names = ("value",) if names is None else tuple(names)
        if not all(isinstance(n, str) and n for n in names):
            raise ObjectivesError(f"objectives: expected names of returned values, got "
                                  f"{list(names)!r}")
        return cls(names, tuple(directions), tuple(Constraint.parse(c) for c in constraints))

    @property
    def multi(self) -> bool:
        """True for several objectives (a Pareto front rather than a best trial)."""
        return len(self.names) > 1

    @property
    def required(self) -> tuple[str, ...]:
        """Every name a trial must return: the objectives, then the constrained values."""
        return tuple(dict.fromkeys([*self.names, *(c.name for c in self.constraints)]))

    def values(self, value: float | None, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The required values of a trial that returned ``value`` and ``metrics``.

        Raises :class:`ObjectivesError` naming the values it did not return."""
        returned = {**metrics, "value": value}
        missing = [n for n in self.required if not isinstance(returned.get(n), (int, float))
                   or isinstance(returned.get(n), bool)]
        if missing:
            have = ", ".join(sorted(k for k, v in returned.items() if v is not None)) or "nothing"
            raise ObjectivesError(
                f"the objective returned no {', '.join(map(repr, missing))} (it returned: "
                f"{have}); [study] objectives and constraints name values the objective must "
                "return in its mapping")
        named = {n: float(returned[n]) for n in self.required}
        bad = [n for n, v in named.items() if not math.isfinite(v)]
        if bad:
            shown = ", ".join(f"{n} = {named[n]}" for n in bad)
            raise ObjectivesError(f"the objective returned {shown}: a value that is not finite "
                                  "counts as a failed trial")
        return named

    def vector(self, named: Mapping[str, float]) -> tuple[float, ...]:
        """The objectives' values, in order."""
        return tuple(float(named[n]) for n in self.names)

    def scores(self, vector: Sequence[float]) -> tuple[float, ...]:
        """Values as scores to minimise (negated for ``"maximize"``)."""
        return tuple(v if d == "minimize" else -v for v, d in zip(vector, self.directions))

    def constraint_values(self, named: Mapping[str, float]) -> tuple[float, ...]:
        return tuple(float(named[c.name]) for c in self.constraints)

    def feasible(self, named: Mapping[str, float]) -> bool:
        return all(c.satisfied(named[c.name]) for c in self.constraints)

    def violation(self, named: Mapping[str, float]) -> float:
        """Total violation (0 for a feasible trial): the sum of each bound's overshoot."""
        return sum(c.violation(named[c.name]) for c in self.constraints)

    def readable(self, trials: Iterable[Any]) -> list[tuple[Any, dict[str, float]]]:
        """``(trial, named values)`` of each of ``trials`` (with ``value`` and ``metrics``)
        that returned every objective and constrained value, in the order given."""
        found = []
        for trial in trials:
            try:
                found.append((trial, self.values(trial.value, trial.metrics)))
            except ObjectivesError:
                continue
        return found

    def front(self, trials: Iterable[Any]) -> list[Any]:
        """The feasible, non-dominated ones among ``trials`` (COMPLETE ones, with ``value``
        and ``metrics``), in the order given; trials lacking a value are left out."""
        candidates, scores = [], []
        for trial, named in self.readable(trials):
            if self.feasible(named):
                candidates.append(trial)
                scores.append(self.scores(self.vector(named)))
        if not candidates:
            return []
        return [candidates[i] for i in pareto_front(np.asarray(scores, dtype=float))]

    @property
    def description(self) -> str:
        """``"maximize dice, minimize hd95; params <= 2e+06"``."""
        text = ", ".join(f"{d} {n}" for n, d in zip(self.names, self.directions))
        if self.constraints:
            text += "; " + ", ".join(c.text for c in self.constraints)
        return text


# --- Pareto fronts and hypervolume (scores: minimisation) ----------------------------------


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """True when score vector ``a`` is no worse than ``b`` everywhere and better somewhere."""
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated_sort(scores: np.ndarray) -> list[list[int]]:
    """Indices of ``scores`` [n, m] by front: the non-dominated first, then those dominated
    only by the first front, and so on (Deb et al. 2002, fast non-dominated sort)."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    if n == 0:
        return []
    le = np.all(scores[:, None, :] <= scores[None, :, :], axis=2)
    lt = np.any(scores[:, None, :] < scores[None, :, :], axis=2)
    dominates_matrix = le & lt  # [i, j]: i dominates j
    counts = dominates_matrix.sum(axis=0)
    fronts: list[list[int]] = []
    current = [int(i) for i in np.flatnonzero(counts == 0)]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in np.flatnonzero(dominates_matrix[i]):
                counts[j] -= 1
                if counts[j] == 0:
                    nxt.append(int(j))
        current = sorted(nxt)
    return fronts


def pareto_front(scores: np.ndarray) -> list[int]:
    """Indices of the non-dominated rows of ``scores`` [n, m] (duplicates all kept)."""
    fronts = non_dominated_sort(scores)
    return fronts[0] if fronts else []


def crowding_distance(scores: np.ndarray) -> np.ndarray:
    """Deb et al. (2002)'s crowding distance of each row of one front ``scores`` [n, m]:
    the boundary points get infinity."""
    scores = np.asarray(scores, dtype=float)
    n, m = scores.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(scores[:, k], kind="stable")
        span = scores[order[-1], k] - scores[order[0], k]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (scores[order[2:], k] - scores[order[:-2], k]) / span
    return distance


def hypervolume(scores: np.ndarray, reference: Sequence[float]) -> float:
    """The volume dominated by ``scores`` [n, m] (minimisation) and bounded by ``reference``
    [m]; points not strictly better than the reference everywhere add nothing.

    Exact: a sweep in two dimensions, otherwise slicing along the last objective (the
    hypervolume by slicing objectives of While et al. 2006), fine for the fronts of a study
    (tens of points, a few objectives).
    """
    reference = np.asarray(reference, dtype=float)
    points = np.asarray(scores, dtype=float).reshape(-1, reference.shape[0])
    points = points[np.all(points < reference, axis=1)]
    if len(points) == 0:
        return 0.0
    points = points[pareto_front(points)]
    return float(_hypervolume(np.unique(points, axis=0), reference))


def _hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    m = points.shape[1]
    if m == 1:
        return float(reference[0] - points[:, 0].min())
    if m == 2:
        order = np.argsort(points[:, 0], kind="stable")
        volume, best_y = 0.0, reference[1]
        for x, y in points[order]:
            if y < best_y:
                volume += (reference[0] - x) * (best_y - y)
                best_y = y
        return volume
    order = np.argsort(points[:, -1], kind="stable")
    points = points[order]
    volume = 0.0
    for i in range(len(points)):
        upper = points[i + 1, -1] if i + 1 < len(points) else reference[-1]
        depth = upper - points[i, -1]
        if depth > 0:
            head = points[: i + 1, :-1]
            volume += depth * _hypervolume(head[pareto_front(head)], reference[:-1])
    return volume
