"""Early stopping: the pruner contract (one suite over every registered pruner), the report
channel of each executor, studies whose bad trials are PRUNED with their step and rule, and the
configuration errors."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

import medtune
from medtune.cli import main
from medtune.pruners import History, Pruner, PrunerError
from medtune.study import RunOptions, StudyStore, TrialState, run_study
from medtune.study.executors import ExecutorError, TrialTask, make_executor, run_trial
from tests.framework.study_fakes import FakeSearcher

CURVES = "tests.framework.pruner_fakes:curves"


def _history(bad_id: int = 99, good_id: int = 98) -> History:
    """Ten finished trials with rising curves and per-case scores (to maximise), then a flat,
    worst trial ``bad_id`` and a rising, best trial ``good_id`` reporting steps 1 to 9."""
    history = History()
    for trial in range(10):
        level = 0.4 + 0.02 * trial
        for step in range(1, 10):
            value = level * step / 9
            history.record(trial, step, value, [value + 0.01 * (i % 3) for i in range(12)])
        history.complete(trial)
    return history


def _feed(pruner: Pruner, history: History, trial_id: int, curve) -> tuple[float, str] | None:
    """Report ``curve(step)`` for steps 1 to 9 until the pruner stops the trial."""
    for step in range(1, 10):
        value = curve(step)
        history.record(trial_id, step, value, [value + 0.01 * (i % 3) for i in range(12)])
        rule = pruner.should_prune(trial_id, step, value, history)
        if rule is not None:
            return step, rule
    return None


# -- the contract, over every registered pruner ------------------------------------------------

@pytest.fixture(params=medtune.available("pruner"))
def name(request):
    return request.param


def test_every_pruner_stops_a_flat_worst_trial_and_keeps_the_best(name):
    pruner = medtune.create("pruner", name, direction="maximize")
    assert isinstance(pruner, Pruner) and pruner.name == name
    history = _history()
    stopped = _feed(pruner, history, 99, lambda step: 0.05)
    assert stopped is not None, name
    step, rule = stopped
    assert rule.startswith(f"{name}:") and "\n" not in rule
    assert _feed(pruner, history, 98, lambda step: 0.9 * step / 9 + 0.01 * step) is None


def test_every_pruner_judges_in_its_direction(name):
    """The same history negated, to minimise, gives the same decisions."""
    pruner = medtune.create("pruner", name, direction="minimize")
    history = History()
    for trial in range(10):
        for step in range(1, 10):
            value = -(0.4 + 0.02 * trial) * step / 9
            history.record(trial, step, value, [value - 0.01 * (i % 3) for i in range(12)])
        history.complete(trial)
    stopped = None
    for step in range(1, 10):
        history.record(99, step, -0.05, [-0.05 - 0.01 * (i % 3) for i in range(12)])
        stopped = stopped or pruner.should_prune(99, step, -0.05, history)
    assert stopped is not None


def test_every_pruner_goes_on_in_warmup_and_before_startup(name):
    warm = medtune.create("pruner", name, direction="maximize", n_warmup_steps=10)
    assert _feed(warm, _history(), 99, lambda step: 0.05) is None
    startup = medtune.create("pruner", name, direction="maximize", n_startup_trials=11)
    assert _feed(startup, _history(), 99, lambda step: 0.05) is None


def test_every_pruner_stops_a_trial_whose_value_is_not_finite(name):
    pruner = medtune.create("pruner", name, direction="maximize")
    history = History()
    history.record(1, 1, math.nan)
    assert "not finite" in pruner.should_prune(1, 1, math.nan, history)


@pytest.mark.parametrize(("option", "value"), [
    ("n_startup_trials", -1), ("n_startup_trials", 1.5), ("n_warmup_steps", -1),
    ("interval", 0), ("interval", True), ("direction", "up"),
])
def test_every_pruner_refuses_bad_shared_options_naming_them(name, option, value):
    with pytest.raises(PrunerError, match=rf"{name} pruner: {option}"):
        medtune.create("pruner", name, **{"direction": "maximize", option: value})


def test_interval_judges_every_nth_report():
    pruner = medtune.create("pruner", "median", direction="maximize", interval=3)
    history = _history()
    stopped = _feed(pruner, history, 99, lambda step: 0.05)
    assert stopped is not None and stopped[0] == 1  # judged at reports 1, 4, 7
    history = _history()
    late = medtune.create("pruner", "median", direction="maximize", interval=3,
                          n_warmup_steps=2)
    assert _feed(late, history, 99, lambda step: 0.05)[0] == 2


# -- run_trial and the executors ---------------------------------------------------------------

def _task(trial_id: int = 1, x: float = 0.5) -> TrialTask:
    return TrialTask(trial_id, {"x": x}, None, 0)


def test_a_stop_raises_in_the_objective_and_records_step_and_rule():
    seen = []

    def judge(trial_id, step, value, scores):
        seen.append((trial_id, step, value, len(scores)))
        return "test: stop at 3" if step == 3 else None

    from tests.framework.pruner_fakes import curves
    result = run_trial(curves, _task(), judge=judge)
    assert result.state is TrialState.PRUNED
    assert result.traceback == "test: stop at 3"
    assert result.execution.metrics == {"pruned_at_step": 3.0}
    assert [s for s, _ in result.execution.intermediate] == [1.0, 2.0, 3.0]
    assert result.value == pytest.approx(1.5 * 3 / 6)
    assert seen[-1] == (1, 3.0, pytest.approx(0.75), 10)


def test_an_objective_that_catches_the_stop_is_pruned_all_the_same():
    from tests.framework.pruner_fakes import stubborn
    result = run_trial(stubborn, _task(), judge=lambda *a: "test: stop" if a[1] == 2 else None)
    assert result.state is TrialState.PRUNED and result.traceback == "test: stop"
    assert [s for s, _ in result.execution.intermediate] == [1.0, 2.0]


def test_without_a_judge_report_takes_scores_and_nothing_stops():
    from tests.framework.pruner_fakes import curves
    result = run_trial(curves, _task())
    assert result.state is TrialState.COMPLETE and len(result.execution.intermediate) == 6


def test_an_executor_without_pruning_refuses_it_in_one_line():
    executor = make_executor("inline", CURVES)
    executor.enable_pruning(lambda *a: None)
    executor.supports_pruning = False  # as an executor that cannot answer a running trial
    with pytest.raises(ExecutorError, match="inline executor cannot stop trials early"):
        executor.enable_pruning(lambda *a: None)


# -- studies -----------------------------------------------------------------------------------

def _study(tmp_path: Path, pruner: Pruner, executor: str = "inline", n_workers: int = 1,
           n_trials: int = 12, request=None):
    """A study of :data:`CURVES`; on ``executor = "ray"``, on the local cluster of the test's
    ``ray_cluster`` fixture (from ``request``)."""
    options = ({"address": request.getfixturevalue("ray_cluster")} if executor == "ray"
               else {})
    store = StudyStore.create(tmp_path / "s.db", direction="maximize", seed=1)
    searcher = FakeSearcher(store.seed, direction="maximize")
    summary = run_study(store, searcher, CURVES,
                        RunOptions(n_trials=n_trials, executor=executor, n_workers=n_workers,
                                   executor_options=options, progress=False), pruner=pruner)
    return store, searcher, summary


@pytest.mark.parametrize("executor", ["inline", "process", "ray"])
def test_a_study_prunes_bad_trials_with_step_and_rule(tmp_path, executor, request):
    pruner = medtune.create("pruner", "median", direction="maximize", n_startup_trials=2)
    store, searcher, summary = _study(tmp_path, pruner, executor,
                                      1 if executor == "inline" else 2, request=request)
    with store:
        trials = store.trials()
        pruned = [t for t in trials if t.state is TrialState.PRUNED]
        assert summary.n_pruned == len(pruned) >= 2
        assert summary.n_complete + summary.n_pruned == 12
        for trial in pruned:
            assert trial.pruned_by.startswith("median: best value")
            assert trial.pruned_at == max(trial.intermediate)
            assert trial.value == trial.intermediate[trial.pruned_at]
        if executor != "inline":  # judged in the driver, stopped in the workers
            assert all(t.worker_pid not in (None, os.getpid()) for t in pruned)
        best = store.best_trial()
        assert best.state is TrialState.COMPLETE
        assert best.config["x"] == max(t.config["x"] for t in trials)
        # the searcher heard a pruned trial's last value, not a failure
        told = {sid: (score, failed) for sid, score, failed in searcher.told}
        assert all(told[t.suggestion_id] == (-t.value, False) for t in pruned)


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_asha_never_blocks_process_or_ray_workers(tmp_path, monkeypatch, executor, request):
    monkeypatch.setenv("MEDTUNE_TEST_SLEEP", "0.05")
    pruner = medtune.create("pruner", "asha", direction="maximize", min_resource=1, eta=2)
    store, _, summary = _study(tmp_path, pruner, executor, 2, n_trials=10, request=request)
    with store:
        trials = store.trials()
        assert summary.n_complete + summary.n_pruned == 10 and summary.n_pruned >= 1
        assert all(t.pruned_by.startswith("asha:") for t in trials
                   if t.state is TrialState.PRUNED)
        promoted = [t for t in trials if max(t.intermediate) >= 2]
        assert len(promoted) >= 3  # trials went on past the first rung, nobody waiting
        # two trials ran at the same time: neither waited for the other to reach a rung
        spans = sorted((t.started, t.finished) for t in trials)
        assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_a_ray_worker_waiting_for_a_decision_stops_when_the_driver_is_gone(ray_cluster):
    """The driver's channel dies with it: a worker waiting on it fails its trial at once
    instead of waiting for ever (Ray also ends a dead driver's tasks); the driver goes on
    with a new channel."""
    import ray

    executor = make_executor("ray", CURVES, n_workers=1, address=ray_cluster)
    with executor:
        executor.enable_pruning(lambda *a: None)
        executor.submit(_task())
        channel = executor._channel
        assert ray.get(channel.reports.remote(), timeout=60)[0][:2] == (1, 1.0)  # it asks
        ray.kill(channel)  # as when the driver dies, without answering
        clock = time.monotonic()
        results = []
        while not results:
            results = executor.wait(5)
        assert time.monotonic() - clock < 30
        assert executor._channel not in (None, channel)  # later trials report to a new one
    (result,) = results
    assert result.state is TrialState.FAIL
    assert "pruning channel is gone" in result.traceback
    assert result.execution.intermediate == ((1.0, pytest.approx(1.5 / 6)),)
    assert executor._channel is None  # closed with the executor


def test_the_reports_are_stored_as_they_arrive(tmp_path):
    pruner = medtune.create("pruner", "median", direction="maximize")
    with StudyStore.create(tmp_path / "s.db", direction="maximize") as store:
        searcher = FakeSearcher(0, direction="maximize")
        stored = []

        def spy(trial_id, step, value):
            stored.append((trial_id, step))
            original(trial_id, step, value)

        original = store.report_intermediate
        store.report_intermediate = spy
        run_study(store, searcher, CURVES, RunOptions(n_trials=2, progress=False),
                  pruner=pruner)
        assert stored[:6] == [(1, float(step)) for step in range(1, 7)]


def test_a_pruner_in_the_other_direction_is_refused(tmp_path):
    pruner = medtune.create("pruner", "median", direction="minimize")
    with StudyStore.create(tmp_path / "s.db", direction="maximize") as store:
        with pytest.raises(medtune.MedtuneError, match="direction='maximize'"):
            run_study(store, FakeSearcher(0, direction="maximize"), CURVES,
                      RunOptions(n_trials=1, progress=False), pruner=pruner)


def test_a_function_that_never_reports_is_warned_about_once(tmp_path, caplog):
    pruner = medtune.create("pruner", "median", direction="maximize")
    with StudyStore.create(tmp_path / "s.db", direction="maximize") as store:
        run_study(store, FakeSearcher(0, direction="maximize"),
                  "tests.framework.pruner_fakes:silent", RunOptions(n_trials=3, progress=False),
                  pruner=pruner)
    warnings = [r for r in caplog.records if "without reporting" in r.getMessage()]
    assert len(warnings) == 1


# -- the configuration and the command line ----------------------------------------------------

CONFIG = """
[study]
name = "pruned"
direction = "maximize"
n_trials = 8
storage = "{storage}"
{study}

[searcher]
name = "random"

[pruner]
{pruner}

[objective]
function = "{function}"

[space.x]
type = "float"
low = -1.0
high = 1.0
"""


def _config(tmp_path: Path, pruner: str, function: str = CURVES, study: str = "") -> Path:
    path = tmp_path / "study.toml"
    path.write_text(CONFIG.format(storage=tmp_path / "pruned.sqlite", pruner=pruner,
                                  function=function, study=study))
    return path


@pytest.mark.parametrize(("pruner", "function", "study", "message"), [
    ('name = "medain"', CURVES, "", "no pruner named 'medain'. Did you mean 'median'?"),
    ('name = "median"\ninterval = 0', CURVES, "", "median pruner: interval must be >= 1"),
    ('name = "asha"\nfoo = 1', CURVES, "", "'foo'"),
    ('name = "asha"\ndirection = "minimize"', CURVES, "", "direction: it belongs in [study]"),
    ('name = "patience"\nn_trials = 3', CURVES, "", "belongs in [study]"),
    ('name = "median"', "tests.framework.pruner_fakes:never_reports", "",
     "never reports intermediate values"),
])
def test_config_errors_exit_2_in_one_line_writing_nothing(tmp_path, capsys, pruner, function,
                                                          study, message):
    path = _config(tmp_path, pruner, function, study)
    assert main(["run", str(path)]) == 2
    out = capsys.readouterr().out
    assert message in out.replace("\n", "")
    assert "pruner" in out
    assert out.strip().startswith("error:")
    assert not (tmp_path / "pruned.sqlite").exists()


def test_run_status_and_report_show_the_pruned_trials(tmp_path, capsys):
    path = _config(tmp_path, 'name = "median"\nn_startup_trials = 1')
    assert main(["run", str(path)]) == 0
    study = tmp_path / "pruned.sqlite"
    capsys.readouterr()
    assert main(["status", str(study)]) == 0
    out = capsys.readouterr().out
    with StudyStore(study, read_only=True) as store:
        pruned = store.count([TrialState.PRUNED])
    assert pruned >= 1
    assert f"Pruned: {pruned} by median, at steps" in out.replace("\n", " ")
    assert (tmp_path / "pruned_report" / "index.html").is_file()
