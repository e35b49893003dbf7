"""A third-party task runs a whole study: `medtune run` finds the example plugin's ``quadratic``
task through its entry point, checks its settings before writing anything, and the report
draws the task's figure."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

STUDY = """
[study]
name = "quadratic"
direction = "minimize"
storage = "quadratic.sqlite"
executor = "{executor}"
n_workers = {workers}

[searcher]
name = "grid"

[objective]
task = "{task}"

[objective.settings]
target = 0.5
{extra}
[space.x]
type = "categorical"
choices = [0.0, 0.5, 2.0]
"""


def _run(installed_plugins, folder, task: str = "quadratic", extra: str = "",
         executor: str = "inline") -> subprocess.CompletedProcess:
    workers = 2 if executor == "process" else 1
    (folder / "study.toml").write_text(STUDY.format(task=task, extra=extra, executor=executor, workers=workers))
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(installed_plugins["example_plugin"])]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-m", "medtune.cli", "run", "study.toml"], cwd=folder,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_medtune_run_trains_a_third_party_task(installed_plugins, tmp_path, executor):
    """Process workers find the task through their own entry points: only its name travels."""
    result = _run(installed_plugins, tmp_path, executor=executor)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quadratic by x" in result.stdout  # the task's default table
    with sqlite3.connect(tmp_path / "quadratic.sqlite") as db:
        rows = db.execute("SELECT state, config, value, metrics FROM trials ORDER BY id").fetchall()
    trials = {json.loads(config)["x"]: (state, value, json.loads(metrics)) for state, config, value, metrics in rows}
    assert trials == {0.0: ("COMPLETE", 0.25, {"distance": 0.5}), 0.5: ("COMPLETE", 0.0, {"distance": 0.0}),
                      2.0: ("COMPLETE", 2.25, {"distance": 1.5})}
    report = tmp_path / "quadratic_report"
    assert (report / "quadratic.png").stat().st_size > 0
    assert "the value of each trial against x" in (report / "index.html").read_text()


@pytest.mark.parametrize("task, extra, message", [
    ("quadratc", "", "objective.task: no task named 'quadratc'. Did you mean 'quadratic'?"),
    ("quadratic", "targt = 1.0", "objective.settings: quadratic task: unknown setting 'targt' "
                                 "(did you mean 'target'?)"),
])
def test_a_misspelt_task_or_setting_writes_nothing(installed_plugins, tmp_path, task, extra, message):
    result = _run(installed_plugins, tmp_path, task, extra)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "quadratic.sqlite").exists()
