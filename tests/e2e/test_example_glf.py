"""The Seo2021 example, examples/glf_small_lesions.toml, run from its TOML file: every loss on
the same paired replicates, the results table with the Dice baseline's small-lesion recall and
the seconds per epoch, the paired t-tests against Dice and the report's figures (the GLF
trajectories of both readings of the freeze rule and of the exploratory rule). A tiny variant
(sizes rewritten in the TOML text, two replicates, trials in this process) runs in the default
run; the example as shipped is a slow test (about 21 minutes on two idle cores)."""

from __future__ import annotations

import json
import re
import sqlite3
import tomllib
from pathlib import Path

import pytest

from medtune.cli import main
from tests.conftest import rewrite_settings
from tests.e2e.recorded import check_recorded

GLF = Path(__file__).resolve().parents[2] / "examples" / "glf_small_lesions.toml"
#: setting -> value of the tiny variant: every loss, one epoch of one step, replicates 0 and 1
TINY = {"train_size": "8", "val_size": "8", "epochs": "1", "high": "1", "executor": '"inline"',
        "n_workers": "1"}
#: the adaptive losses, whose trials record the GLF trajectories
ADAPTIVE = {"glf_det_freeze_below", "glf_det_freeze_above", "glf_exploratory"}
COLUMNS = ("value", "precision", "recall", "dice_lesion_slices", "dice_empty_slices",
           "lesion_dice_small", "lesion_dice_medium", "lesion_dice_large",
           "lesion_recall_small", "seconds_per_epoch")
REPORT = ("index.html", "paired_tests.png", "paired_tests.txt", "lesion_sizes.png",
          "trajectories.png", "tversky_plane.png")


def _losses(text: str) -> list[str]:
    return tomllib.loads(text)["space"]["loss"]["choices"]


def _run(path: Path, monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # the whole table on one line per row
    assert main(["run", str(path)]) == 0
    return capsys.readouterr().out


def _trials(study: Path) -> list[dict]:
    with sqlite3.connect(study) as db:
        rows = db.execute("SELECT state, config, metrics FROM trials").fetchall()
    return [{"state": state, "config": json.loads(config), "metrics": json.loads(metrics or "{}")}
            for state, config, metrics in rows]


def _check(folder: Path, text: str, out: str) -> dict[str, list[dict]]:
    """The printed table, the study and the report of a finished run; its trials by loss."""
    losses = _losses(text)
    replicates = tomllib.loads(text)["space"]["replicate"]["high"] + 1
    assert "Seo2021" in out and all(column in out for column in COLUMNS)
    for loss in losses:  # one row per loss: mean ± std over the replicates, n
        assert re.search(rf"│ {re.escape(loss)}\s.*±.*│ {replicates} │", out), loss
    trials = _trials(folder / "studies" / "glf_small_lesions.sqlite")
    assert all(t["state"] == "COMPLETE" for t in trials)
    by_loss: dict[str, list[dict]] = {}
    for t in trials:
        by_loss.setdefault(t["config"]["loss"], []).append(t)
    assert sorted(by_loss) == sorted(losses)
    for loss, runs in by_loss.items():  # every loss on every replicate: the tests are paired
        assert sorted(t["config"]["replicate"] for t in runs) == list(range(replicates)), loss
        for t in runs:
            assert set(COLUMNS[1:]) - {"lesion_dice_medium", "lesion_dice_large"} <= set(
                t["metrics"]), loss
            assert t["metrics"]["seconds_per_epoch"] > 0
            assert ("glf_alpha_p" in t["metrics"]) == (loss in ADAPTIVE), loss
    report = folder / "studies" / "glf_small_lesions_report"
    for name in REPORT:
        assert (report / name).stat().st_size > 0, name
    paired = (report / "paired_tests.txt").read_text().splitlines()
    assert paired[0].startswith("paired t-tests against dice")
    rows = {line.split()[0]: line for line in paired[2:]}
    assert sorted(rows) == sorted(set(losses) - {"dice"})
    for line in rows.values():  # a difference and a p-value per metric, the pairs last
        assert line.count("(p ") == 9 and line.split()[-1] == str(replicates), line
    assert "paired t-tests against dice" in out  # printed by the run, under the results
    for loss in set(losses) - {"dice"}:
        assert re.search(rf"│ {re.escape(loss)}\s*│.*\(p .*│ {replicates}\s*│", out), loss
    page = (report / "index.html").read_text()
    assert "paired t-tests against dice" in page
    for loss in ADAPTIVE:  # Figs. 6 and 7 for both freeze readings and the exploratory rule
        assert page.count(f"{loss} (trial") >= 2, loss  # in both captions
    return by_loss


def test_tiny_glf_small_lesions(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = rewrite_settings(GLF.read_text(), TINY)
    path = tmp_path / "glf_tiny.toml"
    path.write_text(text)
    by_loss = _check(tmp_path, text, _run(path, monkeypatch, capsys))
    # the freeze readings differ from the first step: at p = 0.5 everywhere <FP> >> 5, so the
    # caption's words ("above") keep alpha_p at 1 while the other reading moves it
    above = by_loss["glf_det_freeze_above"][0]["metrics"]["glf_alpha_p"]
    below = by_loss["glf_det_freeze_below"][0]["metrics"]["glf_alpha_p"]
    assert above[0] == 1.0 and below[0] != 1.0
    check_recorded("glf_small_lesions", tmp_path / "studies" / "glf_small_lesions.sqlite")


@pytest.mark.slow
def test_glf_small_lesions(tmp_path, monkeypatch, capsys):
    """The example as shipped (35 trainings, two at a time): about 21 minutes on two idle cores."""
    monkeypatch.chdir(tmp_path)
    by_loss = _check(tmp_path, GLF.read_text(), _run(GLF, monkeypatch, capsys))
    # the calibrated regime: the Dice baseline is precise and misses small lesions
    dice = [t["metrics"] for t in by_loss["dice"]]
    assert sum(m["precision"] for m in dice) / len(dice) >= 0.8
    assert sum(m["lesion_recall_small"] for m in dice) / len(dice) < 0.9
