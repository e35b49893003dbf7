"""Tests of the weight-sharing super-net, the shipped tabular benchmark and the NAS analysis
(medtune.plugins.nas.supernet, .tabular, .analysis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from medtune.plugins.nas.analysis import cohens_d, spearman, regret_curve, welch
from medtune.plugins.nas.cells import Cell, SubSpace, enumerate_cells
from medtune.plugins.nas.recalibration import StatisticsCache, recalibrate, use_statistics
from medtune.plugins.nas.supernet import SuperNet, SupernetTraining, sampling_weights, train_supernet

CELLS = enumerate_cells(SubSpace(3, max_edges=5))


def toy_data(count: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose label says whether their mean brightness is positive."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 1, 8, 8, generator=generator)
    return images, (images.mean(dim=(1, 2, 3)) > 0).long()


def trained_supernet(single_kernel: bool = False, steps: int = 6) -> SuperNet:
    torch.manual_seed(0)
    net = SuperNet(3, channels=6, single_kernel=single_kernel)
    train_supernet(net, CELLS, toy_data(), SupernetTraining(steps=steps, batch_size=16), seed=0)
    return net


@pytest.mark.parametrize("single_kernel", [False, True])
def test_export_gives_the_supernet_outputs_of_that_path(single_kernel):
    net = trained_supernet(single_kernel).eval()
    images = toy_data(8, seed=3)[0]
    rng = np.random.default_rng(0)
    chosen = [CELLS[i] for i in rng.choice(len(CELLS), 25, replace=False)]
    chosen.append(Cell.from_edges(["c1", "c3", "mp"], [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)]))
    for cell in chosen:
        with torch.no_grad():
            torch.testing.assert_close(net.export(cell)(images), net(images, cell), rtol=1e-5, atol=1e-5)


def test_a_training_step_only_touches_the_sampled_path():
    net = SuperNet(3, channels=4)
    cell = Cell.from_edges(["c3"], [(0, 1), (1, 2)])  # input -> conv3x3 -> output
    images, labels = toy_data(8)
    torch.nn.functional.cross_entropy(net(images, cell), labels).backward()
    first = net.cells[0]
    assert first.conv3[0].weight.grad is not None and first.conv3[0].weight.grad.abs().sum() > 0
    assert first.conv1[0].weight.grad is None and first.conv3[1].weight.grad is None
    assert first.residual.weight.grad is None


def test_single_kernel_shares_the_centre_of_the_3x3_kernel():
    net = SuperNet(3, channels=4, single_kernel=True)
    assert "weight" not in dict(net.cells[0].conv1[0].named_parameters())
    conv1 = Cell.from_edges(["c1"], [(0, 1), (1, 2)])
    images, labels = toy_data(8)
    torch.nn.functional.cross_entropy(net(images, conv1), labels).backward()
    grad = net.cells[0].conv3[0].weight.grad
    assert grad[:, :, 1, 1].abs().sum() > 0
    assert grad[:, :, 0, :].abs().sum() == 0  # only the centre tap is used by the 1x1 path


def test_pro_rata_sampling_follows_parameter_counts():
    net = SuperNet(3, channels=4)
    cells = CELLS[:20]
    weights = sampling_weights(cells, "pro_rata", net)
    counts = np.array([c.parameters(**net.shape) for c in cells])
    np.testing.assert_allclose(weights, counts / counts.sum())
    np.testing.assert_allclose(sampling_weights(cells, "uniform", net), 1 / 20)
    with pytest.raises(ValueError, match="sampling"):
        SupernetTraining(sampling="greedy")


def test_averaging_paths_changes_the_update():
    results = []
    for paths in (1, 3):
        torch.manual_seed(0)
        net = SuperNet(3, channels=4)
        train_supernet(net, CELLS, toy_data(), SupernetTraining(steps=2, batch_size=16, paths=paths), seed=0)
        results.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert not torch.allclose(results[0], results[1])


def test_bnsft_uses_the_architectures_own_statistics_and_leaves_the_supernet_alone():
    net = trained_supernet()
    cell = CELLS[5]
    images, labels = toy_data(32, seed=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cache = StatisticsCache(4)
    noft = net.accuracy(cell, (images, labels), "noft")
    bnsft = net.accuracy(cell, (images, labels), "bnsft", [images[:16], images[16:]], cache)
    assert 0 <= noft <= 1 and 0 <= bnsft <= 1
    assert cell.hash in cache
    net.accuracy(cell, (images, labels), "bnsft", [images], cache)
    assert cache.hits == 1
    for key, value in net.state_dict().items():
        assert torch.equal(before[key], value), key
    # BNS-FT on the super-net equals recalibrating the exported standalone network
    stats = recalibrate(net, [images], forward=lambda m, b: m(b, cell))
    standalone = net.export(cell)
    standalone_stats = recalibrate(standalone, [images])
    with use_statistics(net.eval(), stats), use_statistics(standalone, standalone_stats), torch.no_grad():
        torch.testing.assert_close(net(images, cell), standalone(images), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="recalibration batches"):
        net.accuracy(cell, (images, labels), "bnsft")
    scores = net.rank(CELLS[:4], (images, labels), "bnsft", [images], progress=False)
    assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 1))


def test_supernet_rejects_cells_it_cannot_hold():
    net = SuperNet(2, channels=4)
    big = Cell.from_edges(["c3", "c3", "c3"], [(0, 1), (1, 2), (2, 3), (3, 4)])
    with pytest.raises(ValueError, match="max_op_nodes"):
        net(torch.randn(1, 1, 8, 8), big)


def test_spearman_matches_scipy_and_its_interval_covers_it():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=200)
    proxy = truth + rng.normal(size=200)
    result = spearman(proxy, truth, bootstrap=300)
    assert result.rho == pytest.approx(scipy_stats.spearmanr(proxy, truth).statistic)
    assert result.low < result.rho < result.high and result.high - result.low < 0.3
    assert result.p_value < 1e-6
    constant = spearman([0.5] * 10, truth[:10])  # a constant proxy ranks nothing
    assert (constant.rho, constant.low, constant.high, constant.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2, 3], [1, 2])


def test_regret_curve_follows_the_best_validated_architecture():
    validation = [0.5, 0.7, 0.6, 0.9]
    test = [0.55, 0.65, 0.95, 0.80]
    np.testing.assert_allclose(regret_curve(validation, test, 0.95), [0.40, 0.30, 0.30, 0.15])


def test_effect_size_and_welch_test():
    first = [1.0, 2.0, 3.0, 4.0]
    second = [3.0, 4.0, 5.0, 6.0]
    # means differ by 2, both standard deviations are sqrt(5/3)
    assert cohens_d(first, second) == pytest.approx(-2 / math.sqrt(5 / 3))
    assert welch(first, second) == pytest.approx(scipy_stats.ttest_ind(first, second, equal_var=False).pvalue)
    assert welch([1, 1], [1, 1]) == 1.0
    with pytest.raises(ValueError, match="two values"):
        cohens_d([1.0], second)
