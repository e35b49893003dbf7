"""Crash safety: a study's driver (or one of its workers) is SIGKILLed at random moments, again
and again, and resumed each time. No completed trial is lost or changed, no id is reused, no
proposal counts twice, the file stays intact, and the study ends the size it was asked for.

CI runs a few kills per executor; the full profile (20 kills per executor, as the reliability
table reports) is marked slow: ``MEDTUNE_KILLS=20 python -m pytest -m slow
tests/framework/test_crash_safety.py``.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medtune.study import StudyStore, StudyStoreError, TrialState
from tests.conftest import python_path

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 12

#: run (or resume) the study at argv[1] to N_TRIALS trials with the executor argv[2]
_DRIVER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from medtune.study import RunOptions, StudyStore, resume_study, run_study
    from tests.framework.study_fakes import FakeSearcher

    path, executor, n_trials = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    options = RunOptions(
        n_trials=n_trials, executor=executor, n_workers=2 if executor != "inline" else 1,
        executor_options={"address": "local"} if executor == "ray" else {}, progress=False)
    objective = "tests.framework.study_fakes:logged"
    if path.exists():
        resume_study(path, lambda seed: FakeSearcher(seed, batch=3), objective, options)
    else:
        store = StudyStore.create(path, seed=5)
        run_study(store, FakeSearcher(store.seed, batch=3), objective, options)
""")


def _snapshot(path: Path) -> dict[int, object]:
    try:
        with StudyStore(path) as store:
            return {t.id: t for t in store.trials()}
    except StudyStoreError:
        return {}  # killed before the file was complete: nothing recorded yet


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(p) for p in out.split()]


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=python_path(), MEDTUNE_TEST_SIDE_FILE=str(tmp_path / "side"),
                MEDTUNE_TEST_SLEEP="0.15", MEDTUNE_TEST_SESSION="s0")


def _kill_drivers(tmp_path: Path, executor: str, kills: int) -> None:
    """Start the study, SIGKILL its driver at a random moment, resume, ``kills`` times; then
    resume to the end."""
    path, env = tmp_path / f"{executor}.db", _env(tmp_path)
    rng = random.Random(executor)
    completed: dict[int, object] = {}
    killed = 0
    for session in range(kills + 1):
        env["MEDTUNE_TEST_SESSION"] = f"s{session}"
        driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(path), executor,
                                   str(N_TRIALS)], env=env, cwd=ROOT)
        last = session == kills
        try:
            if last:
                assert driver.wait(timeout=300) == 0
            else:
                time.sleep(rng.uniform(0.3, 3.0 if executor == "ray" else 1.5))
                if driver.poll() is None:
                    driver.send_signal(signal.SIGKILL)
                    killed += 1
                driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        if not path.exists():
            continue
        assert _integrity(path) == "ok"
        now = _snapshot(path)
        # every trial completed earlier is still there, unchanged
        assert all(now.get(i) == t for i, t in completed.items()), session
        completed = {i: t for i, t in now.items() if t.state is TrialState.COMPLETE}
    final = _snapshot(path)
    finished = [t for t in final.values() if t.state.finished]
    assert sum(t.state is TrialState.COMPLETE for t in finished) == N_TRIALS
    assert sorted(final) == list(range(1, len(final) + 1))  # no id reused or skipped
    assert len({t.suggestion_id for t in finished}) == len(finished)  # none counted twice
    assert not any(t.state is TrialState.RUNNING for t in final.values())
    assert killed >= 1


def _running_trial_pids(side: Path, seen: int) -> tuple[list[int], int]:
    """The process ids that started a trial after the first ``seen`` lines of the side file
    (``logged`` writes one line per trial it starts), and the new line count."""
    try:
        lines = side.read_text().splitlines()
    except FileNotFoundError:
        return [], seen
    return [int(line.split()[2]) for line in lines[seen:] if len(line.split()) == 3], len(lines)


def _kill_workers(tmp_path: Path, executor: str, kills: int) -> None:
    """SIGKILL a worker of a running study ``kills`` times: each of those trials fails
    (``worker_died``), the driver goes on and ends the study. A process-executor worker is a
    child of the driver; a Ray worker is found by the process id the trial wrote when it
    started (Ray's workers are children of its raylet, not of the driver)."""
    path, env = tmp_path / f"workers_{executor}.db", _env(tmp_path)
    env["MEDTUNE_TEST_SLEEP"] = "0.4"  # trials long enough for every kill to land in one
    side = tmp_path / "side"
    rng = random.Random(f"workers {executor}")
    n_trials = N_TRIALS + 3 * kills  # more trials than the kills can fail
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(path), executor,
                               str(n_trials)], env=env, cwd=ROOT)
    killed, seen = 0, 0
    try:
        while killed < kills and driver.poll() is None:
            time.sleep(rng.uniform(0.2, 0.6))
            if executor == "ray":
                started, seen = _running_trial_pids(side, seen)
                workers = [pid for pid in started[-1:] if pid != driver.pid]
            else:
                workers = _children(driver.pid)
            if workers:
                try:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                except ProcessLookupError:
                    continue  # it finished and exited in between
                killed += 1
        assert driver.wait(timeout=300) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert _integrity(path) == "ok"
    final = _snapshot(path)
    died = [t for t in final.values() if t.state is TrialState.FAIL]
    assert 1 <= len(died) <= killed and all(t.failure_reason.value == "worker_died" for t in died)
    assert sum(t.state.finished for t in final.values()) == n_trials
    assert sorted(final) == list(range(1, len(final) + 1))
    assert killed == kills


def _kills(default: int = 2) -> int:
    return int(os.environ.get("MEDTUNE_KILLS", str(default)))


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and pgrep need Linux")
@pytest.mark.parametrize("executor", ["inline", "process"])
def test_driver_killed_repeatedly_then_resumed(tmp_path, executor):
    _kill_drivers(tmp_path, executor, _kills())


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and pgrep need Linux")
@pytest.mark.parametrize("executor", ["process", "ray"])
def test_killed_workers_fail_their_trials_and_the_study_goes_on(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    _kill_workers(tmp_path, executor, _kills())


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and pgrep need Linux")
@pytest.mark.parametrize("executor", ["inline", "process", "ray"])
def test_twenty_driver_kills_per_executor(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    _kill_drivers(tmp_path, executor, _kills(20))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and pgrep need Linux")
@pytest.mark.parametrize("executor", ["process", "ray"])
def test_twenty_worker_kills(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    _kill_workers(tmp_path, executor, _kills(20))
