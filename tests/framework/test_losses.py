"""The loss contract: a loss built on ``medtune.losses.OverlapLoss`` needs only its weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import medtune
from medtune.errors import LossError
from medtune.losses import REDUCTIONS, OverlapLoss, non_negative


class HalfTversky(OverlapLoss):
    """What a plugin author writes: the weights, nothing else."""

    broadcast_none = False

    def weights(self) -> tuple[float, float, float]:
        return 1.0, 0.5, 0.5


def test_a_subclass_gets_arguments_checks_and_reduction_from_the_contract() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 6, 6), generator=g)
    ours = HalfTversky(softmax=True, to_onehot_y=True, include_background=False)
    dice = medtune.create("loss", "dice", softmax=True, to_onehot_y=True, include_background=False)
    # alpha = beta = 1/2 with a TP weight of 1 is the Dice ratio with a TP weight of 2
    torch.testing.assert_close(ours(logits, labels), dice(logits, labels), rtol=1e-6, atol=1e-6)
    assert HalfTversky(reduction="none")(logits, labels).shape == (2, 3)
    with pytest.raises(LossError, match="reduction must be one of"):
        HalfTversky(reduction="median")
    with pytest.raises(LossError, match="NaN or Inf"):
        HalfTversky()(torch.full((1, 1, 4, 4), float("nan")), torch.zeros(1, 1, 4, 4))


def test_the_contract_cannot_be_used_without_weights() -> None:
    with pytest.raises(TypeError):
        OverlapLoss()  # type: ignore[abstract]
    assert REDUCTIONS == ("mean", "sum", "none")
    assert non_negative("alpha", 0.3, "owner") == 0.3
    with pytest.raises(LossError, match="owner: alpha must be a finite number >= 0"):
        non_negative("alpha", -1, "owner")


def test_the_contract_does_not_load_the_built_in_plugins() -> None:
    code = (
        "import sys, medtune.losses; "
        "print(sorted(m for m in sys.modules if m.startswith('medtune.plugins')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
