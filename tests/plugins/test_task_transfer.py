"""The built-in transfer task (Bertrand2019, table 3.1) runs every method at a tiny scale and returns
its metrics as a dict of finite floats."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from medtune.config import load_config
from medtune.errors import MedtuneError
from medtune.plugins.tasks.transfer import METHODS, TransferTask

train_transfer = TransferTask()
TINY = {"image_size": 32, "train_adults": 3, "test_adults": 2, "train_children": 2, "test_children": 2,
        "width": 2, "hidden": 2, "batch_size": 2, "source_epochs": 1, "epochs": 1}
KEYS = {"value", "dice_adult", "dice_child", "parameters_added", "parameters_trained", "seconds_per_epoch"}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_returns_finite_metrics(method):
    curve = []
    result = train_transfer({**TINY, "method": method}, seed=0, report=lambda e, v: curve.append((e, v)))
    assert set(result) == KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.values()), result
    assert 0.0 <= result["dice_adult"] <= 1.0 and 0.0 <= result["dice_child"] <= 1.0
    assert result["value"] == pytest.approx((result["dice_adult"] + result["dice_child"]) / 2)
    assert curve == [(1, pytest.approx(result["value"]))]
    if method in ("fine_tuning", "partial_first", "partial_last"):
        assert result["parameters_added"] == 0.0
    else:
        assert result["parameters_added"] > 0.0
    assert result["parameters_trained"] > 0.0 and result["seconds_per_epoch"] > 0.0


def test_resource_sets_the_epochs_and_seed_repeats():
    config = {**TINY, "method": "intensity"}
    curve = []
    first = train_transfer(config, resource=2, seed=5, report=lambda e, v: curve.append(e))
    assert curve == [1, 2]
    second = train_transfer(config, resource=2, seed=5)
    assert {k: v for k, v in first.items() if k != "seconds_per_epoch"} == \
        {k: v for k, v in second.items() if k != "seconds_per_epoch"}


@pytest.mark.parametrize("config,message", [
    ({"method": "feature_extraction"}, "method must be one of adults, children, joint"),
    ({"learning_rate": 1e-3}, "unknown setting"),
    ({"epochs": 0}, "epochs must be a number > 0"),
    ({"partial_layers": -1}, "partial_layers must be an integer >= 0"),
    ({"dataset_options": {"child_fraction": 0.5}}, "do not set child_fraction"),
])
def test_bad_settings(config, message):
    with pytest.raises(MedtuneError, match=message):
        train_transfer({**TINY, **config}, resource=1)


def test_partial_layers_out_of_range():
    with pytest.raises(MedtuneError, match="k must be an integer from 1 to 7"):
        train_transfer({**TINY, "method": "partial_last", "partial_layers": 9})


def test_the_example_study_names_every_method_and_valid_settings():
    config = load_config(Path(__file__).resolve().parents[2] / "examples" / "transfer_organs.toml")
    assert config.objective == "transfer"
    assert config.searcher == "grid" and config.searcher_options.get("repeats") == 3
    assert config.space["method"]["choices"] == list(METHODS)
    assert config.table is not None and config.table.rows == ("method",)
    train_transfer.validate(config.settings)  # every fixed setting is one the task knows
