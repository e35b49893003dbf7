"""The SQLite study store: round trip, plain-SQLite layout, errors, concurrency, locks."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import threading
import time

import pytest

from medtune.study import (
    SCHEMA_VERSION,
    DamagedTrialError,
    Execution,
    FailureReason,
    NotAStudyError,
    StudyLockedError,
    StudyStore,
    StudyStoreError,
    TrialState,
    driver_lock,
)
from medtune.study import database as database_module


@pytest.fixture
def study(tmp_path):
    with StudyStore.create(tmp_path / "study.db", name="demo", direction="minimize", seed=11,
                           config_text='[search]\nsearcher = "random"\n') as store:
        yield store


def test_roundtrip_of_metadata_trials_and_intermediate_values(study):
    first = study.create_trial(suggestion_id=0, config={"lr": 1e-3, "loss": "dice"}, seed=5,
                               resource=3.0, tag={"bracket": 0})
    study.report_intermediate(first, 1, 0.9)
    execution = Execution(duration=1.5, host="node7", worker_pid=4242,
                          intermediate=((2, 0.7), (3, 0.6)))
    study.complete_trial(first, 0.6, execution, told_value=0.6, told_failed=False)
    second = study.create_trial(suggestion_id=1, config={"lr": 1e-2}, seed=6)
    study.fail_trial(second, "out_of_memory", "Traceback ...\nMemoryError", told_failed=True)
    third = study.create_trial(suggestion_id=2, config={"lr": 1e-1}, seed=7)
    study.prune_trial(third, 0.95)
    fourth = study.create_trial(suggestion_id=3, config={"lr": 0.5}, seed=8)
    assert [first, second, third, fourth] == [1, 2, 3, 4]

    with StudyStore(study.path) as reopened:
        assert (reopened.name, reopened.direction, reopened.seed) == ("demo", "minimize", 11)
        assert reopened.config_text == '[search]\nsearcher = "random"\n'
        assert reopened.info.schema_version == SCHEMA_VERSION
        trials = reopened.trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                             TrialState.PRUNED, TrialState.RUNNING]
        done = trials[0]
        assert done.config == {"lr": 1e-3, "loss": "dice"} and done.tag == {"bracket": 0}
        assert (done.resource, done.seed, done.value) == (3.0, 5, 0.6)
        assert done.intermediate == {1.0: 0.9, 2.0: 0.7, 3.0: 0.6}
        assert (done.host, done.worker_pid, done.duration) == ("node7", 4242, 1.5)
        assert done.finished >= done.started
        assert (done.told_value, done.told_failed) == (0.6, False)
        failed = trials[1]
        assert failed.failure_reason is FailureReason.OUT_OF_MEMORY
        assert failed.traceback.endswith("MemoryError") and failed.told_failed is True
        assert [t.completion_order for t in trials] == [1, 2, 3, None]
        assert trials[3].asked_after == 3
        assert reopened.best_trial().id == first
        assert reopened.count() == 3
        assert reopened.count([TrialState.RUNNING]) == 1
        assert [t.id for t in reopened.trials(["FAIL", "PRUNED"])] == [second, third]


def test_best_trial_follows_the_direction(tmp_path):
    with StudyStore.create(tmp_path / "max.db", direction="maximize") as store:
        assert store.best_trial() is None
        for index, value in enumerate([0.2, 0.9, 0.5]):
            store.complete_trial(store.create_trial(suggestion_id=index, config={}, seed=0), value)
        assert store.best_trial().value == 0.9


def test_file_is_plain_sqlite_in_wal_mode_with_a_schema_version(study):
    trial = study.create_trial(suggestion_id=0, config={"x": 1}, seed=1)
    study.complete_trial(trial, 0.5, Execution(intermediate=((1, math.nan),)))
    connection = sqlite3.connect(study.path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(connection.execute("SELECT key, value FROM meta"))
        assert meta["schema_version"] == str(SCHEMA_VERSION)
        assert meta["application"] == "medtune" and meta["name"] == "demo"
        assert connection.execute("SELECT state, value, config FROM trials").fetchall() == [
            ("COMPLETE", 0.5, '{"x": 1}')]
        assert connection.execute("SELECT * FROM intermediate_values").fetchall() == [
            (1, 1.0, None)]
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        connection.close()


def test_requeue_orphans_marks_running_trials_and_they_do_not_count(study):
    done = study.create_trial(suggestion_id=0, config={}, seed=0)
    study.complete_trial(done, 1.0)
    orphans = [study.create_trial(suggestion_id=i, config={}, seed=0) for i in (1, 2)]
    requeued = study.requeue_orphans()
    assert [t.id for t in requeued] == orphans
    assert all(t.state is TrialState.REQUEUED for t in requeued)
    assert study.count() == 1 and study.count([TrialState.RUNNING]) == 0
    again = study.create_trial(suggestion_id=1, config={}, seed=0, requeued_from=orphans[0])
    assert again == 4 and study.trial(again).requeued_from == orphans[0]


def test_a_result_is_recorded_once_and_must_be_valid(study):
    trial = study.create_trial(suggestion_id=0, config={}, seed=0)
    with pytest.raises(ValueError, match="finite"):
        study.complete_trial(trial, math.nan)
    study.complete_trial(trial, 1.0)
    with pytest.raises(StudyStoreError, match="trial 1 is COMPLETE, not RUNNING"):
        study.fail_trial(trial, "exception", "boom")
    with pytest.raises(StudyStoreError, match="no trial 99"):
        study.complete_trial(99, 1.0)
    with pytest.raises(ValueError, match="JSON"):
        study.create_trial(suggestion_id=1, config={"f": object()}, seed=0)
    with pytest.raises(ValueError, match="reason|FailureReason"):
        study.fail_trial(trial, "gremlins", "boom")


def test_ids_are_never_reused_even_after_rows_are_deleted(study):
    ids = [study.create_trial(suggestion_id=i, config={}, seed=0) for i in range(3)]
    connection = sqlite3.connect(study.path)
    connection.execute("DELETE FROM trials WHERE id = ?", (ids[-1],))
    connection.commit()
    connection.close()
    assert study.create_trial(suggestion_id=3, config={}, seed=0) == ids[-1] + 1


def test_missing_foreign_corrupt_and_newer_files_are_refused_by_name(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(StudyStoreError, match="no study at .*missing.db"):
        StudyStore(missing)

    foreign = tmp_path / "foreign.db"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE patients (id INTEGER)")
    connection.commit()
    connection.close()
    with pytest.raises(NotAStudyError, match="foreign.db is an SQLite database but not a medtune"):
        StudyStore(foreign)

    other_meta = tmp_path / "other.db"
    connection = sqlite3.connect(other_meta)
    connection.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    connection.execute("INSERT INTO meta VALUES ('application', 'optuna')")
    connection.commit()
    connection.close()
    with pytest.raises(NotAStudyError, match="other.db is an SQLite database but not a medtune"):
        StudyStore(other_meta)

    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(NotAStudyError, match="empty.db"):
        StudyStore(empty)

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all, just text\n" * 100)
    with pytest.raises(NotAStudyError, match="garbage.db is damaged or not an SQLite database"):
        StudyStore(garbage)

    newer = tmp_path / "newer.db"
    StudyStore.create(newer).close()
    connection = sqlite3.connect(newer)
    connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                       (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()
    with pytest.raises(NotAStudyError, match=f"newer.db has study schema version "
                                             f"{SCHEMA_VERSION + 1}.*upgrade medtune"):
        StudyStore(newer)

    with pytest.raises(StudyStoreError, match="newer.db already exists"):
        StudyStore.create(newer)
    with pytest.raises(ValueError, match="direction"):
        StudyStore.create(tmp_path / "bad.db", direction="sideways")


def test_damaged_pages_are_reported_by_name(tmp_path):
    path = tmp_path / "damaged.db"
    with StudyStore.create(path) as store:
        for index in range(200):
            store.create_trial(suggestion_id=index, config={"pad": "x" * 200}, seed=index)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(page_size, len(data)):  # keep the header, wreck every page after it
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(NotAStudyError, match="damaged.db"):
        with StudyStore(path) as store:
            store.trials()


def test_a_held_lock_is_waited_for_and_retried(study, monkeypatch):
    monkeypatch.setattr(database_module, "_BUSY_TIMEOUT", 0.05)
    store = StudyStore(study.path)  # its connection waits 50 ms per attempt, then retries
    blocker = sqlite3.connect(study.path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.6, lambda: blocker.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        trial = store.create_trial(suggestion_id=0, config={}, seed=0)
    finally:
        release.join()
        blocker.close()
    assert time.monotonic() - started >= 0.5
    assert store.trial(trial).state is TrialState.RUNNING
    store.close()


def test_a_lock_held_too_long_raises_a_clear_error(study, monkeypatch):
    monkeypatch.setattr(database_module, "_BUSY_TIMEOUT", 0.05)
    store = StudyStore(study.path, lock_timeout=0.3)
    blocker = sqlite3.connect(study.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StudyLockedError, match="study.db stayed locked"):
            store.create_trial(suggestion_id=0, config={}, seed=0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        store.close()


def _hammer(path: str, worker: int, n: int, errors) -> None:
    try:
        with StudyStore(path) as store:
            for index in range(n):
                trial = store.create_trial(suggestion_id=worker * 1000 + index,
                                           config={"worker": worker}, seed=index)
                store.complete_trial(trial, float(index),
                                     Execution(intermediate=((1, 1.0), (2, 0.5))))
                store.trials([TrialState.COMPLETE])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")


def test_concurrent_writers_in_several_processes_never_see_database_is_locked(study):
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    n_workers, n_trials = 4, 40
    processes = [context.Process(target=_hammer, args=(str(study.path), w, n_trials, errors))
                 for w in range(n_workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert not messages, messages
    assert all(p.exitcode == 0 for p in processes)
    trials = study.trials()
    assert len(trials) == n_workers * n_trials
    assert len({t.id for t in trials}) == len(trials)
    assert sorted(t.completion_order for t in trials) == list(range(1, len(trials) + 1))
    assert all(t.intermediate == {1.0: 1.0, 2.0: 0.5} for t in trials)
    connection = sqlite3.connect(study.path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()


def test_one_driver_at_a_time(study):
    with driver_lock(study.path):
        with pytest.raises(StudyStoreError, match=r"study.db is being run by pid \d+"):
            with driver_lock(study.path):
                pass
    with driver_lock(study.path):  # released on exit
        pass


def _damage(path, sql: str, parameters=()) -> None:
    """Change the file behind the store's back, as a crash, a disk fault or a hand edit might."""
    connection = sqlite3.connect(path)
    connection.execute(sql, parameters)
    connection.commit()
    connection.close()


def _three_trials(store: StudyStore) -> None:
    for index, value in enumerate([0.5, 0.1, 0.9]):
        trial = store.create_trial(suggestion_id=index, config={"i": index}, seed=index)
        store.complete_trial(trial, value, Execution(metrics={"dice": value}))


@pytest.mark.parametrize("column, text, problem", [
    ("config", "{not json", "config is not valid JSON"),
    ("metrics", "[1, 2]", "metrics is not a JSON object"),
    ("started", "yesterday", "started is 'yesterday', not an ISO 8601 date"),
    ("value", "fast", "value is 'fast', not a number"),
])
def test_a_damaged_trial_is_left_out_and_named_once(study, caplog, column, text, problem):
    _three_trials(study)
    _damage(study.path, f"UPDATE trials SET {column} = ? WHERE id = 2", (text,))  # the best one
    with StudyStore(study.path, read_only=True) as store, caplog.at_level("WARNING"):
        assert [t.id for t in store.trials()] == [1, 3]
        assert [t.id for t in store.trials([TrialState.COMPLETE])] == [1, 3]
        assert store.best_trial().id == 1  # the damaged best is passed over
        assert list(store.damaged_trials()) == [2] and problem in store.damaged_trials()[2]
        with pytest.raises(DamagedTrialError, match=f"trial 2 is damaged \\({problem}"):
            store.trial(2)
        assert store.trial(3).value == 0.9
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # one per trial, however often it is read
    assert "study.db: trial 2 is damaged" in warnings[0] and "\n" not in warnings[0]


def test_resume_refuses_a_damaged_study_naming_the_trial_and_changes_nothing(tmp_path):
    from medtune.study import RunOptions, resume_study, run_study
    from tests.framework.study_fakes import FakeSearcher

    path = tmp_path / "s.db"
    with StudyStore.create(path, seed=2) as store:
        run_study(store, FakeSearcher(store.seed), "tests.framework.study_fakes:quadratic",
                  RunOptions(n_trials=3, progress=False))
        orphan = store.create_trial(suggestion_id=3, config={"index": 3}, seed=0)
    _damage(path, "UPDATE trials SET finished = 'soon' WHERE id = 2")
    before = path.read_bytes()
    with pytest.raises(DamagedTrialError) as refused:
        resume_study(path, FakeSearcher, "tests.framework.study_fakes:quadratic",
                     RunOptions(n_trials=5, progress=False))
    message = str(refused.value)
    assert "s.db: trial 2 is damaged (finished is 'soon'" in message and "cannot resume" in message
    assert "\n" not in message
    assert path.read_bytes() == before
    with StudyStore(path, read_only=True) as store:
        assert store.trial(orphan).state is TrialState.RUNNING  # not requeued


def test_damaged_metadata_is_refused_by_name(study):
    _damage(study.path, "UPDATE meta SET value = 'last week' WHERE key = 'created'")
    with pytest.raises(NotAStudyError, match="study.db: the study's meta table is damaged"):
        StudyStore(study.path)


def _version_1_study(path) -> None:
    """A study as schema version 1 wrote it (no metrics or artifact column), with one trial."""
    with StudyStore.create(path) as store:
        store.complete_trial(store.create_trial(suggestion_id=0, config={"x": 1}, seed=0), 2.0)
    _damage(path, "ALTER TABLE trials DROP COLUMN metrics")
    _damage(path, "ALTER TABLE trials DROP COLUMN artifact")
    _damage(path, "UPDATE meta SET value = '1' WHERE key = 'schema_version'")


def test_a_read_only_store_never_writes_the_file_not_even_to_upgrade_it(tmp_path):
    path = tmp_path / "old.db"
    _version_1_study(path)
    before = path.read_bytes()
    with StudyStore(path, read_only=True) as store:
        assert store.info.schema_version == 1  # the file's; read through an upgraded copy
        (trial,) = store.trials()
        assert trial.value == 2.0 and trial.metrics == {}
        with pytest.raises(StudyStoreError, match="old.db was opened read-only"):
            store.create_trial(suggestion_id=1, config={}, seed=0)
    assert path.read_bytes() == before
    with StudyStore(path) as store:  # a writer upgrades it
        assert store.info.schema_version == SCHEMA_VERSION
    assert path.read_bytes() != before
