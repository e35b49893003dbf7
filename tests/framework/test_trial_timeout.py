"""Per-trial time limits: a hanging trial is stopped, recorded FAIL with reason ``timeout``, and
the study goes on, on every executor; the limit a task declares, and the one a study sets."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from medtune.config import ConfigError, parse_config
from medtune.study import (
    ExecutorError,
    FailureReason,
    InlineExecutor,
    StudyStore,
    TrialState,
    TrialTask,
    RunOptions,
    make_executor,
    run_study,
    run_trial,
)
from medtune.study import store as store_module
from medtune.tasks import ConfiguredObjective
from tests.conftest import alive
from tests.framework import stop_fakes
from tests.framework.study_fakes import FakeSearcher

LIMIT = 1.5  # seconds: the hanging trial is stopped after this


def _check_timed_out_study(store: StudyStore, elapsed: float, n_trials: int) -> None:
    trials = store.trials()
    assert store.count() == n_trials and len(trials) == n_trials
    by_index = {t.config["index"]: t for t in trials}
    hung = by_index[1]
    assert hung.state is TrialState.FAIL and hung.failure_reason is FailureReason.TIMEOUT
    assert f"trial_timeout = {LIMIT:g} s" in hung.traceback
    assert hung.host and hung.worker_pid and hung.duration >= LIMIT
    assert all(t.state is TrialState.COMPLETE for i, t in by_index.items() if i != 1)
    assert elapsed < 60  # stopped, not slept for an hour


@pytest.mark.parametrize("objective", ["hangs_on_index_1", "spins_on_index_1"])
def test_inline_executor_stops_a_hanging_trial_and_the_study_completes(tmp_path, objective):
    with StudyStore.create(tmp_path / "s.db") as store:
        clock = time.monotonic()
        summary = run_study(store, FakeSearcher(0), f"tests.framework.stop_fakes:{objective}",
                            RunOptions(n_trials=4, trial_timeout=LIMIT, progress=False))
        elapsed = time.monotonic() - clock
        assert summary.stop_reason == "n_trials" and summary.n_failed == 1
        _check_timed_out_study(store, elapsed, 4)
        hung = [t for t in store.trials() if t.state is TrialState.FAIL][0]
        # the stop lands inside the objective: the traceback shows where it hung
        assert "TrialTimeout" in hung.traceback and "stop_fakes.py" in hung.traceback
        assert hung.worker_pid == os.getpid()


def test_process_executor_kills_a_hanging_worker_and_starts_another(tmp_path):
    with StudyStore.create(tmp_path / "s.db") as store:
        clock = time.monotonic()
        summary = run_study(store, FakeSearcher(0), "tests.framework.stop_fakes:hangs_on_index_1",
                            RunOptions(executor="process", n_trials=5, n_workers=2,
                                       trial_timeout=LIMIT, progress=False))
        elapsed = time.monotonic() - clock
        assert summary.n_complete == 4 and summary.n_failed == 1
        _check_timed_out_study(store, elapsed, 5)
        hung = [t for t in store.trials() if t.state is TrialState.FAIL][0]
        assert hung.worker_pid != os.getpid() and f"pid {hung.worker_pid}" in hung.traceback
        assert not alive(hung.worker_pid)  # killed, not left sleeping
        later = [t for t in store.trials() if t.id > hung.id]
        assert later and hung.worker_pid not in {t.worker_pid for t in later}


def test_ray_executor_cancels_a_hanging_task(tmp_path, ray_cluster):
    with StudyStore.create(tmp_path / "s.db") as store:
        clock = time.monotonic()
        summary = run_study(store, FakeSearcher(0), "tests.framework.stop_fakes:hangs_on_index_1",
                            RunOptions(executor="ray", n_trials=4, n_workers=2,
                                       trial_timeout=LIMIT, progress=False,
                                       executor_options={"address": ray_cluster}))
        elapsed = time.monotonic() - clock
        assert summary.n_complete == 3 and summary.n_failed == 1
        _check_timed_out_study(store, elapsed, 4)
        hung = [t for t in store.trials() if t.state is TrialState.FAIL][0]
        assert hung.worker_pid != os.getpid() and "cancelled (force" in hung.traceback


def test_an_objective_that_catches_the_stop_is_stopped_again_and_fails():
    task = TrialTask(1, {"index": 0, "x": 0.5}, None, 0)
    clock = time.monotonic()
    result = run_trial(stop_fakes.catches_every_stop, task, time_limit=0.2)
    assert time.monotonic() - clock < 30  # 0.2 s, then a stop every second, three caught
    assert result.state is TrialState.FAIL and result.failure_reason is FailureReason.TIMEOUT
    assert "caught the stop" in result.traceback


def test_the_alarm_is_disarmed_after_a_trial():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    result = run_trial(stop_fakes.declares_a_limit, TrialTask(1, {"x": 0.5}, None, 0),
                       time_limit=0.3)
    assert result.state is TrialState.COMPLETE
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) == before
    time.sleep(0.4)  # no stop arrives later


def test_a_task_declares_its_limit_and_the_study_overrides_it():
    reference = "tests.framework.stop_fakes:declares_a_limit"
    for objective in (reference, stop_fakes.declares_a_limit, ConfiguredObjective(reference)):
        assert make_executor("inline", objective).trial_timeout == 0.5
        assert make_executor("inline", objective, trial_timeout=7).trial_timeout == 7.0
        assert make_executor("inline", objective, trial_timeout=0).trial_timeout is None
    # the built-in tasks declare none: a trial lasts as long as its settings ask
    task = ConfiguredObjective("segmentation")
    assert task.trial_timeout is None
    assert make_executor("inline", task).trial_timeout is None
    with pytest.raises(ExecutorError, match="trial_timeout must be a positive number"):
        make_executor("inline", reference, trial_timeout=-1)


def test_a_declared_timeout_stops_a_study_without_a_study_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(stop_fakes.hangs_on_index_1, "trial_timeout", 0.5, raising=False)
    with StudyStore.create(tmp_path / "s.db") as store:
        summary = run_study(store, FakeSearcher(0), stop_fakes.hangs_on_index_1,
                            RunOptions(n_trials=3, progress=False))
        assert summary.n_failed == 1
        (hung,) = store.trials([TrialState.FAIL])
        assert hung.failure_reason is FailureReason.TIMEOUT and "0.5 s" in hung.traceback


def test_the_inline_timer_needs_the_main_thread():
    errors = []

    def build():
        try:
            InlineExecutor("tests.framework.study_fakes:quadratic", trial_timeout=1)
        except ExecutorError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0] and "executor 'process'" in errors[0]


def test_trial_timeout_is_a_study_setting():
    space = '\n[space.x]\ntype = "float"\nlow = 0\nhigh = 1\n'
    assert parse_config("[study]\ntrial_timeout = 90" + space).trial_timeout == 90.0
    assert parse_config("[study]\ntrial_timeout = 0" + space).trial_timeout == 0.0
    assert parse_config("[study]" + space).trial_timeout is None
    with pytest.raises(ConfigError, match="study.trial_timeout: expected a positive number"):
        parse_config("[study]\ntrial_timeout = -5" + space)


def test_an_older_study_file_takes_the_new_failure_reasons(tmp_path):
    """A study written by schema version 2 (whose table refused 'timeout') is upgraded when a
    driver opens it, and then records a trial that timed out."""
    path = tmp_path / "v2.db"
    with StudyStore.create(path) as store:
        trial_id = store.create_trial(suggestion_id=0, config={"x": 1}, seed=0)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("ALTER TABLE trials DROP COLUMN artifact")  # added by version 4
    connection.execute("PRAGMA writable_schema = ON")  # the table as version 2 defined it
    connection.execute(
        "UPDATE sqlite_master SET sql = replace(sql, ''',\n                                  "
        "''timeout'', ''interrupted'')', ''')') WHERE name = 'trials'")
    connection.execute("PRAGMA writable_schema = RESET")
    connection.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    assert "'timeout'" not in connection.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'trials'").fetchone()[0]
    connection.close()
    with StudyStore(path) as store:
        assert store.info.schema_version == store_module.SCHEMA_VERSION == 4
        store.fail_trial(trial_id, FailureReason.TIMEOUT, "stopped")
        assert store.trial(trial_id).failure_reason is FailureReason.TIMEOUT
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
