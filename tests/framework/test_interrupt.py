"""Ctrl-C: a run ends with one line and exit status 130, its trials in flight are recorded as
interrupted (none left RUNNING), no process prints a traceback, and ``medtune resume`` runs
them again and completes the study without reusing an id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtune.cli import main
from medtune.study import FailureReason, StudyStore, StudyStoreError, TrialState
from tests.conftest import alive, python_path

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, objective: str, space: str, searcher: str = "grid",
            study: str = "") -> Path:
    config = tmp_path / "study.toml"
    config.write_text(
        f'[study]\nname = "stopped"\ndirection = "minimize"\nstorage = "{tmp_path / "s.sqlite"}"\n'
        f'{study}\n[searcher]\nname = "{searcher}"\n\n[objective]\nfunction = "{objective}"\n\n'
        f"{space}")
    return config


def _check_resumed(path: Path, n_trials: int) -> list:
    with StudyStore(path) as store:
        trials = store.trials()
    assert not [t for t in trials if t.state is TrialState.RUNNING]
    assert sorted(t.id for t in trials) == list(range(1, len(trials) + 1))  # no id reused
    finished = [t for t in trials if t.state.finished]
    assert len(finished) == n_trials == len({t.suggestion_id for t in finished})
    interrupted = [t for t in trials if t.state is TrialState.REQUEUED]
    assert interrupted and all(t.failure_reason is FailureReason.INTERRUPTED for t in interrupted)
    reruns = {t.requeued_from: t for t in trials if t.requeued_from is not None}
    assert set(reruns) == {t.id for t in interrupted}
    assert all(reruns[t.id].config == t.config and reruns[t.id].state is TrialState.COMPLETE
               for t in interrupted)
    return trials


def test_ctrl_c_in_medtune_run_records_the_trial_and_resume_finishes(tmp_path, monkeypatch,
                                                                     capsys):
    """In the driver (inline executor), Ctrl-C reaches the objective as KeyboardInterrupt."""
    space = ('[space.index]\ntype = "ordinal"\nvalues = [0, 1, 2, 3, 4, 5]\n\n'
             '[space.x]\ntype = "ordinal"\nvalues = [0.5]\n')
    config = _config(tmp_path, "tests.framework.study_fakes:interrupt_on_index_3", space)
    monkeypatch.setenv("MEDTUNE_TEST_INTERRUPT", "1")
    assert main(["run", str(config)]) == 130
    out = capsys.readouterr().out
    assert "Traceback" not in out
    path = tmp_path / "s.sqlite"
    assert out.strip().splitlines()[-1] == ("Interrupted: 1 trial in flight recorded as "
                                            f"interrupted; continue with `medtune resume {path}`")
    with StudyStore(path) as store:
        states = [t.state for t in store.trials()]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.REQUEUED]

    monkeypatch.setenv("MEDTUNE_TEST_INTERRUPT", "0")
    assert main(["resume", str(path)]) == 0
    trials = _check_resumed(path, 6)
    assert [t.config["index"] for t in trials] == [0, 1, 2, 3, 3, 4, 5]


def _wait_for(predicate, driver: subprocess.Popen, what: str, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert driver.poll() is None, f"the driver ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {limit:g} s"
        time.sleep(0.05)


def _running(path: Path) -> int:
    try:
        with StudyStore(path, read_only=True) as store:
            return store.count([TrialState.RUNNING])
    except StudyStoreError:
        return 0  # not created yet


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and /proc checks need Linux")
@pytest.mark.parametrize("executor", [
    "inline",
    # starts workers in two drivers, hence slow; test_executors.py checks quickly that a
    # worker ignores Ctrl-C from its start
    pytest.param("process", marks=pytest.mark.slow),
])
def test_sigint_to_the_terminals_process_group_then_resume(tmp_path, monkeypatch, executor):
    """A real Ctrl-C: SIGINT to every process of the job (driver and workers) while trials
    hang; then resume completes the study."""
    side = tmp_path / "side"
    workers = "n_workers = 2" if executor == "process" else ""
    config = _config(tmp_path, "tests.framework.stop_fakes:hangs_after_two",
                     '[space.x]\ntype = "float"\nlow = -1\nhigh = 1\n', searcher="random",
                     study=f'n_trials = 6\nexecutor = "{executor}"\n{workers}')
    env = dict(os.environ, PYTHONPATH=python_path(), MEDTUNE_TEST_SIDE_FILE=str(side),
               MEDTUNE_TEST_HANG="1")
    driver = subprocess.Popen([sys.executable, "-m", "medtune.cli", "run", str(config)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    path = tmp_path / "s.sqlite"
    try:
        _wait_for(lambda: side.exists() and len(side.read_text().splitlines()) >= 3, driver,
                  "hanging trial")
        _wait_for(lambda: _running(path) >= 1, driver, "RUNNING trial")
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, (out, err)
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, (out, err)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert sum("Interrupted:" in line for line in lines) == 1
    assert lines[-1].startswith("Interrupted: ") and f"medtune resume {path}" in lines[-1]
    with StudyStore(path) as store:
        assert store.count([TrialState.RUNNING]) == 0
        interrupted = store.trials([TrialState.REQUEUED])
    assert interrupted and all(t.failure_reason is FailureReason.INTERRUPTED for t in interrupted)
    pids = {int(pid) for pid in side.read_text().split()} - {driver.pid}
    assert not any(alive(pid) for pid in pids)  # the workers stopped with the driver

    monkeypatch.setenv("MEDTUNE_TEST_SIDE_FILE", str(side))
    monkeypatch.setenv("MEDTUNE_TEST_HANG", "0")
    monkeypatch.chdir(tmp_path)
    assert main(["resume", str(path)]) == 0
    _check_resumed(path, 6)
