"""examples/bo_vs_random.toml (Bertrand2019, sec. 2.4, table 2.3) and the [replay] table behind it:
every model of a finite space trained once, then random search and BO replayed over the
tabulated values. A replay of a cheap function study checks the numbers against the theory of
random search; a tiny variant of the example runs in CI, the example as shipped is a slow test."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

import medtune.report.replay
from medtune.cli import main
from tests.conftest import rewrite_settings
from tests.e2e.recorded import check_recorded

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bo_vs_random.toml"
TINY = {"train_size": "8", "val_size": "8", "epochs": "1", "runs": "20"}

#: 12 configurations, one best (x = 7): random search needs (12 + 1) / (1 + 1) = 6.5 draws
FUNCTION_STUDY = """
[study]
name = "parabola"
direction = "maximize"

[searcher]
name = "grid"

[objective]
function = "tests.e2e.test_example_bo_vs_random:parabola"

[space.x]
type = "ordinal"
values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]

[replay]
searchers = ["random", "bayes"]
runs = 150
goals = ["best", "top 25%"]

[replay.options.bayes]
refit_growth = 1.0
restarts = 0
"""


def parabola(config, resource, seed, report):
    """A single peak at x = 7."""
    return -float((config["x"] - 7) ** 2)


def _row(out: str, label: str) -> list[float]:
    """The numbers of the table row ``label`` (means, stds, worst, theory)."""
    line = next(line for line in out.splitlines() if line.startswith(label))
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", line[len(label):])]


def _run(path: Path, monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["run", str(path)]) == 0
    return capsys.readouterr().out


def test_replay_matches_the_random_search_theory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "parabola.toml"
    path.write_text(FUNCTION_STUDY)
    out = _run(path, monkeypatch, capsys)
    assert "12 models trained (of 12), 150 runs each" in out
    assert "random average" in out and "bayes average" in out and "theory (random)" in out
    # Best model: random mean ± std, worst, bayes mean ± std, worst, theory mean ± std
    random_mean, _, random_worst, bayes_mean, _, bayes_worst, theory_mean, _ = _row(out, "Best model")
    assert theory_mean in (6, 7)  # 6.5 printed without decimals
    assert abs(random_mean - 6.5) < 1.5 and random_worst <= 12 and bayes_worst <= 12
    # top 25 %: 3 acceptable models of 12 -> (12 + 1) / (3 + 1) = 3.25 draws on average
    assert abs(_row(out, "Top 25%")[0] - 3.25) < 1.0
    folder = tmp_path / "studies" / "parabola_report"
    table = (folder / "replay_table.txt").read_text()
    assert table.splitlines()[1].startswith("Best model") and table.strip() in out
    assert (folder / "replay_regret.png").stat().st_size > 0
    regret = json.loads((folder / "replay.json").read_text())["replay"]["regret"]
    assert set(regret) == {"random", "bayes"}
    assert regret["random"][-1] == 0.0 and regret["random"][0] > 0  # the best is always found

    # a repeated report shows the replay from the kept result, without replaying again
    def no_replay(*args, **kwargs):
        raise AssertionError("replayed again although the trials did not change")

    monkeypatch.setattr(medtune.report.replay, "replay", no_replay)
    assert main(["report", str(tmp_path / "studies" / "parabola.sqlite")]) == 0
    page = (folder / "index.html").read_text()
    assert "<h2>Replay</h2>" in page and "replay_regret.png" in page and "Best model" in page


@pytest.mark.parametrize("change,message", [
    (('type = "ordinal"\nvalues = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]',
      'type = "float"\nlow = 1\nhigh = 12\n[searcher]\nname = "random"'),
     "replaying needs a finite space"),
    (('searchers = ["random", "bayes"]', 'searchers = ["oracle", "bayes"]'), "searcher 'oracle'"),
    (("restarts = 0", "restarts = 0\ncolour = 1"), "searcher 'bayes'"),
])
def test_replay_mistakes_are_refused_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                                change, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    path = tmp_path / "parabola.toml"
    text = FUNCTION_STUDY.replace(*change)
    if "float" in text:  # a float space: the grid searcher would refuse it first
        text = text.replace('[searcher]\nname = "grid"\n', "")
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    out = capsys.readouterr().out
    assert message in out and "replay" in out, out
    assert not (tmp_path / "studies").exists()


def _check(folder: Path, out: str, runs: int) -> None:
    with sqlite3.connect(folder / "studies" / "bo_vs_random.sqlite") as db:
        rows = db.execute("SELECT state, config FROM trials").fetchall()
    assert len(rows) == 24 and all(state == "COMPLETE" for state, _ in rows)
    assert len({config for _, config in rows}) == 24  # every model once
    assert f"24 models trained (of 24), {runs} runs each" in out
    for label in ("Best model", "Within 1%", "Within 5%", "Top 10%"):
        numbers = _row(out, label)
        assert len(numbers) == 8, (label, numbers)  # both searchers reached it in every run
        assert max(numbers[2], numbers[5]) <= 24  # nobody needs more draws than models
    report = folder / "studies" / "bo_vs_random_report"
    for name in ("index.html", "replay_regret.png", "replay_table.txt", "best_by_trial.png"):
        assert (report / name).stat().st_size > 0, name


def test_tiny_bo_vs_random(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bo_vs_random.toml"
    path.write_text(rewrite_settings(EXAMPLE.read_text(), TINY))
    _check(tmp_path, _run(path, monkeypatch, capsys), runs=20)
    check_recorded("bo_vs_random", tmp_path / "studies" / "bo_vs_random.sqlite")


@pytest.mark.slow
def test_bo_vs_random(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _run(EXAMPLE, monkeypatch, capsys)
    _check(tmp_path, out, runs=200)
    # 200 random replays: the mean draws to the best model is near (N + 1) / (M + 1)
    random_mean, theory_mean = _row(out, "Best model")[0], _row(out, "Best model")[6]
    assert abs(random_mean - theory_mean) < 3
