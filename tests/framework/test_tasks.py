"""The built-in segmentation task trains for real and reports every epoch."""

from __future__ import annotations

import pytest

from medtune.errors import MedtuneError
from medtune.tasks import train_segmentation

TINY = {"train_size": 16, "val_size": 8, "batch_size": 8, "width": 4, "lr": 5e-3}


def test_reports_each_epoch_and_returns_the_last_dice():
    curve = []
    dice = train_segmentation(TINY, resource=2, seed=0, report=lambda e, d: curve.append((e, d)))
    assert [epoch for epoch, _ in curve] == [1, 2]
    assert 0.0 <= dice <= 1.0 and dice == curve[-1][1]


def test_same_seed_same_result():
    config = {**TINY, "loss": "glf", "loss_options": {"adaptive": "deterministic"}}
    assert train_segmentation(config, 1, seed=3) == train_segmentation(config, 1, seed=3)


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
])
def test_bad_settings(config, message):
    with pytest.raises(MedtuneError, match=message):
        train_segmentation(config, resource=1)
