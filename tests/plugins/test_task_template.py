"""The template-deformation task (Bertrand2019, table 4.2) at a tiny scale: every method trains for one
epoch, reports, and returns the table's metrics; bad settings are refused."""

from __future__ import annotations

import math

import pytest

from medtune.errors import MedtuneError
from medtune.plugins.tasks.template import METHODS, TemplateTask

train_template = TemplateTask()
TINY = {"image_size": 32, "train_size": 5, "val_size": 5, "epochs": 1, "batch_size": 2, "threads": 1,
        "implicit_options": {"global_iterations": 3, "local_iterations": 3, "widths": [1.0]}}
KEYS = {"value", "dice_adult", "dice_child", "components", "seconds_per_epoch", "parameters"}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_returns_the_table_metrics(method):
    reports = []
    result = train_template({**TINY, "method": method}, seed=0, report=lambda epoch, value: reports.append(value))
    assert set(result) == KEYS
    assert all(isinstance(value, float) and math.isfinite(value) for value in result.values())
    assert len(reports) == 1 and 0 <= reports[0] <= 1
    assert 0 <= result["dice_adult"] <= 1 and 0 <= result["dice_child"] <= 1
    assert result["seconds_per_epoch"] > 0 and result["parameters"] > 1000
    if method != "baseline":  # a deformed one-piece template, whatever the training
        assert result["components"] == 1.0
    if method != "template+implicit":
        assert result["value"] == pytest.approx(reports[0])


def test_resource_overrides_the_epochs():
    reports = []
    train_template({**TINY, "method": "deformation", "epochs": 5}, resource=2, seed=1,
                   report=lambda epoch, value: reports.append(epoch))
    assert reports == [1, 2]


@pytest.mark.parametrize("config, message", [
    ({"method": "unet"}, "method must be one of"),
    ({"epochz": 3}, "unknown setting"),
    ({"image_size": 40}, "multiple of 16"),
    ({"train_size": 0}, "positive integer"),
    ({"val_size": 2}, "no child"),
    ({"lr": -1.0}, ">= 0"),
    ({"threads": -1}, "threads must be"),
    ({"threads": 1.5}, "threads must be"),
])
def test_bad_settings_are_refused(config, message):
    with pytest.raises(MedtuneError, match=message):
        train_template({**TINY, **config})
