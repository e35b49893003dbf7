"""Trial artifacts: the folder a trial keeps its files in, on every executor; keep_best; the
store's artifact column and its migration; a killed driver's leftovers removed on resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medtune.cli import main
from medtune.config import ConfigError, parse_config
from medtune.study import (
    SCHEMA_VERSION,
    FailureReason,
    RunOptions,
    StudyStore,
    TrialState,
    TrialTask,
    resume_study,
    run_study,
    run_trial,
)
from medtune.study.artifacts import ArtifactError, artifact_root, trial_folder
from tests.conftest import python_path
from tests.framework import artifact_fakes
from tests.framework.study_fakes import FakeSearcher

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVE = "tests.framework.artifact_fakes:keeps_weights"


def _run(path: Path, executor: str = "inline", n_trials: int = 8, keep_best: int = 0,
         **options) -> Path:
    with StudyStore.create(path, seed=3) as store:
        run_study(store, FakeSearcher(store.seed), OBJECTIVE, RunOptions(
            n_trials=n_trials, executor=executor, n_workers=1 if executor == "inline" else 2,
            keep_best=keep_best, progress=False, **options))
    return path


def _folders(path: Path) -> set[str]:
    root = artifact_root(path)
    return {entry.name for entry in root.iterdir()} if root.is_dir() else set()


def test_outside_a_study_there_is_no_trial_folder(tmp_path):
    assert trial_folder() is None
    result = run_trial(artifact_fakes.keeps_weights,
                       TrialTask(1, {"index": 0, "x": 0.5}, None, 0, str(tmp_path / "a")))
    assert result.state is TrialState.COMPLETE and result.kept_artifacts
    assert trial_folder() is None  # only while the objective runs
    assert (tmp_path / "a" / "trial_1" / "weights.txt").read_text() == "0.5"


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_completed_trials_keep_their_folder_and_failed_ones_keep_nothing(tmp_path, executor):
    path = _run(tmp_path / "s.db", executor)
    with StudyStore(path) as store:
        trials = store.trials()
        kept = store.artifacts()
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 6 and sum(t.state is TrialState.FAIL for t in trials) == 2
    for trial in trials:
        if trial.state is TrialState.COMPLETE:
            assert trial.artifact == f"s.artifacts/trial_{trial.id}"
            weights = tmp_path / trial.artifact / "weights.txt"
            assert weights.read_text() == repr(trial.config["x"])
        else:
            assert trial.artifact is None
    assert kept == {t.id: t.artifact for t in complete}
    assert _folders(path) == {f"trial_{t.id}" for t in complete}  # no .partial, no failed one


def test_ray_workers_keep_artifacts_beside_the_study(tmp_path, ray_cluster):
    path = _run(tmp_path / "s.db", "ray", n_trials=3,
                executor_options={"address": ray_cluster})
    with StudyStore(path) as store:
        trials = store.trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert _folders(path) == {f"trial_{t.id}" for t in trials}
    for trial in trials:
        assert (tmp_path / trial.artifact / "weights.txt").read_text() == repr(trial.config["x"])


def test_only_the_best_keep_best_trials_keep_their_artifacts(tmp_path):
    path = _run(tmp_path / "s.db", keep_best=2)
    with StudyStore(path) as store:
        complete = store.trials([TrialState.COMPLETE])
        kept = store.artifacts()
    best = sorted(complete, key=lambda t: t.value)[:2]  # the study minimises
    assert set(kept) == {t.id for t in best}
    assert _folders(path) == {f"trial_{t.id}" for t in best}
    assert all(t.artifact is None for t in complete if t not in best)


def test_keep_best_must_be_a_whole_number_of_trials(tmp_path):
    base = '[objective]\nfunction = "m:f"\n[space.x]\ntype = "float"\nlow = 0\nhigh = 1\n'
    assert parse_config(base, "s.toml").keep_best == 5
    assert parse_config("[study]\nkeep_best = 0\n" + base, "s.toml").keep_best == 0
    with pytest.raises(ConfigError, match=r"s.toml: study.keep_best must be a whole number >= 0 "
                                          r".*0 keeps every trial's.*got -1"):
        parse_config("[study]\nkeep_best = -1\n" + base, "s.toml")
    with pytest.raises(ConfigError, match="study.keep_best: expected an integer, got float 2.5"):
        parse_config("[study]\nkeep_best = 2.5\n" + base, "s.toml")
    with pytest.raises(ValueError, match="keep_best must be a whole number"):
        RunOptions(keep_best=-2)


def test_a_trial_whose_folder_cannot_be_kept_fails_and_leaves_the_old_one(tmp_path):
    old = tmp_path / "trial_1"
    old.mkdir()
    (old / "other.txt").write_text("kept")
    result = run_trial(artifact_fakes.keeps_weights,
                       TrialTask(1, {"index": 0, "x": 0.5}, None, 0, str(tmp_path)))
    assert result.state is TrialState.FAIL and result.failure_reason is FailureReason.EXCEPTION
    assert "could not be kept" in result.traceback and not result.kept_artifacts
    assert {p.name for p in tmp_path.iterdir()} == {"trial_1"}
    assert [p.name for p in old.iterdir()] == ["other.txt"]


def test_a_new_study_refuses_an_artifact_folder_holding_trials(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.artifacts" / "trial_1").mkdir(parents=True)
    with StudyStore.create(tmp_path / "s.db") as store, pytest.raises(ArtifactError, match=(
            r"s.artifacts already holds trial artifacts, of an earlier study stored as s.db: "
            r"move or remove")):
        run_study(store, FakeSearcher(0), OBJECTIVE, RunOptions(n_trials=1, progress=False))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(
        '[study]\nstorage = "s.sqlite"\n[objective]\n'
        'function = "tests.framework.artifact_fakes:keeps_nothing"\n'
        '[space.x]\ntype = "float"\nlow = 0\nhigh = 1\n')
    assert main(["run", "s.toml"]) == 2
    assert "s.artifacts already holds trial artifacts" in capsys.readouterr().out
    assert not (tmp_path / "s.sqlite").exists()  # refused before anything was written


def test_status_says_where_artifacts_are_kept(tmp_path, capsys):
    path = _run(tmp_path / "s.db", n_trials=3, keep_best=2)
    assert main(["status", str(path)]) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if "Artifacts" in line]
    assert line == [f"Artifacts: 2 trial(s) keep theirs in {tmp_path / 's.artifacts'}; "
                    "`medtune export` copies one out"]
    with StudyStore.create(tmp_path / "none.db") as store:
        run_study(store, FakeSearcher(0), "tests.framework.artifact_fakes:keeps_nothing",
                  RunOptions(n_trials=2, progress=False))
    assert main(["status", str(tmp_path / "none.db")]) == 0
    assert "Artifacts" not in capsys.readouterr().out


def test_a_version_3_file_gets_the_artifact_column(tmp_path):
    path = tmp_path / "old.db"
    with StudyStore.create(path) as store:
        store.complete_trial(store.create_trial(suggestion_id=0, config={"x": 1}, seed=0), 2.0)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE trials DROP COLUMN artifact")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    before = path.read_bytes()
    with StudyStore(path, read_only=True) as store:  # status and reports read it as it is
        assert store.info.schema_version == 3
        assert store.trial(1).artifact is None and store.artifacts() == {}
    assert path.read_bytes() == before
    with StudyStore(path) as store:
        assert store.info.schema_version == SCHEMA_VERSION == 4
        store.complete_trial(store.create_trial(suggestion_id=1, config={"x": 2}, seed=0), 1.0,
                             artifact="old.artifacts/trial_2")
        assert store.artifacts() == {2: "old.artifacts/trial_2"}


#: run (or resume) the study at argv[1] to argv[3] trials with the executor argv[2]
_DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from medtune.study import RunOptions, StudyStore, run_study
    from tests.framework.study_fakes import FakeSearcher

    path, executor, n_trials = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    options = RunOptions(n_trials=n_trials, executor=executor,
                         n_workers=2 if executor != "inline" else 1, keep_best=0,
                         progress=False)
    store = StudyStore.create(path, seed=5)
    run_study(store, FakeSearcher(store.seed), "tests.framework.artifact_fakes:keeps_weights",
              options)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL needs Linux")
@pytest.mark.parametrize("executor", ["inline", "process"])
def test_a_resumed_study_keeps_completed_artifacts_and_drops_the_rest(tmp_path, monkeypatch,
                                                                      executor):
    path, root = tmp_path / "s.db", tmp_path / "s.artifacts"
    env = dict(os.environ, PYTHONPATH=python_path(), MEDTUNE_TEST_SLEEP="0.4")
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(path), executor, "40"],
                              env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:  # kill it while a trial is writing, once two have completed
            assert driver.poll() is None and time.monotonic() < deadline
            if path.exists() and list(root.glob("*.partial")):
                try:
                    with StudyStore(path, read_only=True) as store:
                        completed = store.trials([TrialState.COMPLETE])
                except Exception:  # noqa: BLE001 - the file is being created
                    completed = []
                if len(completed) >= 2 and list(root.glob("*.partial")):
                    break
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    with StudyStore(path) as store:
        before = {t.id: t.artifact for t in store.trials([TrialState.COMPLETE])}
    assert len(before) >= 2 and all(before.values())
    assert list(root.glob("*.partial"))  # what the trials in flight wrote
    (root / "trial_999").mkdir()  # a folder renamed into place, its trial never recorded
    (root / "notes.txt").write_text("mine")  # not a trial folder: left alone
    monkeypatch.setenv("MEDTUNE_TEST_SLEEP", "0")
    n_trials = max(8, len(before) + 4)
    resume_study(path, lambda seed: FakeSearcher(seed), OBJECTIVE,
                 RunOptions(n_trials=n_trials, executor=executor,
                            n_workers=1 if executor == "inline" else 2, keep_best=0,
                            progress=False))
    with StudyStore(path) as store:
        after = store.artifacts()
        complete = store.trials([TrialState.COMPLETE])
    assert {i: after.get(i) for i in before} == before  # still listed
    for trial_id, folder in before.items():
        assert (tmp_path / folder / "weights.txt").is_file()
    assert set(after) == {t.id for t in complete}
    assert _folders(path) == {f"trial_{t.id}" for t in complete} | {"notes.txt"}
