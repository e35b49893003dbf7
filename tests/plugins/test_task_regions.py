"""The regions task (Rukundo2021): a three-class UNet on the ring phantom that returns per-region
and global accuracy, IoU and BF score, and difference images drawn by its report figures."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from medtune.errors import MedtuneError
from medtune.plugins.tasks.regions import (
    DIFFERENCE_CODES,
    REGIONS,
    RegionsTask,
    difference_image,
    region_metrics,
    report_figures,
)
from medtune.study.store import Trial, TrialState
from medtune.tasks import load_task

train_regions = RegionsTask()
TINY = {"train_size": 8, "val_size": 4, "epochs": 1, "batch_size": 4, "width": 4,
        "image_size": 64, "difference_cases": 2}


def _rings() -> tuple[np.ndarray, np.ndarray]:
    """Two 32x32 label maps: a disc of blood pool inside a ring of myocardium."""
    rows, cols = np.mgrid[0:32, 0:32]
    radius = np.hypot(rows - 16, cols - 16)
    truth = np.where(radius <= 8, 2, np.where(radius <= 12, 1, 0)).astype(np.int64)
    return np.stack([truth, truth])


def test_registered_as_a_task():
    assert isinstance(load_task("regions"), RegionsTask)


def test_perfect_prediction_scores_one_everywhere():
    truths = _rings()
    metrics = region_metrics(truths, truths)
    assert set(metrics) == {f"{m}_{r}" for m in ("accuracy", "iou", "bf") for r in REGIONS} | {
        "global_accuracy", "mean_accuracy", "mean_iou", "mean_bf"}
    assert all(value == 1.0 for value in metrics.values())


def test_a_thinner_predicted_ring_lowers_the_myocardium_scores_only_where_expected():
    truths = _rings()
    predictions = truths.copy()
    predictions[0][(truths[0] == 1) & (np.hypot(*np.mgrid[0:32, 0:32] - 16) > 11)] = 0
    metrics = region_metrics(predictions, truths)
    myocardium = (truths == 1).sum()
    lost = myocardium - (predictions == 1).sum()
    assert lost > 0
    assert metrics["accuracy_myocardium"] == pytest.approx(1 - lost / myocardium)
    assert metrics["iou_myocardium"] == pytest.approx(1 - lost / myocardium)
    assert metrics["accuracy_blood_pool"] == 1.0  # the cavity is untouched
    assert metrics["accuracy_background"] == 1.0  # every background pixel is still background
    assert metrics["iou_background"] < 1.0  # but the background now has false positives
    assert metrics["global_accuracy"] == pytest.approx(1 - lost / truths.size)
    assert metrics["mean_iou"] == pytest.approx(np.mean([metrics[f"iou_{r}"] for r in REGIONS]))


def test_difference_image_codes_false_positives_and_negatives_of_the_myocardium():
    truth = np.array([[0, 1, 1, 2], [0, 1, 2, 2]])
    prediction = np.array([[1, 1, 0, 0], [0, 1, 2, 1]])
    codes = difference_image(prediction, truth)
    expected = [[DIFFERENCE_CODES["false_positive"], DIFFERENCE_CODES["agree_myocardium"],
                 DIFFERENCE_CODES["false_negative"], DIFFERENCE_CODES["other_error"]],
                [DIFFERENCE_CODES["agree_other"], DIFFERENCE_CODES["agree_myocardium"],
                 DIFFERENCE_CODES["agree_other"], DIFFERENCE_CODES["false_positive"]]]
    assert codes.tolist() == expected
    with pytest.raises(MedtuneError, match="same"):
        difference_image(prediction, truth[:, :3])


@pytest.mark.parametrize("bad, match", [
    ({"weight_decay": -1e-3}, "weight_decay"),
    ({"epochs": 0}, "epochs"),
    ({"difference_cases": 9, "val_size": 4}, "difference_cases"),
    ({"momentum": 0.9}, "unknown setting"),
])
def test_bad_settings_are_rejected_with_the_key(bad, match):
    with pytest.raises(MedtuneError, match=match):
        train_regions({**TINY, **bad})


@pytest.fixture(scope="module")
def tiny_run():
    reports = []
    return train_regions(TINY, seed=0, report=lambda epoch, value: reports.append((epoch, value))), reports


def test_tiny_training_returns_every_metric_and_the_difference_images(tiny_run):
    result, reports = tiny_run
    assert result["value"] == result["global_accuracy"]
    assert reports == [(1, result["value"])]
    for region in REGIONS:
        for name in ("accuracy", "iou", "bf"):
            assert 0.0 <= result[f"{name}_{region}"] <= 1.0
    for case in range(2):
        codes = np.asarray(result[f"difference_{case}"])
        assert codes.shape == (64 * 64,)
        assert set(np.unique(codes)) <= set(DIFFERENCE_CODES.values())
    assert "difference_2" not in result


def test_weight_decay_reaches_the_optimiser():
    """A huge L2 factor shrinks the weights to near zero in one epoch: the network then
    predicts (almost) one class everywhere, unlike the unregularised one."""
    plain = train_regions({**TINY, "weight_decay": 0.0, "lr": 1e-2}, seed=1)
    crushed = train_regions({**TINY, "weight_decay": 1e3, "lr": 1e-2}, seed=1)
    assert crushed["mean_iou"] < plain["mean_iou"]


def _trial(trial_id: int, decay: float, metrics: dict) -> Trial:
    return Trial(id=trial_id, suggestion_id=trial_id, config={"weight_decay": decay},
                 resource=None, tag={}, seed=trial_id, state=TrialState.COMPLETE,
                 value=metrics.get("global_accuracy"), failure_reason=None, traceback=None,
                 started=datetime.now(), finished=None, duration=None, host=None,
                 worker_pid=None, completion_order=trial_id, asked_after=0, requeued_from=None,
                 told_value=None, told_failed=None, metrics=metrics)


def test_report_figures_draw_both_figures_from_the_trials(tiny_run, tmp_path):
    result, _ = tiny_run
    metrics = {k: v for k, v in result.items() if k != "value"}
    trials = [_trial(1, 5e-3, metrics), _trial(2, 5e-5, metrics), _trial(3, 5e-5, metrics)]
    figures = report_figures(trials, tmp_path)
    assert [name for name, _ in figures] == ["regions.png", "differences.png"]
    for name, caption in figures:
        assert (tmp_path / name).stat().st_size > 1000 and caption


def test_report_figures_skip_studies_without_region_metrics(tmp_path):
    assert report_figures([_trial(1, 1e-3, {"dice": 0.5})], tmp_path) == []
    assert list(tmp_path.iterdir()) == []
