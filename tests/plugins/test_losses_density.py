"""Density-weighted regression loss (Pourchot2022, ch. 6.3.3-6.3.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import gaussian_kde

import medtune
from medtune.plugins.losses import DensityWeightedLoss, LossError


def skewed_ages(count: int = 400, seed: int = 0) -> np.ndarray:
    """Bone-age-like labels heavily skewed towards 13 (Pourchot2022, Fig. 6.3a)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(13.0, 1.0, size=int(count * 0.85))
    rare = rng.uniform(5.0, 17.0, size=count - common.size)
    return np.concatenate([common, rare])


def test_weights_average_one_and_favour_rare_labels() -> None:
    ages = skewed_ages()
    loss = medtune.create("loss", "density_weighted", training_labels=ages)
    assert isinstance(loss, DensityWeightedLoss)
    assert loss.training_weights.mean().item() == pytest.approx(1.0, abs=1e-12)
    weights = loss.weights(torch.tensor([6.0, 9.0, 13.0]))
    assert weights[0] > weights[1] > weights[2]  # the rarer the label, the larger its weight
    assert weights[2] < 1.0 < weights[0]
    # alpha = 1 is the inverse of SciPy's Gaussian KDE, normalised over the training set
    density = gaussian_kde(ages)
    expected = (1 / density([6.0, 9.0, 13.0])) / np.mean(1 / density(ages))
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-10)


def test_damping_exponent() -> None:
    ages = skewed_ages()
    inverse = DensityWeightedLoss(ages, alpha=1.0)
    damped = DensityWeightedLoss(ages, alpha=0.5)
    uniform = DensityWeightedLoss(ages, alpha=0.0)
    assert torch.equal(uniform.training_weights, torch.ones(len(ages), dtype=torch.float64))
    assert damped.training_weights.mean().item() == pytest.approx(1.0, abs=1e-12)
    # f^-0.5 is the square root of f^-1 up to the normalisation
    ratio = damped.training_weights / inverse.training_weights.sqrt()
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()))
    assert damped.training_weights.max() < inverse.training_weights.max()


def test_joint_density_over_two_columns() -> None:
    rng = np.random.default_rng(1)
    bone_age = skewed_ages(300, seed=1)
    difference = rng.normal(0.0, 0.5, size=bone_age.size)  # bone age - chronological age
    columns = np.stack([bone_age, difference], axis=1)
    loss = DensityWeightedLoss(columns, alpha=0.5)
    assert loss.training_weights.mean().item() == pytest.approx(1.0, abs=1e-12)
    typical, unusual = loss.weights(np.array([[13.0, 0.0], [13.0, 2.0]]))
    assert unusual > typical  # a large age difference is rare, so it weighs more
    # the regression target need not be the density's columns
    prediction = torch.tensor([12.0, 14.0], requires_grad=True)
    target = torch.tensor([13.0, 13.0])
    value = loss(prediction, target, density_labels=torch.tensor([[13.0, 0.0], [13.0, 2.0]]))
    expected = (typical * 1.0 + unusual * 1.0) / 2
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert prediction.grad[0] < 0 < prediction.grad[1]
    with pytest.raises(LossError, match="pass density_labels"):
        loss(prediction, target)


@pytest.mark.parametrize("base", ["l1", "mse"])
def test_loss_values_and_reductions(base: str) -> None:
    ages = skewed_ages()
    prediction = torch.tensor([[6.5, 6.0], [12.0, 13.5], [15.0, 16.0]])
    target = torch.tensor([[6.0], [13.0], [16.5]]).expand(3, 2).contiguous()
    # one output column -> one density column: use the first target column as density label
    labels = target[:, 0]
    loss = DensityWeightedLoss(ages, alpha=0.5, base=base, reduction="none")
    weights = loss.weights(labels).float()
    difference = prediction - target
    elementwise = difference.abs() if base == "l1" else difference.square()
    expected = weights * elementwise.mean(1)
    torch.testing.assert_close(loss(prediction, target, density_labels=labels), expected)
    summed = DensityWeightedLoss(ages, alpha=0.5, base=base, reduction="sum")
    value = summed(prediction, target, labels)
    assert value.item() == pytest.approx(expected.sum().item(), rel=1e-6)
    mean = DensityWeightedLoss(ages, alpha=0.5, base=base)
    assert mean(prediction[:, 0], target[:, 0]).item() == pytest.approx(
        (weights * elementwise[:, 0]).mean().item(), rel=1e-6
    )


def test_bad_input_raises_clear_errors() -> None:
    ages = skewed_ages()
    with pytest.raises(LossError, match="NaN or Inf"):
        DensityWeightedLoss(np.array([1.0, np.nan, 3.0]))
    with pytest.raises(LossError, match="constant"):
        DensityWeightedLoss(np.full(10, 4.0))
    with pytest.raises(LossError, match="more than 1 training labels"):
        DensityWeightedLoss(np.array([3.0]))
    with pytest.raises(LossError, match="linearly dependent"):
        DensityWeightedLoss(np.stack([ages, 2 * ages + 1], axis=1))
    with pytest.raises(LossError, match="alpha must be finite and >= 0"):
        DensityWeightedLoss(ages, alpha=-0.5)
    with pytest.raises(LossError, match="base"):
        DensityWeightedLoss(ages, base="huber")
    with pytest.raises(LossError, match="reduction"):
        DensityWeightedLoss(ages, reduction="median")
    with pytest.raises(LossError, match=r"\[M\] or \[M, K\]"):
        DensityWeightedLoss(np.zeros((3, 2, 2)))
    loss = DensityWeightedLoss(ages)
    with pytest.raises(LossError, match="differs from target shape"):
        loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(LossError, match="1 label column"):
        loss.weights(np.zeros((2, 2)))
    # far outside the training labels the density underflows: an explicit cap is required
    with pytest.raises(LossError, match="max_weight"):
        loss.weights([1e4])
    capped = DensityWeightedLoss(ages, max_weight=10.0)
    assert capped.weights([1e4]).item() == 10.0
