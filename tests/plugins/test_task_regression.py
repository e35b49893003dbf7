"""The bone-age regression task (Pourchot2022, ch. 6): the metrics of tables 6.1-6.3, the
density weighting reaching the loss, and the report figure."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
import torch

from medtune.errors import MedtuneError
from medtune.plugins.tasks import regression
from medtune.plugins.tasks.regression import (
    BoneAgeRegressor,
    RegressionTask,
    regression_metrics,
    report_figures,
)
from medtune.study.store import Trial, TrialState
from medtune.tasks import load_task

train_regression = RegressionTask()
TINY = {"train_size": 24, "val_size": 24, "epochs": 1, "batch_size": 8, "width": 4,
        "image_size": 32}


def test_registered_as_a_task():
    assert isinstance(load_task("regression"), RegressionTask)


def test_metrics_by_subgroup_in_months():
    bone_age = np.array([6.0, 10.0, 11.0, 15.0])
    chronological = np.array([9.0, 10.0, 11.0, 15.0])  # the first case is 3 years delayed
    male = np.array([True, False, False, True])
    predicted = bone_age + np.array([1.0, 0.5, -0.5, -2.5])
    metrics = regression_metrics(predicted, bone_age, chronological, male)
    assert metrics["mae"] == pytest.approx(12 * 4.5 / 4)
    assert metrics["mae_male"] == pytest.approx(12 * 1.75)
    assert metrics["mae_female"] == pytest.approx(12 * 0.5)
    assert metrics["mae_low"] == pytest.approx(12.0) and metrics["bias_low"] == pytest.approx(12.0)
    assert metrics["mae_middle"] == pytest.approx(6.0) and metrics["bias_middle"] == pytest.approx(0.0)
    assert metrics["bias_high"] == pytest.approx(-30.0)
    # predicted 7 against chronological 9: not flagged; the old case predicted 12.5 against 15
    # is flagged although healthy
    assert metrics["sensitivity"] == 0.0
    assert metrics["specificity"] == pytest.approx(2 / 3)


def test_metrics_leave_out_what_the_cases_cannot_define():
    metrics = regression_metrics([10.0, 11.0], [10.0, 11.0], [10.0, 11.0], [False, False])
    assert "mae_male" not in metrics and "sensitivity" not in metrics
    assert "mae_low" not in metrics and metrics["specificity"] == 1.0


def test_the_regressor_uses_its_covariates():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 32, 32)
    with_age = BoneAgeRegressor(4, ["chronological_age"])
    young, old = torch.tensor([[0.0, 6.0]] * 2), torch.tensor([[0.0, 16.0]] * 2)
    assert not torch.allclose(with_age(images, young), with_age(images, old))
    without = BoneAgeRegressor(4, [])
    assert torch.allclose(without(images, young), without(images, old))


@pytest.mark.parametrize("bad, match", [
    ({"weighting": "inverse"}, "weighting"),
    ({"density_on": "sex"}, "density_on"),
    ({"alpha": -0.5}, "alpha"),
    ({"covariates": ["height"]}, "covariates"),
    ({"dataset_options": {"distribution": "uniform"}}, "distribution"),
    ({"dropout": 0.1}, "unknown setting"),
])
def test_bad_settings_are_rejected_with_the_key(bad, match):
    with pytest.raises(MedtuneError, match=match):
        train_regression({**TINY, **bad})


@pytest.mark.parametrize("weighting, density_on, alpha, columns", [
    ("none", "bone_age", 0.0, 1),
    ("inverse_density", "bone_age", 0.5, 1),
    ("inverse_density", "joint", 0.5, 2),
])
def test_weighting_builds_the_density_weighted_loss(monkeypatch, weighting, density_on, alpha,
                                                    columns):
    built = []
    original = regression.DensityWeightedLoss

    def spy(labels, **options):
        loss = original(labels, **options)
        built.append(loss)
        return loss

    monkeypatch.setattr(regression, "DensityWeightedLoss", spy)
    result = train_regression({**TINY, "weighting": weighting, "density_on": density_on})
    assert len(built) == 1
    assert built[0].alpha == alpha and built[0].columns == columns
    if alpha:  # rare training labels weigh more than common ones
        weights = built[0].training_weights
        assert weights.max() > 1.5 * weights.min()
    assert result["value"] > 0


def test_tiny_training_returns_every_metric_and_reports_each_epoch():
    reports = []
    result = train_regression({**TINY, "epochs": 2}, seed=1,
                              report=lambda epoch, mae: reports.append((epoch, mae)))
    assert [epoch for epoch, _ in reports] == [1, 2]
    assert reports[-1][1] == result["value"]
    assert {"mae_female", "mae_male", "mae_low", "mae_middle", "mae_high", "sensitivity",
            "specificity"} <= set(result)


def _trial(trial_id: int, weighting: str, metrics: dict) -> Trial:
    return Trial(id=trial_id, suggestion_id=trial_id, config={"weighting": weighting},
                 resource=None, tag={}, seed=trial_id, state=TrialState.COMPLETE, value=1.0,
                 failure_reason=None, traceback=None, started=datetime.now(), finished=None,
                 duration=None, host=None, worker_pid=None, completion_order=trial_id,
                 asked_after=0, requeued_from=None, told_value=None, told_failed=None,
                 metrics=metrics)


def test_report_figure_of_the_mae_by_range(tmp_path):
    ranges = {"mae_low": 9.0, "mae_middle": 5.0, "mae_high": 8.0}
    trials = [_trial(1, "none", ranges), _trial(2, "inverse_density", ranges),
              _trial(3, "inverse_density", {**ranges, "mae_low": 7.0})]
    figures = report_figures(trials, tmp_path)
    assert [name for name, _ in figures] == ["mae_by_range.png"]
    assert (tmp_path / "mae_by_range.png").stat().st_size > 1000
    assert report_figures([_trial(4, "none", {"mae": 3.0})], tmp_path / "none") == []
