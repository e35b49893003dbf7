"""The built-in segmentation task trains for real and reports every epoch."""

from __future__ import annotations

import pytest

import numpy as np

from medtune.errors import MedtuneError
from medtune.tasks import train_segmentation
from medtune.tasks.segmentation import lesion_metrics, lesion_scores

TINY = {"train_size": 16, "val_size": 8, "batch_size": 8, "width": 4, "lr": 5e-3}


def test_reports_each_epoch_and_returns_the_last_dice():
    curve = []
    result = train_segmentation(TINY, resource=2, seed=0, report=lambda e, d: curve.append((e, d)))
    assert [epoch for epoch, _ in curve] == [1, 2]
    assert 0.0 <= result["value"] <= 1.0 and result["value"] == curve[-1][1]
    assert {"lesion_dice_small", "lesion_recall_small", "lesion_dice_large"} <= set(result)
    assert "glf_alpha_p" not in result  # a plain Dice loss has no coefficients


def test_same_seed_same_result_and_glf_trajectories():
    config = {**TINY, "loss": "glf", "options_by_loss": {"glf": {"adaptive": "deterministic"},
                                                         "dice": {"bogus": 1}}}
    first = train_segmentation(config, 1, seed=3)
    assert first == train_segmentation(config, 1, seed=3)
    steps = TINY["train_size"] // TINY["batch_size"]  # one epoch
    assert len(first["glf_alpha_p"]) == len(first["glf_beta2"]) == steps


def test_lesion_scores_by_component_and_size_bin():
    label = np.zeros((40, 40), dtype=np.int64)
    label[2:6, 2:6] = 1        # 16 px: found exactly
    label[20:34, 20:34] = 1    # 196 px: half found, plus 14 false pixels next to it
    label[10:13, 30:33] = 1    # 9 px: missed
    prediction = np.zeros((40, 40), dtype=bool)
    prediction[2:6, 2:6] = True
    prediction[20:27, 19:34] = True
    scores = sorted(lesion_scores(prediction, label))
    assert [(area, hit) for area, _, hit in scores] == [(9, False), (16, True), (196, True)]
    assert scores[1][1] == 1.0 and scores[0][1] == 0.0
    assert scores[2][1] == 2 * 98 / (105 + 196)
    metrics = lesion_metrics(scores)
    assert metrics == {"lesion_dice_small": 0.5, "lesion_recall_small": 0.5,
                       "lesion_dice_medium": scores[2][1]}


def test_learns_on_the_phantom():
    config = {**TINY, "train_size": 48, "width": 8, "loss": "dice", "lr": 1e-2}
    curve = []
    train_segmentation(config, resource=6, seed=0, report=lambda e, d: curve.append(d))
    assert max(curve) > 0.2, curve  # an untrained network scores about 0


@pytest.mark.parametrize("config,message", [
    ({"learning_rate": 1e-3}, "unknown setting"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ({"width": 0}, "width must be > 0"),
    ({"options_by_loss": {"glf": 3}}, "options_by_loss must map loss names"),
])
def test_bad_settings(config, message):
    with pytest.raises(MedtuneError, match=message):
        train_segmentation(config, resource=1)
