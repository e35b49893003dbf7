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
- ``trials``: one row per trial; see :data:`medtune.study.schema.SCHEMA` for the columns.
  ``artifact`` (schema version 4) is the folder of the files a COMPLETE trial kept, relative
  to the study file's folder (``<stem>.artifacts/trial_<id>``), or NULL when it keeps none:
  it wrote none, did not complete, or was not among the best ``keep_best`` trials and its
  folder was removed (see :mod:`medtune.study.artifacts`). A version 3 file gets the column,
  all NULL, when a writer opens it.
- ``intermediate_values(trial_id, step, value)``: the value a trial reported at each resource
  level or step (what Hyperband compares).

This module holds :class:`StudyStore`, the trials' writes and reads; the file itself (opening,
transactions, checkpoints, upgrades, backups, the driver lock) is :mod:`medtune.study.database`,
the table layout :mod:`medtune.study.schema` and the records :mod:`medtune.study.records`, all
importable from here too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from medtune.study.database import (
    CHECKPOINT_COMMITS,
    CHECKPOINT_SECONDS,
    DEFAULT_LOCK_TIMEOUT,
    NotAStudyError,
    StudyFile,
    StudyLockedError,
    StudyStoreError,
    driver_lock,
)
from medtune.study.records import (
    FINISHED_STATES,
    Execution,
    FailureReason,
    StudyInfo,
    Trial,
    TrialState,
    utc_now,
)
from medtune.study.schema import (
    APPLICATION,
    COLUMNS,
    SCHEMA_VERSION,
    RowDamage,
    finite_or_none,
    float_or_none,
    json_metric,
    to_json,
    trial_from_row,
)

__all__ = [
    "APPLICATION",
    "CHECKPOINT_COMMITS",
    "CHECKPOINT_SECONDS",
    "DEFAULT_LOCK_TIMEOUT",
    "FINISHED_STATES",
    "SCHEMA_VERSION",
    "DamagedTrialError",
    "Execution",
    "FailureReason",
    "NotAStudyError",
    "StudyInfo",
    "StudyLockedError",
    "StudyStore",
    "StudyStoreError",
    "Trial",
    "TrialState",
    "driver_lock",
    "utc_now",
]

logger = logging.getLogger("medtune.study")


class DamagedTrialError(StudyStoreError):
    """A trial's row cannot be read (invalid JSON, a bad date, a value of the wrong type).

    ``trial_id`` names the trial and ``problem`` says what is wrong with it.
    """

    def __init__(self, path: Path, trial_id: int, problem: str, advice: str):
        super().__init__(f"{path}: trial {trial_id} is damaged ({problem}); {advice}")
        self.trial_id = trial_id
        self.problem = problem


class StudyStore(StudyFile):
    """A study file with its trials. ``StudyStore(path)`` opens an existing study;
    :meth:`~medtune.study.database.StudyFile.create` makes one. Opening, ``read_only`` and
    the file's errors are :class:`~medtune.study.database.StudyFile`'s; reading a trial whose
    row cannot be read raises :class:`DamagedTrialError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        read_only: bool = False,
    ):
        super().__init__(path, lock_timeout=lock_timeout, read_only=read_only)
        self._reported_damage: set[int] = set()

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
        config_json = to_json(config, "config")
        tag_json = to_json(tag or {}, "tag")
        started_text = (started or utc_now()).isoformat()

        def body(connection: sqlite3.Connection) -> int:
            (asked_after,) = connection.execute(
                "SELECT COALESCE(MAX(completion_order), 0) FROM trials"
            ).fetchone()
            cursor = connection.execute(
                "INSERT INTO trials (suggestion_id, config, resource, tag, seed, state, started,"
                " asked_after, requeued_from) VALUES (?, ?, ?, ?, ?, 'RUNNING', ?, ?, ?)",
                (int(suggestion_id), config_json, float_or_none(resource), tag_json, int(seed),
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
                (trial_id, float(step), finite_or_none(value)),
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
        artifact: str | None = None,
    ) -> Trial:
        """Mark a RUNNING trial COMPLETE with its final ``value``.

        ``execution`` says where and when the objective ran and what it reported on the way
        (default: unknown, finished now); ``told_value``/``told_failed`` record what the driver
        told the searcher, so that a resumed study replays exactly that; ``artifact`` is the
        folder of the files the trial kept, relative to the study file's folder.
        """
        if not math.isfinite(value):
            raise ValueError(
                f"trial {trial_id}: a COMPLETE trial needs a finite value, got {value!r}; "
                "record it with fail_trial(reason='nan')"
            )
        return self._finish(trial_id, TrialState.COMPLETE, value, None, None, execution,
                            told_value, told_failed, artifact)

    def prune_trial(
        self,
        trial_id: int,
        value: float | None = None,
        execution: Execution | None = None,
        *,
        told_value: float | None = None,
        told_failed: bool | None = None,
        reason: str | None = None,
    ) -> Trial:
        """Mark a RUNNING trial PRUNED (stopped early), with its last value if it had one and
        ``reason``, the rule that stopped it (kept as its ``traceback``: why it did not
        complete); the step it was stopped at is the metric ``pruned_at_step`` of
        ``execution``.

        The other arguments are as in :meth:`complete_trial`.
        """
        return self._finish(trial_id, TrialState.PRUNED, value, None, reason, execution,
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
        artifact: str | None = None,
    ) -> Trial:
        """Record a trial's outcome, intermediate values and timings in one transaction."""
        run = execution or Execution()
        finished = run.finished or utc_now()
        steps = [(float(step), finite_or_none(v)) for step, v in run.intermediate]
        metrics = json.dumps({str(k): json_metric(v) for k, v in run.metrics.items()},
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
                " metrics = ?, artifact = ? WHERE id = ?",
                (state.value, finite_or_none(value), reason.value if reason else None,
                 traceback, run.started.isoformat() if run.started else None,
                 finished.isoformat(), run.duration, run.host, run.worker_pid, order,
                 finite_or_none(told_value), None if told_failed is None else int(told_failed),
                 metrics, artifact, trial_id),
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

    def release_artifacts(self, keep_best: int) -> list[Path]:
        """Forget the artifacts of the COMPLETE trials outside the best ``keep_best`` (by the
        study's direction, ties to the trial recorded first): their ``artifact`` becomes NULL,
        in one transaction. Returns the folders they had, for the caller to remove after
        this, so the store never lists a removed folder. ``keep_best`` 0 keeps every
        trial's."""
        if keep_best == 0:
            return []
        rows = self._query(
            f"SELECT id, artifact FROM trials WHERE state = 'COMPLETE' AND artifact IS NOT NULL"
            f" ORDER BY {self._ranking()} LIMIT -1 OFFSET ?", (keep_best,))
        if rows:
            self._write(lambda connection: connection.executemany(
                "UPDATE trials SET artifact = NULL WHERE id = ?", [(row[0],) for row in rows]))
        return [self.path.parent / row[1] for row in rows]

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
        rows = self._query(f"SELECT {COLUMNS} FROM trials WHERE id = ?", (trial_id,))
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

    def best_trial(self, *, with_artifact: bool = False) -> Trial | None:
        """The COMPLETE trial with the best value for the study's direction (None if none);
        ``with_artifact``: the best of those that keep artifacts.

        Ties go to the trial recorded first.
        """
        kept = " AND artifact IS NOT NULL" if with_artifact else ""
        offset = 0
        while True:
            rows = self._query(
                f"SELECT {COLUMNS} FROM trials WHERE state = 'COMPLETE'{kept}"
                f" ORDER BY {self._ranking()} LIMIT 1 OFFSET ?", (offset,))
            if not rows:
                return None
            trials = self._build(rows)
            if trials:
                return trials[0]
            offset += 1  # that row is damaged: the next best

    def _ranking(self) -> str:
        """The SQL order of COMPLETE trials from the best: by value for the study's direction,
        ties to the trial recorded first."""
        order = "ASC" if self.direction == "minimize" else "DESC"
        return f"value {order}, completion_order ASC"

    def artifacts(self) -> dict[int, str]:
        """``{trial id: artifact folder relative to the study file's folder}`` of every trial
        that keeps artifacts."""
        return dict(self._query(
            "SELECT id, artifact FROM trials WHERE artifact IS NOT NULL ORDER BY id"))

    def artifact_folder(self, trial: Trial) -> Path | None:
        """Where ``trial``'s artifacts are (None when it keeps none)."""
        return None if trial.artifact is None else self.path.parent / trial.artifact

    def damaged_trials(self) -> dict[int, str]:
        """The trials whose row cannot be read, each with what is wrong with it (empty when
        every row reads). Reads every row."""
        return self._parse(self._query(f"SELECT {COLUMNS} FROM trials ORDER BY id"))[1]

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
        return self._build(self._query(f"SELECT {COLUMNS} FROM trials {where} ORDER BY id",
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
        """Read rows of :data:`COLUMNS` with their intermediate values: the trials that read,
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
                trials.append(trial_from_row(row, intermediate[row[0]]))
            except RowDamage as exc:
                damaged[row[0]] = str(exc)
        return trials, damaged
