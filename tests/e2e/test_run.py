"""`medtune run` end to end on a tiny study: study file, results, report; resume and errors."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from medtune.cli import main

TINY = """
[study]
name = "tiny"
seed = 1
[searcher]
name = "hyperband"
R = 3
eta = 3
[objective]
task = "segmentation"
[objective.settings]
train_size = 8
val_size = 8
batch_size = 8
[space.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true
[space.width]
type = "ordinal"
values = [4, 8]
[space.loss]
type = "categorical"
choices = ["dice", "glf"]
"""


def test_run_status_report_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["run", "tiny.toml"]) == 0
    study = tmp_path / "studies" / "tiny.sqlite"
    out = capsys.readouterr().out
    assert "best trials" in out and "Stopped" in out
    with sqlite3.connect(study) as db:
        states = dict(db.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall())
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Hyperband with R=3, eta=3: a bracket of 3 configurations at 1 epoch -> 1 at 3 epochs,
    # and a bracket of 2 configurations at 3 epochs
    assert states == {"COMPLETE": 6}
    report = tmp_path / "studies" / "tiny_report"
    assert (report / "index.html").read_text().count("<tr>") == 7  # header + 6 trials
    assert (report / "best_by_trial.png").stat().st_size > 1000
    assert (report / "learning_curves.png").exists()
    assert (report / "parameters.png").stat().st_size > 1000

    assert main(["status", str(study)]) == 0
    assert "COMPLETE" in capsys.readouterr().out
    assert main(["status", "tiny"]) == 0  # a study's name, looked up under studies/
    assert "Study tiny (maximize)" in capsys.readouterr().out
    assert main(["resume", str(study)]) == 0  # nothing left to do: nothing is added
    with sqlite3.connect(study) as db:
        assert db.execute("SELECT count(*) FROM trials").fetchone()[0] == 6


def test_bad_config_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(TINY.replace('name = "hyperband"', 'name = "hyperbnad"'))
    assert main(["run", "bad.toml"]) == 2
    err = capsys.readouterr().out
    assert "hyperbnad" in err and "hyperband" in err
    assert not (tmp_path / "studies").exists()


def test_existing_study_is_not_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.sqlite").write_bytes(b"precious")
    assert main(["run", "tiny.toml"]) == 2
    assert "medtune resume" in capsys.readouterr().out
    assert Path("studies/tiny.sqlite").read_bytes() == b"precious"


def test_the_same_config_runs_on_a_local_ray_cluster(tmp_path, monkeypatch, ray_cluster):
    from tests.conftest import python_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", python_path())
    (tmp_path / "inline.toml").write_text(TINY.replace('name = "tiny"', 'name = "inline"'))
    ray_config = TINY.replace('name = "tiny"', 'name = "on_ray"').replace(
        "seed = 1", f'seed = 1\nexecutor = "ray"\nn_workers = 2\naddress = "{ray_cluster}"'
    )
    (tmp_path / "ray.toml").write_text(ray_config)
    assert main(["run", "inline.toml"]) == 0
    assert main(["run", "ray.toml"]) == 0
    counts = {}
    for name in ("inline", "on_ray"):
        with sqlite3.connect(tmp_path / "studies" / f"{name}.sqlite") as db:
            counts[name] = db.execute(
                "SELECT count(*) FROM trials WHERE state = 'COMPLETE'"
            ).fetchone()[0]
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            pids = {row[0] for row in db.execute("SELECT worker_pid FROM trials")}
        if name == "on_ray":
            assert os.getpid() not in pids  # trials ran in Ray workers; the driver only wrote
    assert counts["inline"] == counts["on_ray"] == 6
