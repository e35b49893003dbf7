"""The study store: one SQLite file per study, holding its metadata and every trial.

The file is plain SQLite in WAL mode, readable with the ``sqlite3`` shell
(``sqlite3 study.db 'SELECT id, state, value FROM trials'``). Each write (a new trial, a
result with its intermediate values, a requeue) is one transaction; a lock held by another
process is waited for with a busy timeout and retried with backoff, so "database is locked"
never reaches the caller. Only the study's driver writes trials while a study runs; readers
(``medtune status``, reports) may open the file at any time.

Tables:

- ``meta(key, value)``: ``application`` (always ``medtune``), ``schema_version``, ``name``,
  ``direction`` (``minimize`` or ``maximize``), ``seed``, ``config_toml`` (the experiment's
  TOML text), ``created`` (ISO 8601, UTC) and ``medtune_version``.
- ``trials``: one row per trial; see :data:`_SCHEMA` for the columns.
- ``intermediate_values(trial_id, step, value)``: the value a trial reported at each resource
  level or step (what Hyperband compares).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from medtune.errors import MedtuneError

#: Version of the table layout below; a file with a larger version was written by a newer
#: medtune and is refused.
SCHEMA_VERSION = 2

#: How to bring an older file up to :data:`SCHEMA_VERSION`, one step per version (run in one
#: transaction when the file is opened).
_MIGRATIONS = {
    1: "ALTER TABLE trials ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}'",
}
APPLICATION = "medtune"

#: How long a write waits in total for another process's lock before giving up (seconds).
DEFAULT_LOCK_TIMEOUT = 300.0
#: SQLite's own busy timeout per attempt (seconds); attempts are retried with backoff.
_BUSY_TIMEOUT = 5.0

_T = TypeVar("_T")


class StudyStoreError(MedtuneError):
    """A study file cannot be created, opened, read or written."""


class NotAStudyError(StudyStoreError):
    """The file exists but is not a medtune study this version can open."""


class StudyLockedError(StudyStoreError):
    """Another process held the study's lock for longer than the store's lock timeout."""


class TrialState(str, Enum):
    """Where a trial stands.

    ``REQUEUED`` marks a trial that was RUNNING when its driver died: its configuration is run
    again as a new trial (whose ``requeued_from`` names it), and it is never counted.
    """

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    REQUEUED = "REQUEUED"

    @property
    def finished(self) -> bool:
        """True for the states that count as a finished trial."""
        return self in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class FailureReason(str, Enum):
    """Why a trial failed."""

    EXCEPTION = "exception"
    NAN = "nan"
    OUT_OF_MEMORY = "out_of_memory"
    WORKER_DIED = "worker_died"


FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

_SCHEMA = """
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
        CHECK (failure_reason IN ('exception', 'nan', 'out_of_memory', 'worker_died')),
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
    metrics          TEXT NOT NULL DEFAULT '{}'  -- JSON: further named results of the objective
);
CREATE INDEX trials_state ON trials(state);
CREATE TABLE intermediate_values (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    step     REAL NOT NULL,             -- resource level, epoch or step
    value    REAL,                      -- NULL when the reported value was NaN
    PRIMARY KEY (trial_id, step)
);
"""


@dataclass(frozen=True)
class Trial:
    """One row of the ``trials`` table, with its intermediate values."""

    id: int
    suggestion_id: int
    config: dict[str, Any]
    resource: float | None
    tag: dict[str, Any]
    seed: int
    state: TrialState
    value: float | None
    failure_reason: FailureReason | None
    traceback: str | None
    started: datetime
    finished: datetime | None
    duration: float | None
    host: str | None
    worker_pid: int | None
    completion_order: int | None
    asked_after: int
    requeued_from: int | None
    told_value: float | None
    told_failed: bool | None
    intermediate: dict[float, float] = field(default_factory=dict)
    metrics: dict[str, float | list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Execution:
    """Where and when an objective ran, the intermediate values it reported and the further
    named metrics it returned (besides its value).

    Executors fill this in on the worker. A field left ``None`` is unknown (a worker that died
    cannot say when it started), except ``finished``, which defaults to the time of recording.
    """

    started: datetime | None = None
    finished: datetime | None = None
    duration: float | None = None
    host: str | None = None
    worker_pid: int | None = None
    intermediate: tuple[tuple[float, float], ...] = ()
    metrics: Mapping[str, float | Sequence[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyInfo:
    """A study's metadata (the ``meta`` table)."""

    name: str
    direction: str
    seed: int
    config_text: str
    created: datetime
    schema_version: int
    medtune_version: str


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the store's timestamps)."""
    return datetime.now(timezone.utc)


class StudyStore:
    """A study file. ``StudyStore(path)`` opens an existing study; :meth:`create` makes one.

    Errors: :class:`NotAStudyError` for a file that is not a medtune study (another SQLite
    database, a damaged file, a newer schema), :class:`StudyStoreError` for a missing file,
    :class:`StudyLockedError` when another process keeps the file locked longer than
    ``lock_timeout`` seconds.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT):
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        if not self.path.is_file():
            raise StudyStoreError(
                f"no study at {self.path}: check the path, or create the study with "
                "StudyStore.create (or `medtune run CONFIG`)"
            )
        self._connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        try:
            self._retry(self._configure)
            self.info = self._read_info()
            self._retry(lambda: self._connection.execute("PRAGMA journal_mode=WAL"))
        except BaseException:
            self._connection.close()
            raise

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        direction: str = "minimize",
        seed: int = 0,
        config_text: str = "",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> StudyStore:
        """Create a new study file at ``path`` (which must not exist) and open it.

        ``name`` defaults to the file name without its suffix; ``direction`` is ``"minimize"``
        or ``"maximize"``; ``seed`` seeds the searcher and the trials; ``config_text`` is the
        experiment's TOML, kept so the study can be resumed and reported on its own.
        """
        from medtune import __version__

        path = Path(path)
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize', not {direction!r}")
        if path.exists():
            raise StudyStoreError(
                f"{path} already exists: resume that study (`medtune resume {path}`) or choose "
                "another file"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "application": APPLICATION,
            "schema_version": str(SCHEMA_VERSION),
            "name": name if name is not None else path.stem,
            "direction": direction,
            "seed": str(int(seed)),
            "config_toml": config_text,
            "created": utc_now().isoformat(),
            "medtune_version": __version__,
        }
        connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            connection.execute("COMMIT")
        except BaseException:
            connection.close()
            path.unlink(missing_ok=True)
            raise
        connection.close()
        return cls(path, lock_timeout=lock_timeout)

    # ----------------------------------------------------------------------------- plumbing

    def _configure(self) -> None:
        self._connection.execute("PRAGMA foreign_keys=ON")
        # WAL with FULL sync: a committed result survives a killed driver and a power cut.
        self._connection.execute("PRAGMA synchronous=FULL")

    def _retry(self, operation: Callable[[], _T]) -> _T:
        """Run ``operation``, retrying with exponential backoff while the file is locked."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc):
                    raise self._wrap(exc) from exc
                if time.monotonic() >= deadline:
                    raise StudyLockedError(
                        f"{self.path} stayed locked by another process for more than "
                        f"{self.lock_timeout:.0f} s: find the process that holds it "
                        f"(`fuser {self.path}`) or raise lock_timeout"
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)
            except sqlite3.DatabaseError as exc:
                raise self._wrap(exc) from exc

    def _wrap(self, exc: sqlite3.DatabaseError) -> StudyStoreError:
        message = str(exc)
        if "not a database" in message or "malformed" in message:
            return NotAStudyError(
                f"{self.path} is damaged or not an SQLite database ({message}): restore it "
                f"from a backup, or inspect it with `sqlite3 {self.path} 'PRAGMA integrity_check'`"
            )
        return StudyStoreError(f"{self.path}: SQLite error: {message}")

    def _write(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``body`` inside one write transaction (committed, or rolled back on error)."""

        def attempt() -> _T:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = body(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

        return self._retry(attempt)

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        return self._retry(lambda: self._connection.execute(sql, parameters).fetchall())

    def _read_info(self) -> StudyInfo:
        def fetch() -> list[tuple]:
            try:
                return self._connection.execute("SELECT key, value FROM meta").fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                raise NotAStudyError(
                    f"{self.path} is an SQLite database but not a medtune study (it has no "
                    "meta table): pass the study file that `medtune run` wrote"
                ) from exc

        rows = dict(self._retry(fetch))
        if rows.get("application") != APPLICATION:
            raise NotAStudyError(
                f"{self.path} is an SQLite database but not a medtune study (its meta table "
                "does not name medtune): pass the study file that `medtune run` wrote"
            )
        try:
            version = int(rows["schema_version"])
        except (KeyError, ValueError) as exc:
            raise NotAStudyError(
                f"{self.path} has no valid schema_version in its meta table"
            ) from exc
        if version > SCHEMA_VERSION:
            raise NotAStudyError(
                f"{self.path} has study schema version {version}, newer than the {SCHEMA_VERSION} "
                "this medtune reads: upgrade medtune to open it"
            )
        if version < SCHEMA_VERSION:
            version = self._migrate(version)
        return StudyInfo(
            name=rows["name"],
            direction=rows["direction"],
            seed=int(rows["seed"]),
            config_text=rows["config_toml"],
            created=datetime.fromisoformat(rows["created"]),
            schema_version=version,
            medtune_version=rows.get("medtune_version", ""),
        )

    def _migrate(self, version: int) -> int:
        """Bring a file of an older schema ``version`` up to :data:`SCHEMA_VERSION` in one
        transaction (the file is unchanged if any step fails); returns the new version."""
        if version not in _MIGRATIONS:
            raise NotAStudyError(
                f"{self.path} has study schema version {version}, older than {SCHEMA_VERSION}, "
                "and this medtune has no migration for it"
            )

        def body(connection: sqlite3.Connection) -> None:
            for step in range(version, SCHEMA_VERSION):
                connection.execute(_MIGRATIONS[step])
            connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                               (str(SCHEMA_VERSION),))

        self._write(body)
        return SCHEMA_VERSION

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._connection.close()

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ metadata

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def direction(self) -> str:
        return self.info.direction

    @property
    def seed(self) -> int:
        return self.info.seed

    @property
    def config_text(self) -> str:
        return self.info.config_text

    # -------------------------------------------------------------------------------- writes

    def create_trial(
        self,
        *,
        suggestion_id: int,
        config: Mapping[str, Any],
        seed: int,
        resource: float | None = None,
        tag: Mapping[str, Any] | None = None,
        requeued_from: int | None = None,
        started: datetime | None = None,
    ) -> int:
        """Record a new RUNNING trial and return its id (ids are never reused).

        ``asked_after`` is set to the number of results recorded so far, which lets a resumed
        study replay proposals and results to its searcher in their original interleaving.
        """
        config_json = _to_json(config, "config")
        tag_json = _to_json(tag or {}, "tag")
        started_text = (started or utc_now()).isoformat()

        def body(connection: sqlite3.Connection) -> int:
            (asked_after,) = connection.execute(
                "SELECT COALESCE(MAX(completion_order), 0) FROM trials"
            ).fetchone()
            cursor = connection.execute(
                "INSERT INTO trials (suggestion_id, config, resource, tag, seed, state, started,"
                " asked_after, requeued_from) VALUES (?, ?, ?, ?, ?, 'RUNNING', ?, ?, ?)",
                (int(suggestion_id), config_json, _float_or_none(resource), tag_json, int(seed),
                 started_text, asked_after, requeued_from),
            )
            return int(cursor.lastrowid)

        return self._write(body)

    def report_intermediate(self, trial_id: int, step: float, value: float) -> None:
        """Record (or overwrite) the value a RUNNING trial reached at ``step``."""

        def body(connection: sqlite3.Connection) -> None:
            self._require_running(connection, trial_id)
            connection.execute(
                "INSERT OR REPLACE INTO intermediate_values (trial_id, step, value)"
                " VALUES (?, ?, ?)",
                (trial_id, float(step), _finite_or_none(value)),
            )

        self._write(body)

    def complete_trial(
        self,
        trial_id: int,
        value: float,
        execution: Execution | None = None,
        *,
        told_value: float | None = None,
        told_failed: bool | None = None,
    ) -> Trial:
        """Mark a RUNNING trial COMPLETE with its final ``value``.

        ``execution`` says where and when the objective ran and what it reported on the way
        (default: unknown, finished now); ``told_value``/``told_failed`` record what the driver
        told the searcher, so that a resumed study replays exactly that.
        """
        if not math.isfinite(value):
            raise ValueError(
                f"trial {trial_id}: a COMPLETE trial needs a finite value, got {value!r}; "
                "record it with fail_trial(reason='nan')"
            )
        return self._finish(trial_id, TrialState.COMPLETE, value, None, None, execution,
                            told_value, told_failed)

    def prune_trial(
        self,
        trial_id: int,
        value: float | None = None,
        execution: Execution | None = None,
        *,
        told_value: float | None = None,
        told_failed: bool | None = None,
    ) -> Trial:
        """Mark a RUNNING trial PRUNED (stopped early), with its last value if it had one.

        The other arguments are as in :meth:`complete_trial`.
        """
        return self._finish(trial_id, TrialState.PRUNED, value, None, None, execution,
                            told_value, told_failed)

    def fail_trial(
        self,
        trial_id: int,
        reason: FailureReason | str,
        traceback: str | None,
        execution: Execution | None = None,
        *,
        told_value: float | None = None,
        told_failed: bool | None = None,
    ) -> Trial:
        """Mark a RUNNING trial FAIL, with why (``exception``, ``nan``, ``out_of_memory`` or
        ``worker_died``) and the traceback or message that explains it.

        The other arguments are as in :meth:`complete_trial`.
        """
        return self._finish(trial_id, TrialState.FAIL, None, FailureReason(reason), traceback,
                            execution, told_value, told_failed)

    def _finish(
        self,
        trial_id: int,
        state: TrialState,
        value: float | None,
        reason: FailureReason | None,
        traceback: str | None,
        execution: Execution | None,
        told_value: float | None,
        told_failed: bool | None,
    ) -> Trial:
        """Record a trial's outcome, intermediate values and timings in one transaction."""
        run = execution or Execution()
        finished = run.finished or utc_now()
        steps = [(float(step), _finite_or_none(v)) for step, v in run.intermediate]
        metrics = json.dumps({str(k): _json_metric(v) for k, v in run.metrics.items()},
                             sort_keys=True)

        def body(connection: sqlite3.Connection) -> None:
            self._require_running(connection, trial_id)
            (order,) = connection.execute(
                "SELECT COALESCE(MAX(completion_order), 0) + 1 FROM trials"
            ).fetchone()
            connection.execute(
                "UPDATE trials SET state = ?, value = ?, failure_reason = ?, traceback = ?,"
                " started = COALESCE(?, started), finished = ?, duration = ?, host = ?,"
                " worker_pid = ?, completion_order = ?, told_value = ?, told_failed = ?,"
                " metrics = ? WHERE id = ?",
                (state.value, _finite_or_none(value), reason.value if reason else None,
                 traceback, run.started.isoformat() if run.started else None,
                 finished.isoformat(), run.duration, run.host, run.worker_pid, order,
                 _finite_or_none(told_value), None if told_failed is None else int(told_failed),
                 metrics, trial_id),
            )
            connection.executemany(
                "INSERT OR REPLACE INTO intermediate_values (trial_id, step, value)"
                " VALUES (?, ?, ?)",
                [(trial_id, step, v) for step, v in steps],
            )

        self._write(body)
        return self.trial(trial_id)

    def requeue_orphans(self) -> list[Trial]:
        """Mark every RUNNING trial REQUEUED and return them (as they are now).

        Call this only from the driver that is about to resume the study, never while another
        driver runs it: a RUNNING trial is then one whose driver died before recording it.
        """

        def body(connection: sqlite3.Connection) -> list[int]:
            ids = [row[0] for row in connection.execute(
                "SELECT id FROM trials WHERE state = 'RUNNING' ORDER BY id")]
            connection.execute("UPDATE trials SET state = 'REQUEUED' WHERE state = 'RUNNING'")
            return ids

        return [self.trial(trial_id) for trial_id in self._write(body)]

    @staticmethod
    def _require_running(connection: sqlite3.Connection, trial_id: int) -> None:
        row = connection.execute("SELECT state FROM trials WHERE id = ?", (trial_id,)).fetchone()
        if row is None:
            raise StudyStoreError(f"no trial {trial_id} in this study")
        if row[0] != TrialState.RUNNING.value:
            raise StudyStoreError(
                f"trial {trial_id} is {row[0]}, not RUNNING: its result was already recorded"
            )

    # --------------------------------------------------------------------------------- reads

    def trial(self, trial_id: int) -> Trial:
        """The trial with this id (:class:`StudyStoreError` if there is none)."""
        trials = self._select("WHERE id = ?", (trial_id,))
        if not trials:
            raise StudyStoreError(f"no trial {trial_id} in {self.path}")
        return trials[0]

    def trials(self, states: Iterable[TrialState | str] | None = None) -> list[Trial]:
        """All trials in id order, or those in the given states."""
        if states is None:
            return self._select("", ())
        names = [TrialState(state).value for state in states]
        if not names:
            return []
        marks = ", ".join("?" * len(names))
        return self._select(f"WHERE state IN ({marks})", names)

    def count(self, states: Iterable[TrialState | str] = FINISHED_STATES) -> int:
        """How many trials are in the given states (by default: finished trials)."""
        names = [TrialState(state).value for state in states]
        if not names:
            return 0
        marks = ", ".join("?" * len(names))
        ((n,),) = self._query(f"SELECT COUNT(*) FROM trials WHERE state IN ({marks})", names)
        return int(n)

    def best_trial(self) -> Trial | None:
        """The COMPLETE trial with the best value for the study's direction (None if none).

        Ties go to the trial recorded first.
        """
        order = "ASC" if self.direction == "minimize" else "DESC"
        trials = self._select(
            f"WHERE state = 'COMPLETE' ORDER BY value {order}, completion_order ASC LIMIT 1", ()
        )
        return trials[0] if trials else None

    def _select(self, where: str, parameters: Sequence[Any]) -> list[Trial]:
        columns = (
            "id, suggestion_id, config, resource, tag, seed, state, value, failure_reason,"
            " traceback, started, finished, duration, host, worker_pid, completion_order,"
            " asked_after, requeued_from, told_value, told_failed, metrics"
        )
        if "ORDER BY" not in where:
            where = f"{where} ORDER BY id"
        rows = self._query(f"SELECT {columns} FROM trials {where}", parameters)
        if not rows:
            return []
        ids = [row[0] for row in rows]
        intermediate: dict[int, dict[float, float]] = {i: {} for i in ids}
        marks = ", ".join("?" * len(ids)) if len(ids) < 900 else None
        sql = "SELECT trial_id, step, value FROM intermediate_values"
        steps = self._query(
            f"{sql} WHERE trial_id IN ({marks}) ORDER BY trial_id, step" if marks
            else f"{sql} ORDER BY trial_id, step",
            ids if marks else (),
        )
        for trial_id, step, value in steps:
            if trial_id in intermediate:
                intermediate[trial_id][step] = math.nan if value is None else value
        return [_trial_from_row(row, intermediate[row[0]]) for row in rows]


@contextlib.contextmanager
def driver_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the study's driver lock (``<study>.lock``) for the duration of the block.

    One driver at a time may run a study: a second ``run``/``resume`` on the same file fails
    at once instead of requeuing the first driver's live trials. The lock is an OS file lock,
    released by the OS when the driver exits, even when it is killed. On systems without
    ``fcntl`` (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path = Path(f"{os.fspath(path)}.lock")
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StudyStoreError(
                f"{path} is being run by {holder}: wait for it to finish, or stop it before "
                "resuming"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _to_json(value: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"a trial's {what} must hold only JSON values (finite numbers, strings, booleans, "
            f"None, lists, dicts): {exc}"
        ) from exc


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_metric(value: float | Sequence[float]) -> float | None | list[float | None]:
    """A metric as JSON stores it: non-finite numbers become null."""
    if isinstance(value, (int, float)):
        return _finite_or_none(value)
    return [_finite_or_none(v) for v in value]


def _metric_from_json(value: Any) -> float | list[float]:
    if isinstance(value, list):
        return [math.nan if v is None else v for v in value]
    return math.nan if value is None else value


def _trial_from_row(row: tuple, intermediate: dict[float, float]) -> Trial:
    (trial_id, suggestion_id, config, resource, tag, seed, state, value, reason, traceback,
     started, finished, duration, host, worker_pid, completion_order, asked_after,
     requeued_from, told_value, told_failed, metrics) = row
    return Trial(
        id=trial_id,
        suggestion_id=suggestion_id,
        config=json.loads(config),
        resource=resource,
        tag=json.loads(tag),
        seed=seed,
        state=TrialState(state),
        value=value,
        failure_reason=FailureReason(reason) if reason else None,
        traceback=traceback,
        started=datetime.fromisoformat(started),
        finished=datetime.fromisoformat(finished) if finished else None,
        duration=duration,
        host=host,
        worker_pid=worker_pid,
        completion_order=completion_order,
        asked_after=asked_after,
        requeued_from=requeued_from,
        told_value=told_value,
        told_failed=None if told_failed is None else bool(told_failed),
        intermediate=intermediate,
        metrics={k: _metric_from_json(v) for k, v in json.loads(metrics).items()},
    )
