"""The quality_estimation example (Kofler2022, table 1) runs from its TOML file: a tiny variant
(sizes rewritten in the TOML text, one architecture, one optimiser) in the default run, the
shipped file as a slow test that also checks that every configuration learns. Checks the study,
the results table and the report figures."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from medtune.cli import main
from tests.conftest import rewrite_settings
from tests.e2e.recorded import check_recorded
from medtune.study.store import StudyStore, TrialState
from medtune.plugins.tasks.quality import report_figures

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quality_estimation.toml"
TINY = {"image_size": "32", "train_exams": "3", "test_exams": "2", "external_exams": "2", "epochs": "1"}
#: the tiny run keeps one architecture and one optimiser: 4 trainings
TINY_CHOICES = {'choices = ["densenet121", "densenet201"]': 'choices = ["densenet121"]',
                'choices = ["adam", "sgd"]': 'choices = ["adam"]'}
COLUMNS = ("mae", "rmse", "rater_mae", "external_r_dice")


def _tiny_text() -> str:
    text = rewrite_settings(EXAMPLE.read_text(), TINY)
    for old, new in TINY_CHOICES.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def _run_and_check(path: Path, folder: Path, trials: int, monkeypatch, capsys, learns: bool = False) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "DQE on the brain-tumour phantom" in out
    for column in COLUMNS:
        assert column in out
    for normalisation in ("minmax", "percentile"):  # a row per configuration, with n = 1
        for encoding in ("tissue", "brats"):
            assert re.search(rf"densenet121\s.*adam\s.*{normalisation}\s.*{encoding}\s.*\d\.\d{{3}}.*\s1\s", out), out
    store = StudyStore(folder / "studies" / "quality_estimation.sqlite")
    finished = store.trials()
    store.close()
    assert len(finished) == trials and all(t.state == TrialState.COMPLETE for t in finished)
    assert {(t.config["normalisation"], t.config["label_encoding"]) for t in finished} == {
        (n, e) for n in ("minmax", "percentile") for e in ("tissue", "brats")}
    assert len({tuple(sorted(t.config.items())) for t in finished}) == trials  # no configuration twice
    for trial in finished:
        metrics = trial.metrics
        # one epoch on 8 exams learns nothing yet: the error is only checked to be a real number
        assert trial.value == pytest.approx(metrics["mae"]) and math.isfinite(metrics["mae"]) and metrics["mae"] >= 0
        assert metrics["rmse"] >= metrics["mae"]
        assert len(metrics["predicted"]) == len(metrics["rated"]) == len(metrics["rated_min"])
        assert all(lo <= r <= hi for lo, r, hi in zip(metrics["rated_min"], metrics["rated"], metrics["rated_max"]))
        assert 0 < metrics["rater_mae"] < 2
        if "pearson_r" in metrics:
            assert metrics["pearson_low"] <= metrics["pearson_r"] <= metrics["pearson_high"]
        assert math.isfinite(metrics["seconds_training"])
        if learns:  # the shipped size: every configuration's r is positive, with its interval
            assert metrics["pearson_low"] > 0 and metrics["pearson_r"] > 0.4
    if learns:  # and the best one clearly beats the best constant prediction (the held-out median)
        best = min(finished, key=lambda t: t.value)
        rated = np.asarray(best.metrics["rated"])
        assert best.value < 0.8 * np.abs(rated - np.median(rated)).mean()
    plots = folder / "plots"
    plots.mkdir()
    figures = report_figures(finished, plots)
    assert [name for name, _ in figures] == ["quality_scatter.png", "quality_bland_altman.png"]
    assert all((plots / name).stat().st_size > 1000 for name, _ in figures)
    assert report_figures([], plots) == []


def test_tiny_quality_estimation(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "quality_tiny.toml"
    path.write_text(_tiny_text())
    _run_and_check(path, tmp_path, 4, monkeypatch, capsys)
    check_recorded("quality_estimation", tmp_path / "studies" / "quality_estimation.sqlite")


@pytest.mark.slow
def test_quality_estimation(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_and_check(EXAMPLE, tmp_path, 16, monkeypatch, capsys, learns=True)
