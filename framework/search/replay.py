"""Simulated searches over a tabulated objective (Bertrand2019, sec. 2.4.3; table 2.3).

Training every model of a finite space once and recording its value makes it cheap to run a
searcher hundreds of times with different seeds: each run asks, looks the value up instead of
training, and tells. :func:`replay` counts, for each run, the draws (suggestions evaluated,
the hit included) needed to reach each goal:

- ``best``: one of the best configurations;
- ``within x %``: a value within x % of the best one (|value - best| <= x |best|);
- ``top x %``: one of the best ceil(x N) configurations (ties included);

and reports mean ± std and worst over the runs, as table 2.3 does, next to the theory of
uniform random search without replacement (:mod:`medtune.search.theory`). It also averages
the regret of Pourchot2022 eq. 4.1 after each draw: the gap between the best value of the space
and the value of the best configuration found so far, measured on held-out ``test`` values
when the table has them (the search itself only sees the ``value``).

A table holds each configuration's final value: a multi-fidelity searcher such as Hyperband
sees that value at every resource, and each of its rung evaluations counts as one draw.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtune.errors import MedtuneError
from medtune.search.searcher import DIRECTIONS, to_score
from medtune.search.space import Categorical, Ordinal, SearchSpace, SearchSpaceError
from medtune.search.theory import acceptable_count, expected_draws, std_draws


class ReplayError(MedtuneError, ValueError):
    """A tabulated objective or a replay was set up wrongly."""


@dataclass(frozen=True)
class Goal:
    """What a run must reach: ``kind`` is "best", "within" or "top"; ``fraction`` is x."""

    kind: str
    fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("best", "within", "top"):
            raise ReplayError(f"a goal kind is 'best', 'within' or 'top', got {self.kind!r}")
        if self.kind != "best" and not 0 < self.fraction <= 1:
            raise ReplayError(f"a goal fraction is in (0, 1], got {self.fraction!r}")

    @property
    def label(self) -> str:
        if self.kind == "best":
            return "Best model"
        percent = f"{100 * self.fraction:g}%"
        return f"Within {percent}" if self.kind == "within" else f"Top {percent}"


#: The rows of Bertrand2019's table 2.3.
TABLE_2_3_GOALS: tuple[Goal, ...] = (
    Goal("best"),
    Goal("within", 0.01),
    Goal("within", 0.05),
    Goal("within", 0.10),
    Goal("top", 0.01),
    Goal("top", 0.05),
    Goal("top", 0.10),
)


def _parse_cell(text: str) -> Any:
    text = text.strip()
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


class TabulatedObjective:
    """The value of every configuration of a finite space.

    Build one with :meth:`from_csv`, :meth:`from_mapping` or :meth:`from_callable`. A value
    that is None or NaN is a configuration that failed (told to searchers as a failure, and
    left out of the goals). ``test`` optionally holds held-out values for the regret.
    """

    def __init__(
        self,
        space: SearchSpace,
        values: Mapping[str, float | None],
        direction: str = "minimize",
        test: Mapping[str, float | None] | None = None,
        missing: str = "error",
    ) -> None:
        if direction not in DIRECTIONS:
            raise ReplayError(f"direction must be one of {', '.join(DIRECTIONS)}, got "
                              f"{direction!r}")
        if missing not in ("error", "fail"):
            raise ReplayError(
                f"missing must be 'error' (a configuration outside the table is an error) or "
                f"'fail' (it counts as a failed trial), got {missing!r}"
            )
        if not space.is_finite:
            raise ReplayError("a tabulated objective needs a finite space (no float parameters)")
        self.space = space
        self.direction = direction
        self.missing = missing
        self._scores: dict[str, float | None] = {}
        for key, value in values.items():
            self._scores[key] = (None if value is None or math.isnan(value)
                                 else to_score(float(value), direction))
        valid = np.array([s for s in self._scores.values() if s is not None], dtype=np.float64)
        if valid.size == 0:
            raise ReplayError("the table holds no valid value")
        self._sorted = np.sort(valid)
        self._test: dict[str, float | None] | None = None
        if test is not None:
            self._test = {
                key: None if v is None or math.isnan(v) else to_score(float(v), direction)
                for key, v in test.items()
            }

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_mapping(
        cls, space: SearchSpace, values: Mapping[Any, float | None], **options: Any
    ) -> TabulatedObjective:
        """From ``{key: value}`` where a key is :meth:`SearchSpace.key` or a config dict."""
        return cls(space, {_key(space, k): v for k, v in values.items()}, **options)

    @classmethod
    def from_callable(
        cls, space: SearchSpace, function: Callable[[dict[str, Any]], float | None], **options: Any
    ) -> TabulatedObjective:
        """By evaluating ``function(config)`` on every configuration of ``space``."""
        if not space.is_finite:
            raise ReplayError("a tabulated objective needs a finite space (no float parameters)")
        return cls(space, {space.key(c): function(c) for c in space.enumerate()}, **options)

    @classmethod
    def from_results(
        cls,
        space: SearchSpace,
        results: Iterable[tuple[Mapping[str, Any], float | None]],
        **options: Any,
    ) -> TabulatedObjective:
        """From ``(config, value)`` pairs such as a finished study's trials (a value of None is
        a failure). Repeated configurations get the mean of their valid values; a configuration
        of ``space`` that never appears counts as a failure (``missing="fail"``)."""
        collected: dict[str, list[float]] = {}
        for config, value in results:
            values = collected.setdefault(space.key(config), [])
            if value is not None and math.isfinite(value):
                values.append(float(value))
        means = {key: float(np.mean(v)) if v else None for key, v in collected.items()}
        return cls(space, means, missing="fail", **options)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        value_column: str = "value",
        space: SearchSpace | None = None,
        test_column: str | None = None,
        ignore: Iterable[str] = (),
        **options: Any,
    ) -> TabulatedObjective:
        """From a CSV file with one column per parameter and a ``value_column``.

        An empty parameter cell is an inactive parameter; an empty or "nan" value is a failed
        configuration. Without ``space``, each parameter column becomes an ordinal of its
        sorted values when they are all numbers, a categorical otherwise (no conditions).
        """
        path = Path(path)
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        if value_column not in header:
            raise ReplayError(f"{path}: no column {value_column!r}; the columns are {header}")
        skipped = {value_column, *ignore} | ({test_column} if test_column else set())
        if test_column is not None and test_column not in header:
            raise ReplayError(f"{path}: no column {test_column!r}; the columns are {header}")
        names = [name for name in header if name not in skipped]
        if not names:
            raise ReplayError(f"{path}: no parameter column besides {value_column!r}")
        configs = []
        for line, row in enumerate(rows, start=2):
            config = {n: _parse_cell(row[n]) for n in names if row[n] is not None and row[n].strip()}
            configs.append((line, config))
        if space is None:
            space = _infer_space(path, names, [c for _, c in configs])
        values: dict[str, float | None] = {}
        test: dict[str, float | None] = {}
        for (line, config), row in zip(configs, rows):
            try:
                key = space.key(config)
            except SearchSpaceError as error:
                raise ReplayError(f"{path}, line {line}: {error}") from None
            if key in values:
                raise ReplayError(f"{path}, line {line}: configuration {config} appears twice")
            values[key] = _parse_value(path, line, value_column, row[value_column])
            if test_column is not None:
                test[key] = _parse_value(path, line, test_column, row[test_column])
        return cls(space, values, test=test if test_column else None, **options)

    # -- queries ---------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Number of configurations with a valid value (N of the "top x %" goals)."""
        return int(self._sorted.size)

    @property
    def population(self) -> int:
        """Number of configurations a searcher can draw: the table's rows, failures
        included, or the whole space with ``missing="fail"`` (N of the random-search theory)."""
        return int(self.space.size()) if self.missing == "fail" else len(self._scores)

    def score(self, config: Mapping[str, Any]) -> float | None:
        """The value of ``config`` as a score (lower is better); None for a failure."""
        key = self.space.key(config)
        if key not in self._scores:
            if self.missing == "fail":
                return None
            raise ReplayError(
                f"configuration {dict(config)} is not in the table ({len(self._scores)} "
                f"configurations for a space of {self.space.size()}); complete the table or "
                "pass missing='fail'"
            )
        return self._scores[key]

    def value(self, config: Mapping[str, Any]) -> float | None:
        """The tabulated value of ``config`` (None for a failure)."""
        score = self.score(config)
        if score is None:
            return None
        return to_score(score, self.direction)

    def threshold(self, goal: Goal) -> float:
        """The largest score that reaches ``goal``."""
        best = float(self._sorted[0])
        if goal.kind == "best":
            return best
        if goal.kind == "within":
            return best + goal.fraction * abs(best)
        return float(self._sorted[acceptable_count(goal.fraction, self.total) - 1])

    def acceptable(self, goal: Goal) -> int:
        """How many configurations reach ``goal`` (M of the theory)."""
        return int(np.searchsorted(self._sorted, self.threshold(goal), side="right"))

    def test_score(self, config: Mapping[str, Any]) -> float | None:
        """Held-out score of ``config`` (the value itself when the table has no test values)."""
        if self._test is None:
            return self.score(config)
        return self._test.get(self.space.key(config))

    def best_test_score(self) -> float:
        """The best held-out score of the space."""
        scores = self._scores.values() if self._test is None else self._test.values()
        return min(s for s in scores if s is not None)


def _key(space: SearchSpace, key: Any) -> str:
    if isinstance(key, Mapping):
        return space.key(key)
    if isinstance(key, str):
        try:
            return space.key(json.loads(key))
        except (ValueError, SearchSpaceError) as error:
            raise ReplayError(f"{key!r} is not the key of a configuration: {error}") from None
    raise ReplayError(f"a table key is a configuration or its key string, got {key!r}")


def _parse_value(path: Path, line: int, column: str, text: str | None) -> float | None:
    if text is None or not text.strip() or text.strip().lower() == "nan":
        return None
    try:
        return float(text)
    except ValueError:
        raise ReplayError(f"{path}, line {line}, column {column!r}: expected a number, got "
                          f"{text!r}") from None


def _infer_space(path: Path, names: Sequence[str], configs: Sequence[dict[str, Any]]) -> SearchSpace:
    parameters = []
    for name in names:
        seen: dict[Any, None] = {}
        for config in configs:
            if name not in config:
                raise ReplayError(
                    f"{path}: column {name!r} has empty cells; pass the space (with its "
                    "conditions) to read a conditional table"
                )
            seen.setdefault(config[name])
        values = list(seen)
        if all(isinstance(v, (int, float)) for v in values):
            parameters.append(Ordinal(name, sorted(values)))
        else:
            parameters.append(Categorical(name, values))
    return SearchSpace(parameters)


@dataclass
class GoalSummary:
    """Draws one searcher needed to reach one goal, over the runs (table 2.3, one cell pair).

    ``mean``/``std``/``worst`` are over the runs that reached the goal (``reached`` of them);
    ``theory_mean``/``theory_std`` are those of uniform random search without replacement.
    """

    goal: Goal
    acceptable: int
    mean: float
    std: float
    worst: float
    reached: int
    theory_mean: float
    theory_std: float


@dataclass
class ReplayReport:
    """The result of :func:`replay`."""

    searcher: str
    runs: int
    total: int
    summaries: list[GoalSummary]
    #: per goal label, the draws of each run (NaN where the goal was not reached)
    draws: dict[str, np.ndarray] = field(repr=False)
    #: mean regret (Pourchot2022 eq. 4.1) after each draw, in value units; a run that ended keeps
    #: its last regret (NaN until some run has a valid result)
    mean_regret: np.ndarray = field(repr=False)

    def summary(self, label: str) -> GoalSummary:
        """The summary of the goal labelled ``label`` (e.g. "Top 5%")."""
        for item in self.summaries:
            if item.goal.label == label:
                return item
        raise KeyError(f"no goal {label!r}; the goals are {[s.goal.label for s in self.summaries]}")

    def table(self) -> str:
        """Table 2.3 for this searcher: average ± std and worst draws per goal."""
        return format_table([self])


def format_table(reports: Sequence[ReplayReport], theory: bool = True) -> str:
    """Reports side by side, shaped like Bertrand2019's table 2.3 ("Average", "Worst" per
    searcher), with the random-search theory in a last column when ``theory``."""
    if not reports:
        raise ReplayError("format_table needs at least one report")
    header = [""]
    for report in reports:
        header += [f"{report.searcher} average", f"{report.searcher} worst"]
    if theory:
        header.append("theory (random)")
    rows = []
    for i, first in enumerate(reports[0].summaries):
        row = [first.goal.label]
        for report in reports:
            item = report.summaries[i]
            if item.reached == 0:
                row += ["not reached", "-"]
                continue
            mark = "" if item.reached == report.runs else f" ({item.reached}/{report.runs} runs)"
            row += [f"{item.mean:.0f} ± {item.std:.0f}{mark}", f"{item.worst:.0f}"]
        if theory:
            row.append(f"{first.theory_mean:.0f} ± {first.theory_std:.0f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    )


def replay(
    searcher: str,
    objective: TabulatedObjective | str | Path,
    runs: int = 100,
    seed: int = 0,
    goals: Sequence[Goal] = TABLE_2_3_GOALS,
    max_draws: int | None = None,
    **options: Any,
) -> ReplayReport:
    """Run searcher ``searcher`` (a plugin name) ``runs`` times over ``objective``.

    ``objective`` is a :class:`TabulatedObjective` or the path of a CSV file (read by
    :meth:`TabulatedObjective.from_csv` with its defaults). Run r uses seed ``seed + r``;
    ``options`` go to the searcher. A run stops when every goal is reached, when the searcher
    finishes, or after ``max_draws`` draws. Results are told in ask order, one suggestion at a
    time.
    """
    from medtune.registry import create

    if isinstance(objective, (str, Path)):
        objective = TabulatedObjective.from_csv(objective)

    if not isinstance(runs, int) or runs < 1:
        raise ReplayError(f"runs must be an integer >= 1, got {runs!r}")
    thresholds = np.array([objective.threshold(g) for g in goals])
    draws = np.full((runs, len(goals)), np.nan)
    best_test = objective.best_test_score()
    regrets: list[list[float]] = []
    for run in range(runs):
        instance = create("searcher", searcher, space=objective.space, seed=seed + run,
                          direction=objective.direction, **options)
        reached = np.zeros(len(goals), dtype=bool)
        incumbent: float | None = None
        incumbent_test = math.nan
        curve: list[float] = []
        count = 0
        while not reached.all() and (max_draws is None or count < max_draws):
            suggestion = instance.ask()
            if suggestion is None:
                if instance.finished:
                    break
                raise ReplayError(
                    f"searcher {searcher!r} proposed nothing, is not finished, and has no "
                    "pending suggestion: it cannot go on with results told one at a time"
                )
            score = objective.score(suggestion.config)
            count += 1
            if score is None:
                instance.tell(suggestion, None, failed=True)
            else:
                instance.tell(suggestion, to_score(score, objective.direction))  # its value
                newly = ~reached & (score <= thresholds)
                draws[run, newly] = count
                reached |= newly
                if incumbent is None or score < incumbent:
                    incumbent = score
                    test = objective.test_score(suggestion.config)
                    incumbent_test = math.nan if test is None else test
            curve.append(incumbent_test - best_test)
        regrets.append(curve)
    length = max(len(c) for c in regrets)
    padded = np.array([c + [c[-1] if c else math.nan] * (length - len(c)) for c in regrets])
    summaries = []
    for j, goal in enumerate(goals):
        column = draws[:, j]
        hit = column[~np.isnan(column)]
        acceptable = objective.acceptable(goal)
        summaries.append(GoalSummary(
            goal=goal,
            acceptable=acceptable,
            mean=float(hit.mean()) if hit.size else math.nan,
            std=float(hit.std()) if hit.size else math.nan,
            worst=float(hit.max()) if hit.size else math.nan,
            reached=int(hit.size),
            theory_mean=expected_draws(acceptable, objective.population),
            theory_std=std_draws(acceptable, objective.population),
        ))
    return ReplayReport(
        searcher=searcher,
        runs=runs,
        total=objective.total,
        summaries=summaries,
        draws={g.label: draws[:, j].copy() for j, g in enumerate(goals)},
        mean_regret=_nanmean(padded) if length else np.zeros(0),
    )


def _nanmean(curves: np.ndarray) -> np.ndarray:
    """Mean over runs, ignoring runs without a valid result yet (NaN where none has one)."""
    counts = np.sum(~np.isnan(curves), axis=0)
    sums = np.nansum(curves, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
