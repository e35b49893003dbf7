"""Executors: how a trial's outcome is classified, and the inline and process executors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medtune.study import (
    ExecutorError,
    FailureReason,
    InlineExecutor,
    ProcessExecutor,
    TrialState,
    TrialTask,
    make_executor,
    run_trial,
)
from medtune.study.executors import objective_reference
from tests.framework import stop_fakes, study_fakes

ROOT = Path(__file__).resolve().parents[2]


def _task(index: int, x: float = 0.5, trial_id: int | None = None) -> TrialTask:
    return TrialTask(trial_id if trial_id is not None else index + 1,
                     {"index": index, "x": x, "seen": 0}, None, 123)


def test_a_finite_value_completes_with_its_intermediate_values_and_timings():
    result = run_trial(study_fakes.quadratic, _task(0, x=0.5))
    assert result.state is TrialState.COMPLETE
    assert result.value == pytest.approx(0.04)
    assert result.execution.intermediate == ((1.0, pytest.approx(1.04)), (2.0, pytest.approx(0.54)))
    assert result.execution.worker_pid == os.getpid() and result.execution.host
    assert result.execution.duration >= 0 and result.execution.finished >= result.execution.started
    assert result.traceback is None and result.failure_reason is None


@pytest.mark.parametrize("index, state, reason, text", [
    (1, TrialState.FAIL, FailureReason.EXCEPTION, "ValueError: diverged on trial 1"),
    (2, TrialState.FAIL, FailureReason.NAN, "returned nan"),
    (3, TrialState.FAIL, FailureReason.OUT_OF_MEMORY, "MemoryError: simulated host out of memory"),
    (4, TrialState.FAIL, FailureReason.OUT_OF_MEMORY, "OutOfMemoryError: CUDA out of memory"),
    (5, TrialState.PRUNED, None, None),
])
def test_failures_are_classified_with_a_traceback(index, state, reason, text):
    result = run_trial(study_fakes.failing, _task(index))
    assert result.state is state
    assert result.failure_reason is reason
    if text is None:
        assert result.traceback is None
        assert result.value == 0.5  # a pruned trial keeps its last reported value
    else:
        assert text in result.traceback
        assert result.value is None
    if reason in (FailureReason.EXCEPTION, FailureReason.OUT_OF_MEMORY):
        assert result.traceback.startswith("Traceback (most recent call last)")
        assert "study_fakes.py" in result.traceback
    assert result.execution.intermediate == ((1.0, 0.5),)


@pytest.mark.parametrize("returned, reason", [
    (math.inf, FailureReason.NAN), (-math.inf, FailureReason.NAN),
    ("0.5x", FailureReason.EXCEPTION), (None, FailureReason.EXCEPTION),
])
def test_values_that_are_not_a_finite_metric_fail(returned, reason):
    result = run_trial(lambda config, resource, seed, report: returned, _task(0))
    assert result.state is TrialState.FAIL and result.failure_reason is reason
    if reason is FailureReason.EXCEPTION:
        assert "it must be one number" in result.traceback


def test_numpy_and_torch_scalars_are_accepted():
    import numpy as np
    import torch

    for returned in (np.float32(0.25), torch.tensor(0.25)):
        result = run_trial(lambda config, resource, seed, report: returned, _task(0))
        assert result.state is TrialState.COMPLETE and result.value == 0.25


def test_keyboard_interrupt_is_not_swallowed():
    def interrupted(config, resource, seed, report):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(interrupted, _task(0))


def test_inline_executor_runs_by_reference():
    with InlineExecutor("tests.framework.study_fakes:quadratic") as executor:
        assert executor.capacity == 1
        executor.submit(_task(0, x=0.3))
        (result,) = executor.wait()
        assert result.state is TrialState.COMPLETE and result.value == pytest.approx(0.0)
        assert executor.wait() == []


def test_objective_references():
    assert objective_reference(study_fakes.quadratic) == "tests.framework.study_fakes:quadratic"
    assert objective_reference(lambda *args: 0.0) is None
    assert objective_reference("pkg.mod:fn") == "pkg.mod:fn"
    with pytest.raises(ExecutorError, match="cannot import module 'no_such_module_xyz'"):
        make_executor("inline", "no_such_module_xyz:f")
    with pytest.raises(ExecutorError, match="has no attribute 'nope'"):
        make_executor("inline", "tests.framework.study_fakes:nope")
    with pytest.raises(ExecutorError, match="must look like"):
        make_executor("inline", "just_a_name")


def test_make_executor_checks_its_arguments():
    with pytest.raises(ExecutorError, match="unknown executor 'slurm'.*inline, process, ray"):
        make_executor("slurm", study_fakes.quadratic)
    with pytest.raises(ExecutorError, match="inline executor runs one trial at a time"):
        make_executor("inline", study_fakes.quadratic, n_workers=2)
    with pytest.raises(ExecutorError, match="process executor cannot send objective"):
        make_executor("process", lambda config, resource, seed, report: 0.0, n_workers=2)


def test_ray_executor_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ExecutorError, match="pip install"):
        make_executor("ray", "tests.framework.study_fakes:quadratic", n_workers=2)


def test_process_executor_runs_trials_in_parallel_workers(monkeypatch):
    monkeypatch.setenv("MEDTUNE_TEST_SLEEP", "1.0")
    results = []
    with ProcessExecutor(study_fakes.sleeps, n_workers=2) as executor:
        for index in range(2):
            executor.submit(_task(index, x=0.1 * index))
        with pytest.raises(ExecutorError, match="busy"):
            executor.submit(_task(9))
        while len(results) < 2:
            results.extend(executor.wait(timeout=30))
        for index in range(2, 4):
            executor.submit(_task(index, x=0.1 * index))
        while len(results) < 4:
            results.extend(executor.wait(timeout=30))
    assert sorted(r.trial_id for r in results) == [1, 2, 3, 4]
    assert all(r.state is TrialState.COMPLETE for r in results)
    pids = {r.execution.worker_pid for r in results}
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, reused
    first, second = sorted(results[:2], key=lambda r: r.execution.started)
    assert second.execution.started < first.execution.finished  # they overlapped in time


def test_a_dying_worker_fails_only_its_trial_and_is_replaced():
    results = []
    with ProcessExecutor("tests.framework.study_fakes:dies_on_index_1", n_workers=2) as executor:
        executor.submit(_task(0))
        executor.submit(_task(1))
        while len(results) < 2:
            results.extend(executor.wait(timeout=30))
        executor.submit(_task(2))
        executor.submit(_task(3))
        while len(results) < 4:
            results.extend(executor.wait(timeout=30))
    by_id = {r.trial_id: r for r in results}
    assert by_id[2].state is TrialState.FAIL
    assert by_id[2].failure_reason is FailureReason.WORKER_DIED
    assert "exited with code 7" in by_id[2].traceback
    assert [by_id[i].state for i in (1, 3, 4)] == [TrialState.COMPLETE] * 3


def test_a_worker_that_cannot_start_stops_the_study_with_advice(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        from medtune.study import ProcessExecutor, TrialTask
        executor = ProcessExecutor("tests.framework.study_fakes:quadratic", n_workers=1)
        executor.submit(TrialTask(1, {"index": 0, "x": 0.0, "seen": 0}, None, 0))
        executor.wait(timeout=60)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.returncode != 0
    assert "ExecutorError: a worker process could not start" in result.stderr
    assert 'if __name__ == "__main__":' in result.stderr


def test_ray_executor_refuses_an_objective_it_cannot_ship():
    pytest.importorskip("ray")
    with pytest.raises(ExecutorError, match="executor 'ray' cannot send objective"):
        make_executor("ray", lambda config, resource, seed, report: 0.0, n_workers=2)


def test_process_workers_share_the_cores_instead_of_oversubscribing():
    cores = len(os.sched_getaffinity(0))
    results = []
    with ProcessExecutor(study_fakes.torch_threads, n_workers=2) as executor:
        executor.submit(_task(0))
        while not results:
            results.extend(executor.wait(timeout=30))
    assert results[0].value == max(1, cores // 2)


# ------------------------------------------------------------- out of memory, exits, Ctrl-C


def test_a_huge_allocation_fails_as_out_of_memory():
    result = run_trial(stop_fakes.allocates_too_much, _task(0))
    assert result.state is TrialState.FAIL
    assert result.failure_reason is FailureReason.OUT_OF_MEMORY
    assert "can't allocate memory" in result.traceback


def test_sys_exit_in_an_objective_fails_its_trial_not_the_study(tmp_path):
    from medtune.study import RunOptions, StudyStore, run_study
    from tests.framework.study_fakes import FakeSearcher

    with StudyStore.create(tmp_path / "s.db") as store:
        summary = run_study(store, FakeSearcher(0), "tests.framework.stop_fakes:exits",
                            RunOptions(n_trials=3, progress=False))
        assert (summary.n_complete, summary.n_failed) == (2, 1)
        (exited,) = store.trials([TrialState.FAIL])
    assert exited.config["index"] == 1 and exited.failure_reason is FailureReason.EXCEPTION
    assert "SystemExit: 3" in exited.traceback and "called sys.exit(3)" in exited.traceback


@pytest.mark.skipif(sys.platform != "linux", reason="signals to a process by id")
def test_a_worker_ignores_ctrl_c_from_its_start(capfd):
    """Ctrl-C in a terminal reaches the workers too: one that gets it while it starts (before
    it could set a handler) neither dies nor prints a traceback."""
    import multiprocessing
    import signal
    import time

    with ProcessExecutor("tests.framework.study_fakes:quadratic", n_workers=1) as executor:
        executor.submit(_task(0))
        (worker,) = multiprocessing.active_children()
        for _ in range(40):  # throughout its start-up: interpreter, imports, objective
            os.kill(worker.pid, signal.SIGINT)
            time.sleep(0.05)
        results = []
        while not results:
            results.extend(executor.wait(timeout=60))
    assert results[0].state is TrialState.COMPLETE
    assert results[0].execution.worker_pid == worker.pid
    captured = capfd.readouterr()
    assert "KeyboardInterrupt" not in captured.err and "Traceback" not in captured.err


# ------------------------------------------------------- refused before anything is written


def _refused_config(tmp_path: Path, study: str) -> Path:
    config = tmp_path / "study.toml"
    config.write_text(
        f'[study]\nstorage = "{tmp_path / "studies" / "s.sqlite"}"\nn_trials = 2\n{study}\n'
        '[objective]\nfunction = "tests.framework.study_fakes:quadratic"\n\n'
        '[space.x]\ntype = "float"\nlow = 0\nhigh = 1\n')
    return config


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("study, message", [
    ('executor = "process"\nn_workers = 2\naddress = "auto"',
     "the process executor takes no options, got address (address is for executor 'ray')"),
    ('executor = "inline"\nn_workers = 2', "the inline executor runs one trial at a time"),
    ('executor = "ray"\nn_workers = 2\naddress = "127.0.0.1:{port}"', "cannot reach a Ray cluster"),
])
def test_a_refused_executor_leaves_no_file(tmp_path, capsys, study, message):
    import time

    from medtune.cli import main

    if "ray" in study:
        pytest.importorskip("ray")
    config = _refused_config(tmp_path, study.format(port=_free_port()))
    clock = time.monotonic()
    assert main(["run", str(config)]) == 2
    assert time.monotonic() - clock < 30  # an unreachable cluster is not waited for
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert str(config) in lines[0]
    assert not (tmp_path / "studies").exists()  # no study file, log or lock, not even a folder
