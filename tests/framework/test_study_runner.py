"""The study loop: running, failures and their policy, resuming (also after SIGKILL), Ray."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from medtune.study import (
    ExecutorError,
    FailureReason,
    RunOptions,
    StudyInterrupted,
    StudyRunError,
    StudyStore,
    StudyStoreError,
    TrialState,
    driver_lock,
    make_executor,
    resume_study,
    run_study,
    trial_seed,
)
from tests.conftest import alive
from tests.conftest import python_path as _python_path
from tests.framework.study_fakes import FAILURE_KINDS, FakeSearcher, Scaled

ROOT = Path(__file__).resolve().parents[2]
QUIET = RunOptions(progress=False)


def _run(**options) -> RunOptions:
    """Run options without a progress bar."""
    return RunOptions(progress=False, **options)


def _integrity(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def test_inline_study_records_every_trial_and_tells_the_searcher(tmp_path, capsys):
    store = StudyStore.create(tmp_path / "s.db", seed=3)
    searcher = FakeSearcher(store.seed)
    summary = run_study(store, searcher, "tests.framework.study_fakes:quadratic",
                        RunOptions(n_trials=6, progress=True))
    assert summary.stop_reason == "n_trials"
    assert (summary.n_complete, summary.n_failed, summary.n_requeued) == (6, 0, 0)
    trials = store.trials()
    assert [t.id for t in trials] == [1, 2, 3, 4, 5, 6]
    assert [t.suggestion_id for t in trials] == [0, 1, 2, 3, 4, 5]
    assert all(t.seed == trial_seed(3, t.suggestion_id) for t in trials)
    assert all(t.intermediate.keys() == {1.0, 2.0} for t in trials)
    assert searcher.told == [(t.suggestion_id, t.value, False) for t in trials]
    assert summary.best.value == min(t.value for t in trials)
    assert "study s" in capsys.readouterr().out
    store.close()


def test_study_ends_when_the_searcher_has_nothing_more(tmp_path):
    with StudyStore.create(tmp_path / "s.db") as store:
        summary = run_study(store, FakeSearcher(0, limit=4),
                            "tests.framework.study_fakes:quadratic", QUIET)
        assert summary.stop_reason == "searcher" and summary.n_complete == 4


def test_timeout_stops_new_trials(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTUNE_TEST_SLEEP", "0.2")
    with StudyStore.create(tmp_path / "s.db") as store:
        summary = run_study(store, FakeSearcher(0), "tests.framework.study_fakes:sleeps",
                            _run(timeout=0.5))
        assert summary.stop_reason == "timeout"
        assert 2 <= summary.n_complete <= 4


def test_the_searcher_hears_values_as_they_are_and_scores_them_by_its_direction(tmp_path):
    with StudyStore.create(tmp_path / "s.db", direction="maximize") as store:
        searcher = FakeSearcher(0, direction="maximize")
        summary = run_study(store, searcher, "tests.framework.study_fakes:quadratic",
                            _run(n_trials=5))
        trials = store.trials()
        values = {t.suggestion_id: t.value for t in trials}
        assert searcher.told == [(i, -values[i], False) for i, _, _ in searcher.told]
        assert all((t.told_value, t.told_failed) == (t.value, False) for t in trials)
        assert summary.best.value == max(values.values())
        assert searcher.best[1] == max(values.values())


def test_a_searcher_built_for_the_other_direction_is_refused(tmp_path):
    with StudyStore.create(tmp_path / "s.db", direction="maximize") as store:
        with pytest.raises(StudyRunError, match="build it with direction='maximize'"):
            run_study(store, FakeSearcher(0), "tests.framework.study_fakes:quadratic",
                      _run(n_trials=2))
        assert store.count() == 0


@pytest.mark.parametrize("policy", ["exclude", "penalize"])
def test_failed_trials_are_recorded_and_the_study_completes(tmp_path, policy):
    with StudyStore.create(tmp_path / "s.db", seed=5) as store:
        searcher = FakeSearcher(store.seed, on_failure=policy)
        summary = run_study(store, searcher, "tests.framework.study_fakes:failing",
                            _run(n_trials=12))
        assert summary.stop_reason == "n_trials"
        trials = {t.config["index"]: t for t in store.trials()}
        assert len(trials) == 12 and store.count() == 12
        expected = {"exception": FailureReason.EXCEPTION, "nan": FailureReason.NAN,
                    "memory": FailureReason.OUT_OF_MEMORY, "cuda_oom": FailureReason.OUT_OF_MEMORY}
        for index, trial in trials.items():
            kind = FAILURE_KINDS.get(index % 6)
            if kind in expected:
                assert trial.state is TrialState.FAIL
                assert trial.failure_reason is expected[kind]
                assert trial.traceback
            elif kind == "pruned":
                assert trial.state is TrialState.PRUNED and trial.value == 0.5
            else:
                assert trial.state is TrialState.COMPLETE
        assert (summary.n_complete, summary.n_pruned, summary.n_failed) == (2, 2, 8)
        # the study reports outcomes; the searcher's policy decides what a failure counts as
        scores = {suggestion_id: (score, failed) for suggestion_id, score, failed in searcher.told}
        worst_so_far = None
        for trial in sorted(trials.values(), key=lambda t: t.completion_order):
            score, failed = scores[trial.suggestion_id]
            if trial.state is TrialState.FAIL:
                assert (trial.told_value, trial.told_failed) == (None, True)
                # excluded; or penalised with the worst value so far (worse than any before)
                penalty = math.inf if worst_so_far is None else worst_so_far
                assert (score, failed) == ((None if policy == "exclude" else penalty), True)
            else:
                assert (trial.told_value, trial.told_failed) == (trial.value, False)
                assert (score, failed) == (trial.value, False)
                worst_so_far = (trial.value if worst_so_far is None
                                else max(worst_so_far, trial.value))


def test_an_explicit_penalty_is_what_a_failure_counts_as(tmp_path):
    with StudyStore.create(tmp_path / "s.db") as store:
        searcher = FakeSearcher(0, on_failure="penalize", penalty=10.0)
        run_study(store, searcher, "tests.framework.study_fakes:failing", _run(n_trials=3))
        assert searcher.told[1] == (1, 10.0, True)


def test_process_study_survives_a_dying_worker(tmp_path):
    with StudyStore.create(tmp_path / "s.db") as store:
        summary = run_study(store, FakeSearcher(0), "tests.framework.study_fakes:dies_on_index_1",
                            _run(executor="process", n_trials=5, n_workers=2))
        assert (summary.n_complete, summary.n_failed) == (4, 1)
        (dead,) = store.trials([TrialState.FAIL])
        assert dead.config["index"] == 1 and dead.failure_reason is FailureReason.WORKER_DIED


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_trials must be an integer >= 0 or None, got -1"):
        RunOptions(n_trials=-1)
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        RunOptions(timeout=0)
    with pytest.raises(ExecutorError, match="unknown executor 'procss' \\(did you mean 'process'"):
        RunOptions(executor="procss")
    with pytest.raises(ExecutorError, match="inline executor runs one trial at a time"):
        RunOptions(n_workers=2)
    with pytest.raises(ExecutorError, match="the process executor takes no options, got address"):
        RunOptions(executor="process", n_workers=2, executor_options={"address": "auto"})
    objective = "tests.framework.study_fakes:quadratic"
    with StudyStore.create(tmp_path / "s.db") as store:
        with pytest.raises(StudyRunError, match="driven by a medtune.search.Searcher, got dict"):
            run_study(store, {"ask": None}, objective, QUIET)
        asked = FakeSearcher(0)
        asked.ask()
        with pytest.raises(StudyRunError, match="asked 1 times already"):
            run_study(store, asked, objective, QUIET)
        with make_executor("inline", objective) as executor:
            with pytest.raises(ValueError, match="not the one the options describe"):
                run_study(store, FakeSearcher(0), objective,
                          _run(executor="process", n_workers=2), executor=executor)
        assert store.count() == 0
        run_study(store, FakeSearcher(0), objective, _run(n_trials=1))
        with pytest.raises(StudyRunError, match="already has 1 trials: continue it with"):
            run_study(store, FakeSearcher(0), objective, _run(n_trials=2))


def test_resume_continues_a_finished_run_without_rerunning_anything(tmp_path):
    path = tmp_path / "s.db"
    with StudyStore.create(path, seed=9) as store:
        run_study(store, FakeSearcher(store.seed, batch=2), "tests.framework.study_fakes:failing",
                  _run(n_trials=7))
        before = store.trials()
    searchers = []

    def factory(seed):
        searchers.append(FakeSearcher(seed, batch=2))
        return searchers[-1]

    summary = resume_study(path, factory, "tests.framework.study_fakes:failing",
                           _run(n_trials=12))
    assert summary.n_requeued == 0
    with StudyStore(path) as store:
        after = store.trials()
    assert after[:7] == before
    assert [t.id for t in after] == list(range(1, 13))
    assert [t.suggestion_id for t in after] == list(range(12))
    assert len(searchers[0].told) == 12


def _other_proposals(seed: int) -> FakeSearcher:
    """A searcher built with the study's seed that proposes other configurations."""
    searcher = FakeSearcher(seed)
    searcher._random.seed(seed + 1)
    return searcher


def test_resume_refuses_a_searcher_that_does_not_replay(tmp_path):
    path = tmp_path / "s.db"
    objective = "tests.framework.study_fakes:quadratic"
    with StudyStore.create(path, seed=9) as store:
        run_study(store, FakeSearcher(store.seed), objective, _run(n_trials=3))
    with pytest.raises(StudyRunError, match="trial 1 should be proposal 0"):
        resume_study(path, _other_proposals, objective, _run(n_trials=5))
    with pytest.raises(StudyRunError, match="built with seed 3, but the study's seed is 9"):
        resume_study(path, FakeSearcher(3), objective, _run(n_trials=5))
    summary = resume_study(path, FakeSearcher(9), objective, _run(n_trials=5))  # built, seed 9
    assert summary.n_complete == 5


def test_an_interrupted_run_records_its_trial_in_flight_and_resume_reruns_it(
    tmp_path, monkeypatch
):
    path = tmp_path / "s.db"
    monkeypatch.setenv("MEDTUNE_TEST_INTERRUPT", "1")
    with StudyStore.create(path, seed=4) as store:
        with pytest.raises(StudyInterrupted) as raised:  # a KeyboardInterrupt
            run_study(store, FakeSearcher(store.seed),
                      "tests.framework.study_fakes:interrupt_on_index_3", _run(n_trials=6))
        assert isinstance(raised.value, KeyboardInterrupt) and raised.value.trial_ids == [4]
        assert str(raised.value) == ("Interrupted: 1 trial in flight recorded as interrupted; "
                                     f"continue with `medtune resume {path}`")
        trials = store.trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.REQUEUED]
        assert trials[3].failure_reason is FailureReason.INTERRUPTED
        assert "interrupted (Ctrl-C)" in trials[3].traceback and trials[3].finished
    monkeypatch.setenv("MEDTUNE_TEST_INTERRUPT", "0")
    summary = resume_study(path, FakeSearcher, "tests.framework.study_fakes:interrupt_on_index_3",
                           _run(n_trials=6))
    assert (summary.n_complete, summary.n_requeued) == (6, 1)
    with StudyStore(path) as store:
        trials = store.trials()
    orphan, rerun = trials[3], trials[4]
    assert orphan.state is TrialState.REQUEUED
    assert rerun.requeued_from == orphan.id and rerun.state is TrialState.COMPLETE
    assert (rerun.suggestion_id, rerun.config, rerun.seed) == (
        orphan.suggestion_id, orphan.config, orphan.seed)
    assert [t.suggestion_id for t in trials] == [0, 1, 2, 3, 3, 4, 5]


SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
         "width": {"type": "ordinal", "values": [4, 8, 16]},
         "loss": {"type": "categorical", "choices": ["dice", "glf"]},
         "depth": {"type": "int", "low": 1, "high": 4}}


def _hyperband(seed):
    import medtune

    return medtune.create("searcher", "hyperband", space=SPACE, seed=seed, R=9, eta=3,
                          searcher="random", direction="maximize")


def test_an_interrupted_hyperband_study_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch
):
    from tests.framework import study_fakes

    def outcome(path):
        with StudyStore(path) as store:
            return sorted((t.suggestion_id, t.config, t.resource, t.value)
                          for t in store.trials() if t.state.finished)

    with StudyStore.create(tmp_path / "reference.db", seed=5, direction="maximize") as store:
        reference = run_study(store, _hyperband(store.seed),
                              "tests.framework.study_fakes:synthetic", QUIET)
    assert reference.stop_reason == "searcher" and reference.n_complete > 12

    monkeypatch.setattr(study_fakes, "calls", 0)
    monkeypatch.setenv("MEDTUNE_TEST_INTERRUPT_AT", "12")
    path = tmp_path / "interrupted.db"
    with StudyStore.create(path, seed=5, direction="maximize") as store:
        with pytest.raises(KeyboardInterrupt):
            run_study(store, _hyperband(store.seed), "tests.framework.study_fakes:synthetic",
                      QUIET)
    monkeypatch.setenv("MEDTUNE_TEST_INTERRUPT_AT", "0")
    resumed = resume_study(path, _hyperband, "tests.framework.study_fakes:synthetic", QUIET)
    assert resumed.n_requeued == 1
    assert outcome(path) == outcome(tmp_path / "reference.db")
    assert resumed.best.value == reference.best.value


def test_resume_refuses_while_another_driver_runs_the_study(tmp_path):
    path = tmp_path / "s.db"
    StudyStore.create(path).close()
    with driver_lock(path):
        with pytest.raises(StudyStoreError, match="is being run by pid"):
            resume_study(path, FakeSearcher, "tests.framework.study_fakes:quadratic",
                         _run(n_trials=2))


# ------------------------------------------------------------------------------ SIGKILL

_DRIVER = textwrap.dedent("""
    import sys
    from medtune.study import RunOptions, StudyStore, run_study
    from tests.framework.study_fakes import FakeSearcher

    store = StudyStore.create(sys.argv[1], seed=21)
    run_study(store, FakeSearcher(store.seed, batch=3), "tests.framework.study_fakes:logged",
              RunOptions(executor="process", n_trials=int(sys.argv[2]), n_workers=2,
                         progress=False))
""")


def _side_entries(side: Path) -> list[tuple[str, int, int]]:
    entries = []
    for line in side.read_text().splitlines():
        session, index, pid = line.split()
        entries.append((session, int(index), int(pid)))
    return entries


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and /proc checks need Linux")
def test_sigkill_mid_study_then_resume_loses_nothing_and_runs_nothing_twice(
    tmp_path, monkeypatch
):
    path, side, n_trials = tmp_path / "killed.db", tmp_path / "side.txt", 14
    env = dict(os.environ, PYTHONPATH=_python_path(), MEDTUNE_TEST_SIDE_FILE=str(side),
               MEDTUNE_TEST_SESSION="first", MEDTUNE_TEST_SLEEP="0.4")
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(path), str(n_trials)],
                              env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, "the driver made no progress in 60 s"
            if path.exists():
                try:
                    with StudyStore(path) as store:
                        done = store.count([TrialState.COMPLETE])
                        running = store.count([TrialState.RUNNING])
                except StudyStoreError:
                    done = running = 0  # caught mid-creation
                if done >= 5 and running >= 1:
                    break
            time.sleep(0.02)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGKILL

    # The workers die with the driver: nothing of the first session keeps running.
    first_pids = {pid for session, _, pid in _side_entries(side) if session == "first"}
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in first_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in first_pids)

    assert _integrity(path) == "ok"
    with StudyStore(path) as store:
        snapshot = {t.id: t for t in store.trials()}
    completed_before = {i: t for i, t in snapshot.items() if t.state is TrialState.COMPLETE}
    orphans = {i for i, t in snapshot.items() if t.state is TrialState.RUNNING}
    assert len(completed_before) >= 5 and orphans

    monkeypatch.setenv("MEDTUNE_TEST_SIDE_FILE", str(side))
    monkeypatch.setenv("MEDTUNE_TEST_SESSION", "second")
    monkeypatch.setenv("MEDTUNE_TEST_SLEEP", "0.1")
    summary = resume_study(path, lambda seed: FakeSearcher(seed, batch=3),
                           "tests.framework.study_fakes:logged",
                           _run(executor="process", n_trials=n_trials, n_workers=2))

    assert _integrity(path) == "ok"
    with StudyStore(path) as store:
        final = {t.id: t for t in store.trials()}
    # every trial completed before the kill is still there, unchanged
    assert all(final[i] == t for i, t in completed_before.items())
    # orphans were requeued: marked, not counted, and re-run as new trials
    assert {i for i, t in final.items() if t.state is TrialState.REQUEUED} == orphans
    reruns = {t.requeued_from: t for t in final.values() if t.requeued_from is not None}
    assert set(reruns) == orphans
    assert all(reruns[i].config == snapshot[i].config and reruns[i].id > max(snapshot)
               for i in orphans)
    # the requested number of trials, no id reused, each proposal finished once
    assert summary.n_complete == n_trials == store_count(path)
    assert sorted(final) == list(range(1, len(final) + 1))
    finished = [t for t in final.values() if t.state.finished]
    assert len({t.suggestion_id for t in finished}) == len(finished) == n_trials
    # no proposal ran twice in one session; the second ran each orphan again (the first may
    # have been killed before an orphan's objective started) and none that had completed
    entries = _side_entries(side)
    first_runs = Counter(index for session, index, _ in entries if session == "first")
    second_runs = Counter(index for session, index, _ in entries if session == "second")
    assert max(first_runs.values()) == 1 and max(second_runs.values()) == 1
    orphan_indexes = {snapshot[i].config["index"] for i in orphans}
    done_indexes = {t.config["index"] for t in completed_before.values()}
    assert done_indexes <= set(first_runs) and not done_indexes & set(second_runs)
    assert orphan_indexes <= set(second_runs)
    assert set(first_runs) | set(second_runs) == {t.config["index"] for t in finished}


def store_count(path: Path) -> int:
    with StudyStore(path) as store:
        return store.count([TrialState.COMPLETE])


# ---------------------------------------------------------------------------------- Ray


def test_ray_executor_runs_the_same_study_on_a_local_cluster(tmp_path, ray_cluster):
    n_trials = 5
    with StudyStore.create(tmp_path / "process.db", seed=2) as store:
        local = run_study(store, FakeSearcher(store.seed),
                          "tests.framework.study_fakes:dies_on_index_1",
                          _run(executor="process", n_trials=n_trials, n_workers=2))
    with StudyStore.create(tmp_path / "ray.db", seed=2) as store:
        summary = run_study(store, FakeSearcher(store.seed),
                            "tests.framework.study_fakes:dies_on_index_1",
                            _run(executor="ray", n_trials=n_trials, n_workers=2,
                                 executor_options={"address": ray_cluster}))
        trials = store.trials()
    assert (summary.n_complete, summary.n_failed) == (local.n_complete, local.n_failed) == (4, 1)
    (dead,) = [t for t in trials if t.state is TrialState.FAIL]
    assert dead.config["index"] == 1 and dead.failure_reason is FailureReason.WORKER_DIED
    # the worker that died is named: its task said where it ran when it started
    assert dead.host and dead.worker_pid not in (None, os.getpid())
    assert f"pid {dead.worker_pid} on {dead.host}" in dead.traceback
    ran = [t for t in trials if t.state is TrialState.COMPLETE]
    assert all(t.worker_pid not in (None, os.getpid()) for t in ran)  # ran on Ray workers

    # a callable object (as `medtune run` passes) travels too, its class imported by name
    with StudyStore.create(tmp_path / "object.db", seed=2) as store:
        summary = run_study(store, FakeSearcher(store.seed), Scaled(2.0),
                            _run(executor="ray", n_trials=3, n_workers=2,
                                 executor_options={"address": ray_cluster}))
        assert summary.n_complete == 3
        assert all(t.value == 2.0 * t.config["x"] ** 2 for t in store.trials())
    assert _integrity(tmp_path / "ray.db") == "ok"
