"""The ``threads`` setting of a task: checked, applied to the trial, restored (every task that
declares it takes it this way: see the contract suite in tests/plugins/test_task_contract.py)."""

from __future__ import annotations

import pytest
import torch

from medtune.errors import MedtuneError
from medtune.tasks.threads import check_threads, trial_threads


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
