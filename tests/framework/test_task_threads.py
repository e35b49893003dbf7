"""The ``threads`` setting, the same in every built-in task: checked, applied, restored."""

from __future__ import annotations

import importlib

import pytest
import torch

from medtune.errors import MedtuneError
from medtune.tasks.threads import check_threads, threaded, trial_threads

TASKS = ["nas", "quality", "regions", "regression", "segmentation", "template", "transfer"]


def test_check_threads_accepts_counts_and_keep():
    assert check_threads("demo", None) == 0
    assert check_threads("demo", 0) == 0
    assert check_threads("demo", 3) == 3
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(MedtuneError, match=r"demo task: threads must be a whole number"):
            check_threads("demo", bad)


def test_trial_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    with trial_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), trial_threads(1):
        raise RuntimeError("the trial failed")
    assert torch.get_num_threads() == before
    with trial_threads(0):
        assert torch.get_num_threads() == before


def test_threaded_uses_the_config_then_the_task_default():
    seen = []

    @threaded("demo", {"threads": 1})
    def train(config, resource=None, seed=0, report=None):
        seen.append(torch.get_num_threads())
        return {"value": 0.0}

    before = torch.get_num_threads()
    train({})  # the task's default
    train({"threads": 0})  # keep PyTorch's setting
    assert seen == [1, before] and torch.get_num_threads() == before
    with pytest.raises(MedtuneError, match="demo task: threads"):
        train({"threads": -2})


@pytest.mark.parametrize("task", TASKS)
def test_every_task_takes_threads(task):
    """Each built-in task lists ``threads`` among its settings and checks it before any work."""
    module = importlib.import_module(f"medtune.tasks.{task}")
    defaults = getattr(module, f"{task.upper()}_DEFAULTS")
    train = getattr(module, f"train_{task}")
    assert "threads" in defaults and hasattr(train, "__wrapped__")
    with pytest.raises(MedtuneError, match=f"{task} task: threads must be"):
        train({"threads": -1})
