"""Readers while a study runs: status and the HTML report read the study file as its driver
writes it, never see "database is locked", and never change it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from medtune.report import write_report
from medtune.study import StudyStore, StudyStoreError, TrialState
from tests.conftest import python_path

ROOT = Path(__file__).resolve().parents[2]

_DRIVER = textwrap.dedent("""
    import sys
    from medtune.study import RunOptions, StudyStore, run_study
    from tests.framework.study_fakes import FakeSearcher

    store = StudyStore.create(sys.argv[1], seed=3)
    run_study(store, FakeSearcher(store.seed), "tests.framework.study_fakes:sleeps",
              RunOptions(n_trials=int(sys.argv[2]), progress=False))
""")


def test_reports_while_the_driver_writes(tmp_path):
    path, n_trials = tmp_path / "live.db", 30
    env = dict(os.environ, PYTHONPATH=python_path(), MEDTUNE_TEST_SLEEP="0.05")
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(path), str(n_trials)],
                              env=env, cwd=ROOT)
    reports, seen = 0, []
    try:
        while driver.poll() is None:
            if path.exists():
                try:
                    with StudyStore(path) as store:
                        seen.append(store.count([TrialState.COMPLETE]))
                except StudyStoreError as exc:  # only while the file is being created
                    assert "no valid schema_version" in str(exc) or "not a medtune" in str(exc)
                    continue
                page = write_report(path, tmp_path / f"report{reports % 2}")
                assert page.stat().st_size > 0
                reports += 1
            time.sleep(0.05)
        assert driver.wait(timeout=120) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
    assert reports >= 3 and seen == sorted(seen)  # the counts only grow
    with StudyStore(path) as store:
        assert store.count([TrialState.COMPLETE]) == n_trials
