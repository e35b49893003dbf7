"""The layout of a study file: its tables (:data:`SCHEMA`), their version and the migrations
from older ones, and how a trial's values are written to a row and read back from one
(:func:`trial_from_row`; a row that cannot be read raises :class:`RowDamage`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from medtune.study.records import FailureReason, Trial, TrialState

#: Version of the table layout below; a file with a larger version was written by a newer
#: medtune and is refused.
SCHEMA_VERSION = 4

#: How to bring an older file up to :data:`SCHEMA_VERSION`, one step per version, each step
#: its SQL statements (all run in one transaction when the file is opened).
MIGRATIONS = {
    1: ("ALTER TABLE trials ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}'",),
    # the failure reasons timeout and interrupted: widen the CHECK of failure_reason in the
    # stored table definition, as SQLite documents for a constraint every row already meets
    2: ("PRAGMA writable_schema = ON",
        "UPDATE sqlite_master SET sql = replace(sql, '''worker_died'')', "
        "'''worker_died'', ''timeout'', ''interrupted'')') "
        "WHERE type = 'table' AND name = 'trials'",
        "PRAGMA writable_schema = RESET"),  # off, and the new definition read at once
    3: ("ALTER TABLE trials ADD COLUMN artifact TEXT",),  # trial artifacts
}
#: What the ``application`` key of the ``meta`` table holds in every study file.
APPLICATION = "medtune"

#: The tables of a new study file (see :mod:`medtune.study.store` for what they hold).
SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE trials (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    suggestion_id    INTEGER NOT NULL,  -- the searcher's id for the configuration
    config           TEXT NOT NULL,     -- JSON object
    resource         REAL,              -- budget the trial trains with (Hyperband), or NULL
    tag              TEXT NOT NULL DEFAULT '{}',  -- JSON object from the searcher
    seed             INTEGER NOT NULL,
    state            TEXT NOT NULL
        CHECK (state IN ('RUNNING', 'COMPLETE', 'PRUNED', 'FAIL', 'REQUEUED')),
    value            REAL,              -- final metric (COMPLETE, or last value when PRUNED)
    failure_reason   TEXT
        CHECK (failure_reason IN ('exception', 'nan', 'out_of_memory', 'worker_died',
                                  'timeout', 'interrupted')),
    traceback        TEXT,
    started          TEXT NOT NULL,     -- ISO 8601, UTC
    finished         TEXT,
    duration         REAL,              -- seconds the objective ran
    host             TEXT,
    worker_pid       INTEGER,
    completion_order INTEGER UNIQUE,    -- 1, 2, ... in the order results were recorded
    asked_after      INTEGER NOT NULL DEFAULT 0,  -- results recorded before it was proposed
    requeued_from    INTEGER REFERENCES trials(id),  -- the orphaned trial it re-runs
    told_value       REAL,              -- what the driver told the searcher (to replay it)
    told_failed      INTEGER,           -- 1 when the searcher was told the trial failed
    metrics          TEXT NOT NULL DEFAULT '{}',  -- JSON: further named results of the objective
    artifact         TEXT  -- folder of the files it kept, relative to the study file's folder,
                           -- or NULL: none (it wrote none, did not complete, or was not among
                           -- the best keep_best and they were removed)
);
CREATE INDEX trials_state ON trials(state);
CREATE TABLE intermediate_values (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    step     REAL NOT NULL,             -- resource level, epoch or step
    value    REAL,                      -- NULL when the reported value was NaN
    PRIMARY KEY (trial_id, step)
);
"""


#: The columns of ``trials`` that :func:`trial_from_row` reads, in its order.
COLUMNS = (
    "id, suggestion_id, config, resource, tag, seed, state, value, failure_reason,"
    " traceback, started, finished, duration, host, worker_pid, completion_order,"
    " asked_after, requeued_from, told_value, told_failed, metrics, artifact"
)


def to_json(value: Mapping[str, Any], what: str) -> str:
    """A trial's ``what`` (its config or tag) as the JSON text its column holds; ValueError
    for anything JSON cannot hold."""
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"a trial's {what} must hold only JSON values (finite numbers, strings, booleans, "
            f"None, lists, dicts): {exc}"
        ) from exc


def float_or_none(value: float | None) -> float | None:
    """``value`` as a REAL column holds it (None stays None)."""
    return None if value is None else float(value)


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a REAL column holds it; NaN and infinities become NULL."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_metric(value: float | Sequence[float]) -> float | None | list[float | None]:
    """A metric as JSON stores it: non-finite numbers become null."""
    if isinstance(value, (int, float)):
        return finite_or_none(value)
    return [finite_or_none(v) for v in value]


class RowDamage(Exception):
    """What is wrong with a trial's row, found while reading it."""


def trial_from_row(row: tuple, intermediate: list[tuple[Any, Any]]) -> Trial:
    """The trial of one row of :data:`COLUMNS` (:class:`RowDamage` when the row is damaged)."""
    (trial_id, suggestion_id, config, resource, tag, seed, state, value, reason, traceback,
     started, finished, duration, host, worker_pid, completion_order, asked_after,
     requeued_from, told_value, told_failed, metrics, artifact) = row
    try:
        state = TrialState(state)
        reason = FailureReason(reason) if reason else None
    except ValueError as exc:
        raise RowDamage(str(exc)) from None
    return Trial(
        id=trial_id,
        suggestion_id=_read(suggestion_id, "suggestion_id", int),
        config=_json_object(config, "config"),
        resource=_read(resource, "resource", float, optional=True),
        tag=_json_object(tag, "tag"),
        seed=_read(seed, "seed", int),
        state=state,
        value=_read(value, "value", float, optional=True),
        failure_reason=reason,
        traceback=_read(traceback, "traceback", str, optional=True),
        started=_date(started, "started"),
        finished=_date(finished, "finished") if finished else None,
        duration=_read(duration, "duration", float, optional=True),
        host=_read(host, "host", str, optional=True),
        worker_pid=_read(worker_pid, "worker_pid", int, optional=True),
        completion_order=_read(completion_order, "completion_order", int, optional=True),
        asked_after=_read(asked_after, "asked_after", int),
        requeued_from=_read(requeued_from, "requeued_from", int, optional=True),
        told_value=_read(told_value, "told_value", float, optional=True),
        told_failed=None if told_failed is None else bool(_read(told_failed, "told_failed", int)),
        intermediate={_read(step, "intermediate step", float):
                      _metric_number(v, f"intermediate value at step {step!r}")
                      for step, v in intermediate},
        metrics={name: ([_metric_number(x, f"metrics {name!r}") for x in v]
                        if isinstance(v, list) else _metric_number(v, f"metrics {name!r}"))
                 for name, v in _json_object(metrics, "metrics").items()},
        artifact=_read(artifact, "artifact", str, optional=True),
    )


def _read(value: Any, column: str, kind: type, *, optional: bool = False) -> Any:
    """``value`` as SQLite returned it, checked to be of ``kind`` (a ``float`` column may hold
    an integer), or ``None`` where the column allows it (``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, kind) or (kind is float and isinstance(value, int)):
        return value
    raise RowDamage(f"{column} is {value!r}, not {'text' if kind is str else 'a number'}")


def _metric_number(value: Any, what: str) -> float:
    """A stored metric number; JSON null is the NaN that was recorded."""
    return math.nan if value is None else _read(value, what, float)


def _json_object(text: Any, column: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise RowDamage(f"{column} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RowDamage(f"{column} is not a JSON object")
    return value


def _date(text: Any, column: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise RowDamage(f"{column} is {text!r}, not an ISO 8601 date") from None
