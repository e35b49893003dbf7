"""The study store: one SQLite file per study, holding its metadata and every trial.

The file is plain SQLite in WAL mode, readable with the ``sqlite3`` shell
(``sqlite3 study.db 'SELECT id, state, value FROM trials'``). Each write (a new trial, a
result with its intermediate values, a requeue) is one transaction; a lock held by another
process is waited for with a busy timeout and retried with backoff, so "database is locked"
never reaches the caller. Only the study's driver writes trials while a study runs; readers
(``medtune status``, reports) may open the file at any time, read-only
(``StudyStore(path, read_only=True)``), and never change it.

The study file alone is the study: a writer checkpoints the write-ahead log into it every
second or 16 commits and empties the log when it closes, so copying the ``.sqlite`` file loses
at most the last few results of a live study; :meth:`StudyStore.backup` (``medtune
backup``) copies a running study consistently. New files (a study, a backup) are built under
a temporary name and linked into place, so two processes creating one study never destroy
each other's file.

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
import logging
import math
import os
import random
import shutil
import socket
import sqlite3
import tempfile
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
SCHEMA_VERSION = 3

#: How to bring an older file up to :data:`SCHEMA_VERSION`, one step per version, each step
#: its SQL statements (all run in one transaction when the file is opened).
_MIGRATIONS = {
    1: ("ALTER TABLE trials ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}'",),
    # the failure reasons timeout and interrupted: widen the CHECK of failure_reason in the
    # stored table definition, as SQLite documents for a constraint every row already meets
    2: ("PRAGMA writable_schema = ON",
        "UPDATE sqlite_master SET sql = replace(sql, '''worker_died'')', "
        "'''worker_died'', ''timeout'', ''interrupted'')') "
        "WHERE type = 'table' AND name = 'trials'",
        "PRAGMA writable_schema = RESET"),  # off, and the new definition read at once
}
APPLICATION = "medtune"

#: How long a write waits in total for another process's lock before giving up (seconds).
DEFAULT_LOCK_TIMEOUT = 300.0
#: SQLite's own busy timeout per attempt (seconds); attempts are retried with backoff.
_BUSY_TIMEOUT = 5.0
#: A writer copies the write-ahead log into the study file after this many commits, and at
#: its first commit once :data:`CHECKPOINT_SECONDS` have passed since the last copy: the
#: ``.sqlite`` file alone then holds nearly every result even if the driver is killed (with
#: trials longer than a second, all but those recorded within a second of each other). Each
#: checkpoint costs one more file sync.
CHECKPOINT_COMMITS = 16
CHECKPOINT_SECONDS = 1.0

logger = logging.getLogger("medtune.study")

_T = TypeVar("_T")


class StudyStoreError(MedtuneError):
    """A study file cannot be created, opened, read or written."""


class NotAStudyError(StudyStoreError):
    """The file exists but is not a medtune study this version can open."""


class StudyLockedError(StudyStoreError):
    """Another process held the study's lock for longer than the store's lock timeout."""


class DamagedTrialError(StudyStoreError):
    """A trial's row cannot be read (invalid JSON, a bad date, a value of the wrong type).

    ``trial_id`` names the trial and ``problem`` says what is wrong with it.
    """

    def __init__(self, path: Path, trial_id: int, problem: str, advice: str):
        super().__init__(f"{path}: trial {trial_id} is damaged ({problem}); {advice}")
        self.trial_id = trial_id
        self.problem = problem


class TrialState(str, Enum):
    """Where a trial stands.

    ``REQUEUED`` marks a trial that was RUNNING when its driver died or was interrupted (then
    with failure reason ``interrupted``): its configuration is run again as a new trial (whose ``requeued_from`` names it), and it is never counted.
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
    TIMEOUT = "timeout"  # ran past the study's trial_timeout and was stopped
    INTERRUPTED = "interrupted"  # in flight when the run was interrupted (a REQUEUED trial)


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


#: The columns of ``trials`` that :func:`_trial_from_row` reads, in its order.
_COLUMNS = (
    "id, suggestion_id, config, resource, tag, seed, state, value, failure_reason,"
    " traceback, started, finished, duration, host, worker_pid, completion_order,"
    " asked_after, requeued_from, told_value, told_failed, metrics"
)


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

    ``read_only=True`` opens it for reading only (what status and reports do): the file is
    never written, not even to upgrade an older schema, which is then upgraded in a copy held
    in memory (``info.schema_version`` stays the file's version; the next writer upgrades the
    file). A write through a read-only store raises :class:`StudyStoreError`.

    Errors: :class:`NotAStudyError` for a file that is not a medtune study (another SQLite
    database, a damaged file, a newer schema), :class:`StudyStoreError` for a missing file,
    :class:`StudyLockedError` when another process keeps the file locked longer than
    ``lock_timeout`` seconds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        read_only: bool = False,
    ):
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.read_only = read_only
        self._commits_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._wrote = False
        self._closed = False
        self._reported_damage: set[int] = set()
        if not self.path.is_file():
            raise StudyStoreError(
                f"no study at {self.path}: check the path, or create the study with "
                "StudyStore.create (or `medtune run CONFIG`)"
            )
        self._connection = _connect(self.path, read_only=read_only)
        try:
            self._retry(self._configure)
            self.info = self._read_info()
            if not read_only:
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

        The file is built under a temporary name in the same folder and then linked to
        ``path``, which fails if ``path`` exists: of several processes creating one study,
        exactly one succeeds, and the others raise :class:`StudyStoreError` ("already
        exists") without touching its file. A reader never sees a half-made study.
        """
        from medtune import __version__

        path = Path(path)
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize', not {direction!r}")
        if path.exists():
            raise _study_exists(path)
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
        temporary = _temporary_beside(path)
        try:
            connection = sqlite3.connect(temporary, isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                       meta.items())
                connection.execute("COMMIT")
            finally:
                connection.close()  # the last connection: the log is copied in and removed
            try:
                _publish(temporary, path)
            except FileExistsError:
                raise _study_exists(path) from None
        finally:
            _remove_database(temporary)  # its name only: a published study keeps its own
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
        """Run ``body`` inside one write transaction (committed, or rolled back on error),
        then checkpoint the log into the study file when one is due."""
        if self.read_only:
            raise StudyStoreError(
                f"{self.path} was opened read-only: open it with StudyStore(path) to write"
            )

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

        result = self._retry(attempt)
        self._wrote = True
        self._commits_since_checkpoint += 1
        if (self._commits_since_checkpoint >= CHECKPOINT_COMMITS
                or time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS):
            self._checkpoint("PASSIVE")
        return result

    def _checkpoint(self, mode: str) -> None:
        """Copy the write-ahead log into the study file (``PASSIVE``: as far as readers allow,
        without waiting; ``TRUNCATE``: all of it, then empty the log). Best effort: a result
        left in the log is still committed, and the next checkpoint copies it."""
        try:
            self._connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc):
                raise self._wrap(exc) from exc
        self._commits_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

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
            self._migrate(version)
            if not self.read_only:
                version = SCHEMA_VERSION
        try:
            return StudyInfo(
                name=rows["name"],
                direction=rows["direction"],
                seed=int(rows["seed"]),
                config_text=rows["config_toml"],
                created=datetime.fromisoformat(rows["created"]),
                schema_version=version,
                medtune_version=rows.get("medtune_version", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NotAStudyError(
                f"{self.path}: the study's meta table is damaged ({type(exc).__name__}: {exc}): "
                "restore the file from a backup"
            ) from exc

    def _migrate(self, version: int) -> None:
        """Bring a file of an older schema ``version`` up to :data:`SCHEMA_VERSION` in one
        transaction (the file is unchanged if any step fails). A read-only store upgrades a
        copy of the file in memory instead, and reads that."""
        if version not in _MIGRATIONS:
            raise NotAStudyError(
                f"{self.path} has study schema version {version}, older than {SCHEMA_VERSION}, "
                "and this medtune has no migration for it"
            )

        def body(connection: sqlite3.Connection) -> None:
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    connection.execute(statement)
            connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                               (str(SCHEMA_VERSION),))

        if not self.read_only:
            self._write(body)
            return
        memory = sqlite3.connect(":memory:", isolation_level=None)
        try:
            self._retry(lambda: self._connection.backup(memory))
            memory.execute("BEGIN")
            body(memory)
            memory.execute("COMMIT")
        except BaseException:
            memory.close()
            raise
        self._connection.close()
        self._connection = memory

    def close(self) -> None:
        """Close the connection (idempotent). A store that wrote copies the whole write-ahead
        log into the study file first, so the file alone holds every result."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._wrote:
                self._checkpoint("TRUNCATE")
        finally:
            self._connection.close()

    def backup(self, destination: str | os.PathLike[str]) -> int:
        """Copy the study, as it stands now, to the new file ``destination``; return how many
        trials the copy holds.

        SQLite's online backup reads one consistent snapshot, so the copy holds every trial
        committed before the backup began, even while a driver writes; it is one
        self-contained study file (no write-ahead log beside it). ``destination`` must not
        exist (:class:`StudyStoreError` otherwise: a backup never overwrites); its folder is
        created. The copy is made under a temporary name and linked into place once checked.
        """
        destination = Path(destination)
        if destination.exists():
            raise _backup_exists(destination)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            temporary = _temporary_beside(destination)
        except OSError as exc:
            raise _cannot_write(destination, exc) from exc
        try:
            source = _connect(self.path, read_only=True)
            try:
                copy = sqlite3.connect(temporary, isolation_level=None)
                try:
                    self._retry(lambda: source.backup(copy))
                    (check,) = copy.execute("PRAGMA quick_check").fetchone()
                    (n_trials,) = copy.execute("SELECT COUNT(*) FROM trials").fetchone()
                finally:
                    copy.close()
            finally:
                source.close()
            if check != "ok":
                raise StudyStoreError(
                    f"the copy of {self.path} failed SQLite's check ({check}); the study file "
                    f"itself may be damaged: run `sqlite3 {self.path} 'PRAGMA integrity_check'`"
                )
            try:
                _publish(temporary, destination)
            except FileExistsError:
                raise _backup_exists(destination) from None
            except OSError as exc:
                raise _cannot_write(destination, exc) from exc
        finally:
            _remove_database(temporary)
        return int(n_trials)

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
        """Mark a RUNNING trial FAIL, with why (``exception``, ``nan``, ``out_of_memory``,
        ``worker_died`` or ``timeout``) and the traceback or message that explains it.

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

    def interrupt_running(self, message: str) -> list[Trial]:
        """Mark every RUNNING trial REQUEUED with reason ``interrupted`` and ``message`` as its
        traceback, and return them: what a driver that is being stopped (Ctrl-C) records for
        the trials it had in flight, so that ``resume`` runs their configurations again.

        Call it only from the driver that holds the study, as :meth:`requeue_orphans`.
        """
        finished = utc_now().isoformat()

        def body(connection: sqlite3.Connection) -> list[int]:
            ids = [row[0] for row in connection.execute(
                "SELECT id FROM trials WHERE state = 'RUNNING' ORDER BY id")]
            connection.execute(
                "UPDATE trials SET state = 'REQUEUED', failure_reason = ?, traceback = ?,"
                " finished = ? WHERE state = 'RUNNING'",
                (FailureReason.INTERRUPTED.value, message, finished))
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
        """The trial with this id (:class:`StudyStoreError` if there is none,
        :class:`DamagedTrialError` if its row cannot be read)."""
        rows = self._query(f"SELECT {_COLUMNS} FROM trials WHERE id = ?", (trial_id,))
        if not rows:
            raise StudyStoreError(f"no trial {trial_id} in {self.path}")
        trials, damaged = self._parse(rows)
        if damaged:
            raise DamagedTrialError(self.path, trial_id, damaged[trial_id],
                                    "repair its row with sqlite3")
        return trials[0]

    def trials(self, states: Iterable[TrialState | str] | None = None) -> list[Trial]:
        """All trials in id order, or those in the given states.

        A trial whose row cannot be read is left out, with one warning naming it (see
        :meth:`damaged_trials`); the others are read as usual.
        """
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
        offset = 0
        while True:
            rows = self._query(
                f"SELECT {_COLUMNS} FROM trials WHERE state = 'COMPLETE'"
                f" ORDER BY value {order}, completion_order ASC LIMIT 1 OFFSET ?", (offset,))
            if not rows:
                return None
            trials = self._build(rows)
            if trials:
                return trials[0]
            offset += 1  # that row is damaged: the next best

    def damaged_trials(self) -> dict[int, str]:
        """The trials whose row cannot be read, each with what is wrong with it (empty when
        every row reads). Reads every row."""
        return self._parse(self._query(f"SELECT {_COLUMNS} FROM trials ORDER BY id"))[1]

    def require_intact(self) -> None:
        """Raise :class:`DamagedTrialError` naming the first damaged trial, if any: what a
        resume calls, since replaying a history with a trial left out would mislead the
        searcher."""
        damaged = self.damaged_trials()
        if damaged:
            trial_id, problem = next(iter(damaged.items()))
            others = f" ({len(damaged) - 1} more damaged trials)" if len(damaged) > 1 else ""
            raise DamagedTrialError(
                self.path, trial_id, problem,
                f"cannot resume without it{others}: repair its row with sqlite3, or start a "
                "new study from the same configuration")

    def _select(self, where: str, parameters: Sequence[Any]) -> list[Trial]:
        return self._build(self._query(f"SELECT {_COLUMNS} FROM trials {where} ORDER BY id",
                                       parameters))

    def _build(self, rows: list[tuple]) -> list[Trial]:
        """The trials of these rows; a damaged row is left out with one warning naming it
        (once per trial and store)."""
        trials, damaged = self._parse(rows)
        for trial_id, problem in damaged.items():
            if trial_id not in self._reported_damage:
                self._reported_damage.add(trial_id)
                logger.warning("%s", DamagedTrialError(
                    self.path, trial_id, problem,
                    "it is left out; the other trials are read (`medtune resume` refuses "
                    "until it is repaired)"))
        return trials

    def _parse(self, rows: list[tuple]) -> tuple[list[Trial], dict[int, str]]:
        """Read rows of :data:`_COLUMNS` with their intermediate values: the trials that read,
        and for each row that does not, what is wrong with it."""
        if not rows:
            return [], {}
        ids = [row[0] for row in rows]
        intermediate: dict[int, list[tuple[Any, Any]]] = {i: [] for i in ids}
        marks = ", ".join("?" * len(ids)) if len(ids) < 900 else None
        sql = "SELECT trial_id, step, value FROM intermediate_values"
        steps = self._query(
            f"{sql} WHERE trial_id IN ({marks}) ORDER BY trial_id, step" if marks
            else f"{sql} ORDER BY trial_id, step",
            ids if marks else (),
        )
        for trial_id, step, value in steps:
            if trial_id in intermediate:
                intermediate[trial_id].append((step, value))
        trials, damaged = [], {}
        for row in rows:
            try:
                trials.append(_trial_from_row(row, intermediate[row[0]]))
            except _Damage as exc:
                damaged[row[0]] = str(exc)
        return trials, damaged


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


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """A connection to the study file; ``read_only`` ones cannot write it (SQLite's
    ``mode=ro``), not even to checkpoint the log when they close."""
    if read_only:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               timeout=_BUSY_TIMEOUT, isolation_level=None)
    return sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)


def _temporary_beside(path: Path) -> Path:
    """A new empty file in ``path``'s folder (so it can be linked to ``path``), named after it."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    return Path(name)


def _publish(source: Path, target: Path) -> None:
    """Give the finished database ``source`` the name ``target`` too, atomically and only if
    ``target`` does not exist (:class:`FileExistsError` otherwise).

    A hard link does both in one step. On a file system without hard links the file is copied
    into a ``target`` opened with ``O_EXCL``, which still never replaces another file (a reader
    may then see it half-written).
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares)
        with open(target, "xb") as out:
            try:
                with open(source, "rb") as data:
                    shutil.copyfileobj(data, out)
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                out.close()
                target.unlink()  # the file this process created, half-written
                raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Make a new name in ``folder`` durable (where the OS can open a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open a folder
        return
    try:
        os.fsync(handle)
    except OSError:  # a file system that cannot sync a folder; the name is there all the same
        pass
    finally:
        os.close(handle)


def _remove_database(path: Path) -> None:
    """Remove a database this process created under a temporary name, and its side files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _study_exists(path: Path) -> StudyStoreError:
    return StudyStoreError(
        f"{path} already exists: resume that study (`medtune resume {path}`) or choose "
        "another file"
    )


def _backup_exists(path: Path) -> StudyStoreError:
    return StudyStoreError(
        f"{path} already exists: a backup never overwrites a file; choose another destination"
    )


def _cannot_write(path: Path, exc: OSError) -> StudyStoreError:
    return StudyStoreError(
        f"cannot write {path} ({exc.strerror or exc}): choose a destination in a writable folder"
    )


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


class _Damage(Exception):
    """What is wrong with a trial's row, found while reading it."""


def _trial_from_row(row: tuple, intermediate: list[tuple[Any, Any]]) -> Trial:
    """The trial of one row of :data:`_COLUMNS` (:class:`_Damage` when the row is damaged)."""
    (trial_id, suggestion_id, config, resource, tag, seed, state, value, reason, traceback,
     started, finished, duration, host, worker_pid, completion_order, asked_after,
     requeued_from, told_value, told_failed, metrics) = row
    try:
        state = TrialState(state)
        reason = FailureReason(reason) if reason else None
    except ValueError as exc:
        raise _Damage(str(exc)) from None
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
    )


def _read(value: Any, column: str, kind: type, *, optional: bool = False) -> Any:
    """``value`` as SQLite returned it, checked to be of ``kind`` (a ``float`` column may hold
    an integer), or ``None`` where the column allows it (``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, kind) or (kind is float and isinstance(value, int)):
        return value
    raise _Damage(f"{column} is {value!r}, not {'text' if kind is str else 'a number'}")


def _metric_number(value: Any, what: str) -> float:
    """A stored metric number; JSON null is the NaN that was recorded."""
    return math.nan if value is None else _read(value, what, float)


def _json_object(text: Any, column: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise _Damage(f"{column} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _Damage(f"{column} is not a JSON object")
    return value


def _date(text: Any, column: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise _Damage(f"{column} is {text!r}, not an ISO 8601 date") from None
