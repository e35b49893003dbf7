"""A study file as an SQLite database: opening it (read-only too), creating it under a
temporary name and linking it into place, write transactions retried while another process
holds the lock, checkpoints of the write-ahead log, schema upgrades, online backups, and the
driver lock (:func:`driver_lock`). :class:`StudyFile` is all of that;
:class:`~medtune.study.store.StudyStore` adds the trials.

The file is plain SQLite in WAL mode, readable with the ``sqlite3`` shell. Each write is one
transaction; a lock held by another process is waited for with a busy timeout and retried with
backoff, so "database is locked" never reaches the caller. Readers (``medtune status``,
reports) may open the file at any time, read-only, and never change it. A writer checkpoints
the write-ahead log into the study file every second or 16 commits and empties the log when it
closes, so copying the ``.sqlite`` file loses at most the last few results of a live study;
:meth:`StudyFile.backup` copies a running study consistently.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from medtune.errors import MedtuneError
from medtune.search.searcher import DIRECTIONS
from medtune.study.files import publish, remove_database, temporary_beside
from medtune.study.records import StudyInfo, utc_now
from medtune.study.schema import APPLICATION, MIGRATIONS, SCHEMA, SCHEMA_VERSION

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

_T = TypeVar("_T")


class StudyStoreError(MedtuneError):
    """A study file cannot be created, opened, read or written."""


class NotAStudyError(StudyStoreError):
    """The file exists but is not a medtune study this version can open."""


class StudyLockedError(StudyStoreError):
    """Another process held the study's lock for longer than the store's lock timeout."""


class StudyFile:
    """An open study file: its metadata (:attr:`info`), transactions, checkpoints, upgrades
    and backups; :class:`~medtune.study.store.StudyStore` adds the trials. ``StudyFile(path)``
    opens an existing study; :meth:`create` makes one.

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
    ) -> Self:
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
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not "
                             f"{direction!r}")
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
        temporary = temporary_beside(path)
        try:
            connection = sqlite3.connect(temporary, isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("BEGIN IMMEDIATE")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                       meta.items())
                connection.execute("COMMIT")
            finally:
                connection.close()  # the last connection: the log is copied in and removed
            try:
                publish(temporary, path)
            except FileExistsError:
                raise _study_exists(path) from None
        finally:
            remove_database(temporary)  # its name only: a published study keeps its own
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
        if version not in MIGRATIONS:
            raise NotAStudyError(
                f"{self.path} has study schema version {version}, older than {SCHEMA_VERSION}, "
                "and this medtune has no migration for it"
            )

        def body(connection: sqlite3.Connection) -> None:
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
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
            temporary = temporary_beside(destination)
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
                publish(temporary, destination)
            except FileExistsError:
                raise _backup_exists(destination) from None
            except OSError as exc:
                raise _cannot_write(destination, exc) from exc
        finally:
            remove_database(temporary)
        return int(n_trials)

    def __enter__(self) -> Self:
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
