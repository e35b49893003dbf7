"""Results tables shaped like a paper's: completed trials grouped by configuration keys, each
metric as mean ± standard deviation over the group (the replicates of a configuration).

A study's ``[table]`` (see :mod:`medtune.config`) names the grouping keys and the columns;
``medtune run`` prints the table at the end and the HTML report shows it.

This module also owns how user values are shown wherever medtune prints or draws them:
:func:`format_number` (numbers to significant digits), :func:`format_config` (a configuration
as ``key=value`` pairs) and :func:`verbatim` (a user's text made safe for Rich's markup, so a
choice like ``"[/x]"`` is printed as written instead of read as a closing tag).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from medtune.config import ConfigError, TableSpec, parse_config
from medtune.search.objectives import Objectives
from medtune.study.store import StudyStore, Trial, TrialState


#: Significant digits of the numbers a configuration or an objective value shows.
SIGNIFICANT_DIGITS = 4


def format_number(value: Any, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``value`` as shown to a user: a float to ``digits`` significant digits (``0.03``, not
    ``0.029999999999999995``; ``1.5e-05``), integers exactly, anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_config(config: Mapping[str, Any], digits: int = SIGNIFICANT_DIGITS) -> str:
    """A configuration as ``key=value`` pairs in key order, floats (also inside lists and
    tables) to ``digits`` significant digits: ``loss=glf, lr=0.03, width=16``."""

    def shown(value: Any) -> str:
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(shown(v) for v in value) + "]"
        return format_number(value, digits)

    return ", ".join(f"{key}={shown(config[key])}" for key in sorted(config))


def verbatim(text: Any) -> str:
    """``str(text)`` escaped for Rich's console markup: printed (in a message, a table cell or
    a title) exactly as written. Every user-supplied string on the terminal goes through it:
    study, parameter and metric names, choices, configurations, paths and messages."""
    return escape(str(text))


@dataclass(frozen=True)
class Cell:
    """One metric of one row: the mean and sample standard deviation of ``count`` values."""

    mean: float
    std: float
    count: int

    def text(self) -> str:
        """``mean ± std`` with decimals suited to the magnitude (``mean`` alone for one value)."""
        if self.count == 0:
            return "-"
        decimals = 0 if abs(self.mean) >= 1000 else 1 if abs(self.mean) >= 10 else 3
        mean = f"{self.mean:,.{decimals}f}"
        return mean if self.count == 1 else f"{mean} ± {self.std:,.{decimals}f}"


@dataclass(frozen=True)
class ResultRow:
    """A group of trials sharing the row keys' values."""

    labels: tuple[str, ...]
    cells: tuple[Cell, ...]
    trials: int


@dataclass(frozen=True)
class ResultTable:
    """What :func:`summarise` returns; ``header`` is the row keys, the columns, then ``n``."""

    title: str
    header: tuple[str, ...]
    rows: tuple[ResultRow, ...]

    def text_rows(self) -> list[list[str]]:
        """Every row as the strings a table shows, in :attr:`header` order."""
        return [[*row.labels, *(cell.text() for cell in row.cells), str(row.trials)]
                for row in self.rows]


def summarise(trials: Iterable[Trial], spec: TableSpec) -> ResultTable:
    """Group the COMPLETE ``trials`` by ``spec.rows`` (in the order groups first appear) and
    average each of ``spec.columns``: ``"value"`` is the objective's value, any other name a
    metric the objective returned. A metric a group never reported shows as ``-``."""
    groups: dict[tuple[str, ...], list[Trial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            labels = tuple(_label(trial.config.get(key)) for key in spec.rows)
            groups.setdefault(labels, []).append(trial)
    rows = []
    for labels, members in groups.items():
        cells = tuple(_cell([_metric(t, column) for t in members]) for column in spec.columns)
        rows.append(ResultRow(labels, cells, len(members)))
    return ResultTable(spec.title, (*spec.rows, *spec.columns, "n"), tuple(rows))


def study_table(store: StudyStore) -> ResultTable | None:
    """The table the study's stored configuration asks for, or None when it has no
    ``[table]`` (or was not created from a configuration)."""
    if not store.config_text.strip():
        return None
    try:
        spec = parse_config(store.config_text, f"{store.path} (stored configuration)").table
    except ConfigError:
        return None
    return summarise(store.trials(), spec) if spec is not None else None


def _metric(trial: Trial, name: str) -> float | None:
    value = trial.value if name == "value" else trial.metrics.get(name)
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _cell(values: list[float | None]) -> Cell:
    present = [v for v in values if v is not None]
    if not present:
        return Cell(math.nan, math.nan, 0)
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return Cell(statistics.fmean(present), std, len(present))


def _label(value: Any) -> str:
    return "-" if value is None else format_number(value)


def study_objectives(store: StudyStore) -> Objectives:
    """The objectives and constraints of the study's stored configuration; one ``"value"`` in
    the study's direction for a study created without one (or whose configuration no longer
    reads)."""
    if store.config_text.strip():
        try:
            return parse_config(store.config_text,
                                f"{store.path} (stored configuration)").objectives
        except ConfigError:
            pass
    return Objectives(("value",), (store.direction,))


@dataclass(frozen=True)
class FrontTable:
    """The Pareto front of a study with several objectives or constraints: the feasible
    non-dominated COMPLETE trials (by the first objective), then the infeasible ones, marked
    with the constraints they break. ``header``: trial, each objective, feasible, config."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    front: int  # how many rows are on the front
    infeasible: int  # how many COMPLETE trials are infeasible (all of them, rows or not)


def front_table(trials: Iterable[Trial], objectives: Objectives,
                max_infeasible: int = 8) -> FrontTable:
    """The :class:`FrontTable` of ``trials`` (only COMPLETE ones count); at most
    ``max_infeasible`` infeasible trials are listed (the least violating first)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    readable = objectives.readable(complete)
    values = {trial.id: named for trial, named in readable}
    front = objectives.front(complete)
    front.sort(key=lambda t: objectives.scores(objectives.vector(values[t.id]))[0])
    infeasible = sorted(((objectives.violation(named), trial, named) for trial, named in readable
                         if not objectives.feasible(named)), key=lambda item: (item[0], item[1].id))

    def row(trial: Trial, named: Mapping[str, float], feasible: str) -> tuple[str, ...]:
        return (str(trial.id), *(format_number(named[n]) for n in objectives.names), feasible,
                format_config(trial.config))

    rows = [row(t, values[t.id], "yes") for t in front]
    for _, trial, named in infeasible[:max_infeasible]:
        rows.append(row(trial, named, "no: " + ", ".join(
            f"{c.name} = {format_number(named[c.name])}, not {c.operator} {c.bound:g}"
            for c in objectives.constraints if not c.satisfied(named[c.name]))))
    title = (f"Pareto front ({objectives.description}): {len(front)} trial(s)"
             if objectives.multi else f"best feasible trial ({objectives.description})")
    return FrontTable(title, ("trial", *objectives.names, "feasible", "configuration"),
                      tuple(rows), len(front), len(infeasible))
