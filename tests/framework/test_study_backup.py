"""The study file alone is the study: creation is atomic (racing creators never destroy each
other's file), writers checkpoint the write-ahead log into the file, and ``backup`` copies a
running study consistently."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medtune.study import StudyStore, StudyStoreError, TrialState
from medtune.study import store as store_module
from tests.conftest import python_path

ROOT = Path(__file__).resolve().parents[2]

# Forked from one small process (not from pytest, which holds torch's threads). Each round,
# two creators wait at a barrier, then both call StudyStore.create on one new path: pairs
# race hardest (with many, most arrive after the file exists).
_RACE = textwrap.dedent("""
    import json, multiprocessing, os, sys
    from medtune.study.store import StudyStore, StudyStoreError

    def create(path, barrier, results):
        barrier.wait(timeout=60)
        try:
            store = StudyStore.create(path, seed=1)
        except StudyStoreError as exc:
            results.put([path, "refused", str(exc)])
            return
        except BaseException as exc:
            results.put([path, "crashed", f"{type(exc).__name__}: {exc}"])
            return
        with store:
            trial = store.create_trial(suggestion_id=0, config={"creator": os.getpid()}, seed=0)
            store.complete_trial(trial, 1.0)
        results.put([path, "won", os.getpid()])

    if __name__ == "__main__":
        folder, rounds, racers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        context = multiprocessing.get_context("fork")
        results, outcomes = context.Queue(), []
        for round_ in range(rounds):
            path, barrier = os.path.join(folder, f"study{round_}.sqlite"), context.Barrier(racers)
            creators = [context.Process(target=create, args=(path, barrier, results))
                        for _ in range(racers)]
            for creator in creators:
                creator.start()
            outcomes += [results.get(timeout=120) for _ in range(racers)]
            for creator in creators:
                creator.join(timeout=60)
        print(json.dumps(outcomes))
""")

# Writes trials (each one a create and a result commit) until it has written argv[2] of them,
# then either kills itself (no close, no final checkpoint) or keeps going slowly until killed.
_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    from medtune.study import StudyStore

    path, n, then = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = StudyStore.create(path)
    index = 0
    while then == "keep-writing" or index < n:
        trial = store.create_trial(suggestion_id=index, config={"index": index}, seed=index)
        store.complete_trial(trial, float(index))
        index += 1
        if index >= n:
            if then == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.002)
""")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=python_path())


def _main_file_only(path: Path, folder: Path) -> Path:
    """Copy ``path`` without its ``-wal`` and ``-shm`` files, as a plain file copy would."""
    folder.mkdir()
    copy = folder / path.name
    shutil.copyfile(path, copy)
    return copy


def _complete_ids(path: Path) -> set[int]:
    with StudyStore(path, read_only=True) as store:
        return {t.id for t in store.trials([TrialState.COMPLETE])}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the race forks its creators")
def test_racing_creators_one_wins_the_others_are_refused_and_nothing_is_lost(tmp_path):
    rounds, racers = 50, 2  # 100 creations
    result = subprocess.run([sys.executable, "-c", _RACE, str(tmp_path), str(rounds), str(racers)],
                            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    assert [kind for _, kind, _ in outcomes].count("crashed") == 0, outcomes
    for round_ in range(rounds):
        path = str(tmp_path / f"study{round_}.sqlite")
        winners = [detail for where, kind, detail in outcomes if where == path and kind == "won"]
        refusals = [detail for where, kind, detail in outcomes
                    if where == path and kind == "refused"]
        assert len(winners) == 1 and len(refusals) == racers - 1, (path, outcomes)
        assert all(f"study{round_}.sqlite already exists" in message for message in refusals)
        with StudyStore(path) as store:  # the winner's committed trial is there at the end
            (trial,) = store.trials()
            assert trial.state is TrialState.COMPLETE and trial.config == {"creator": winners[0]}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_creation_without_hard_links_still_never_replaces_a_study(tmp_path, monkeypatch):
    def no_hard_links(source, target):
        raise OSError(errno.EPERM, "hard links are not supported here")

    monkeypatch.setattr(os, "link", no_hard_links)
    path = tmp_path / "study.sqlite"
    with StudyStore.create(path, name="first") as store:
        store.complete_trial(store.create_trial(suggestion_id=0, config={}, seed=0), 1.0)
    monkeypatch.setattr(Path, "exists", lambda self: False)  # as if created at the same time
    with pytest.raises(StudyStoreError, match="study.sqlite already exists"):
        StudyStore.create(path, name="second")
    monkeypatch.undo()
    with StudyStore(path) as store:
        assert store.name == "first" and store.count() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.sqlite"]


def test_a_killed_writer_leaves_its_checkpointed_trials_in_the_main_file(tmp_path):
    path, n = tmp_path / "study.sqlite", 20
    result = subprocess.run([sys.executable, "-c", _WRITER, str(path), str(n), "die"],
                            env=_env(), cwd=ROOT, timeout=120)
    assert result.returncode == -9  # killed: no close, no final checkpoint
    assert len(_complete_ids(path)) == n  # the file with its log holds every result
    # each trial is two commits; a checkpoint follows every CHECKPOINT_COMMITS-th commit
    checkpointed = (2 * n // store_module.CHECKPOINT_COMMITS) * store_module.CHECKPOINT_COMMITS // 2
    assert checkpointed > 0
    copy = _main_file_only(path, tmp_path / "copy")
    held = _complete_ids(copy)
    assert len(held) >= checkpointed and held == set(range(1, len(held) + 1))


def test_a_closing_writer_empties_the_log_into_the_main_file_despite_a_reader(tmp_path):
    path = tmp_path / "study.sqlite"
    StudyStore.create(path).close()
    reader = sqlite3.connect(path)  # open (and idle) while the writer closes
    try:
        reader.execute("SELECT COUNT(*) FROM trials").fetchone()
        with StudyStore(path) as store:  # too few commits for a periodic checkpoint
            for index in range(5):
                store.complete_trial(
                    store.create_trial(suggestion_id=index, config={}, seed=0), 1.0)
        copy = _main_file_only(path, tmp_path / "copy")
        assert Path(f"{path}-wal").stat().st_size == 0
    finally:
        reader.close()
    assert _complete_ids(copy) == {1, 2, 3, 4, 5}


def test_a_backup_of_a_running_study_holds_every_trial_committed_before_it(tmp_path):
    path, copy = tmp_path / "live.sqlite", tmp_path / "saved" / "copy.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "20", "keep-writing"],
                              env=_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not path.exists() or len(_complete_ids(path)) < 20:
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with StudyStore(path, read_only=True) as store:
            before = {t.id for t in store.trials([TrialState.COMPLETE])}
            copied = store.backup(copy)
        assert writer.poll() is None  # it was writing all along
        time.sleep(0.2)
    finally:
        writer.kill()
        writer.wait()
    assert not Path(f"{copy}-wal").exists()  # one self-contained file
    with StudyStore(copy) as saved:
        trials = saved.trials()
        assert copied == len(trials) and before <= {t.id for t in trials}
        assert [t.id for t in trials] == list(range(1, len(trials) + 1))
    connection = sqlite3.connect(copy)
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()
    assert len(_complete_ids(path)) > len(before)  # the study went on after the backup

    saved_bytes = copy.read_bytes()
    with StudyStore(path, read_only=True) as store:
        with pytest.raises(StudyStoreError, match="copy.sqlite already exists.*never overwrites"):
            store.backup(copy)
    assert copy.read_bytes() == saved_bytes
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.sqlite"]
