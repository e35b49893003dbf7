"""Using a DQE estimator: screening a dataset (medtune.quality.screen) and the quality-surrogate
loss that scores a segmentation network's soft prediction with the frozen estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import medtune
from medtune.errors import LossError, MedtuneError
from medtune.plugins.quality import DQE, Case
from medtune.quality import screen


class _Fixed:
    """An estimator whose ratings are given."""

    def __init__(self, ratings):
        self.ratings = ratings

    def predict(self, cases):
        return np.asarray(self.ratings[: len(cases)])


def _cases(count: int) -> list[Case]:
    segmentation = np.zeros((8, 8, 8), dtype=np.int64)
    segmentation[3:5, 3:5, 3:5] = 2
    return [Case(np.zeros((4, 8, 8, 8)), segmentation, f"case{i}") for i in range(count)]


def test_screen_flags_cases_below_threshold_worst_first():
    flagged = screen(_Fixed([5.5, 2.0, 3.9, 1.2, 4.0]), _cases(5), threshold=4.0)
    assert [(f.index, f.name) for f in flagged] == [(3, "case3"), (1, "case1"), (2, "case2")]
    assert flagged[0].rating == pytest.approx(1.2)
    assert screen(_Fixed([5.0]), _cases(1), threshold=4.0) == []
    assert screen(_Fixed([]), [], threshold=4.0) == []
    with pytest.raises(MedtuneError, match="predict"):
        screen(object(), _cases(1), threshold=3)
    with pytest.raises(MedtuneError, match="returned 1 ratings for 2 cases"):
        screen(_Fixed([1.0]), _cases(2), threshold=3)


def test_screen_with_a_dqe_estimator():
    estimator = DQE(slice_size=32)
    cases = _cases(3)
    ratings = estimator.predict(cases)
    flagged = screen(estimator, cases, threshold=float(ratings.max()) + 1)
    assert len(flagged) == 3 and [f.rating for f in flagged] == sorted(ratings.tolist())


@pytest.mark.parametrize("encoding, channels", [("brats", 3), ("tissue", 4)])
def test_surrogate_gradient_reaches_the_segmentation_logits_not_the_estimator(encoding, channels, tmp_path):
    estimator = DQE(label_encoding=encoding, slice_size=32, seed=0)
    estimator.network.train()  # the loss must put it in eval mode
    path = tmp_path / "dqe.pt"
    estimator.save(path)
    before = {k: v.clone() for k, v in estimator.network.state_dict().items()}
    loss_fn = medtune.create("loss", "quality_surrogate", estimator=estimator, weight=2.0)
    assert not estimator.network.training
    assert list(loss_fn.parameters()) == []  # nothing of the estimator reaches an optimiser
    torch.manual_seed(0)
    network = nn.Conv2d(4, channels, 3, padding=1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.5)
    images = torch.rand(4, 4, 20, 20)
    loss_fn.train()
    for _ in range(2):
        optimizer.zero_grad()
        loss = loss_fn(network(images), image=images)
        loss.backward()
        assert network.weight.grad is not None and network.weight.grad.abs().sum() > 0
        optimizer.step()
    assert 0 <= float(loss.detach()) <= 2.0 * 1.5
    assert all(p.grad is None for p in estimator.network.parameters())
    after = estimator.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics too
    from_path = medtune.create("loss", "quality_surrogate", estimator=str(path))
    logits = torch.randn(2, channels, 20, 20)
    assert float(from_path(logits, image=images[:2])) == pytest.approx(float(loss_fn(logits, image=images[:2])) / 2,
                                                                       rel=1e-5)


def test_surrogate_follows_the_estimator_rating():
    estimator = DQE(label_encoding="brats", slice_size=32, seed=0)
    loss_fn = medtune.create("loss", "quality_surrogate", estimator=estimator)
    logits, images = torch.randn(3, 3, 16, 16), torch.rand(3, 4, 16, 16)
    with torch.no_grad():
        rating = estimator.rate_soft(images, torch.sigmoid(logits))
    assert float(loss_fn(logits, image=images)) == pytest.approx(float(((6 - rating) / 5).mean()), rel=1e-5)


def test_surrogate_combined_with_dice():
    estimator = DQE(label_encoding="brats", slice_size=32)
    images, logits = torch.rand(2, 4, 16, 16), torch.randn(2, 3, 16, 16, requires_grad=True)
    target = (torch.rand(2, 3, 16, 16) > 0.5).float()
    alone = medtune.create("loss", "quality_surrogate", estimator=estimator)
    combined = medtune.create("loss", "quality_surrogate", estimator=estimator, dice_weight=1.0)
    dice = medtune.create("loss", "dice", sigmoid=True)
    total = combined(logits, target, image=images)
    assert float(total) == pytest.approx(float(alone(logits, image=images) + dice(logits, target)), rel=1e-5)
    total.backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(LossError, match="needs the target"):
        combined(logits, image=images)
    with pytest.raises(LossError, match=r"expected logits \[B, 3, H, W\]"):
        alone(torch.randn(2, 4, 16, 16), image=images)
    with pytest.raises(LossError, match="estimator must be a DQE"):
        medtune.create("loss", "quality_surrogate", estimator=42)
