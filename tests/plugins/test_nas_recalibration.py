"""Tests of exact, side-effect-free batch-norm recalibration (medtune.plugins.nas.recalibration)."""

from __future__ import annotations

import gc
import resource

import pytest
import torch
from torch import nn

from medtune.plugins.nas.recalibration import (
    StatisticsCache,
    batch_norm_layers,
    recalibrate,
    use_statistics,
)


class PrefixBatchNorm(nn.BatchNorm2d):
    """Elastic-width batch norm: normalises the first C of its features with running buffers."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        channels = values.shape[1]
        return nn.functional.batch_norm(
            values,
            self.running_mean[:channels],
            self.running_var[:channels],
            self.weight[:channels],
            self.bias[:channels],
            self.training,
            self.momentum,
            self.eps,
        )


class TwoPathNet(nn.Module):
    """Two conv-BN branches; ``path`` chooses one, ``width`` the channels of the elastic layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.branches = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)])
        self.branch_bns = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8)])
        self.elastic = nn.Conv2d(8, 6, 1)
        self.elastic_bn = PrefixBatchNorm(6)
        self.path = 0
        self.width = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.branch_bns[self.path](self.branches[self.path](x)))
        weight = self.elastic.weight[: self.width]
        x = nn.functional.conv2d(x, weight, self.elastic.bias[: self.width])
        return self.elastic_bn(x).mean(dim=(2, 3))


def trained_net() -> TwoPathNet:
    """A net whose running buffers hold non-trivial values (a few training-mode passes)."""
    torch.manual_seed(0)
    net = TwoPathNet()
    for path in (0, 1):
        net.path = path
        for _ in range(3):
            net(torch.randn(4, 1, 8, 8) * 2 + 1)
    return net


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, copied."""
    return {k: v.detach().clone() for k, v in net.state_dict(keep_vars=True).items()}


def capture_inputs(net: TwoPathNet, batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Inputs of every BN layer in training-mode passes of a deep copy (the reference)."""
    import copy

    reference = copy.deepcopy(net).train()
    captured: dict[str, list[torch.Tensor]] = {}
    for name, layer in batch_norm_layers(reference):
        layer.register_forward_pre_hook(
            lambda _m, args, name=name: captured.setdefault(name, []).append(args[0].detach().clone())
        )
    with torch.no_grad():
        for batch in batches:
            reference(batch)
    return captured


@pytest.mark.parametrize("sizes", [(5,), (3, 7, 2)])
@pytest.mark.parametrize("path, width", [(0, 6), (1, 4)])
def test_statistics_are_exact_batch_statistics_of_the_subnetwork(sizes, path, width):
    net = trained_net().train()
    net.path, net.width = path, width
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 1, 8, 8, generator=generator) * 3 - 1 for n in sizes]
    stats = recalibrate(net, batches)
    captured = capture_inputs(net, batches)
    unused = f"branch_bns.{1 - path}"
    assert unused not in stats
    assert set(stats) == set(captured)
    for name, inputs in captured.items():
        values = torch.cat(inputs).transpose(0, 1).reshape(inputs[0].shape[1], -1).double()
        assert stats[name].channels == values.shape[0]
        assert stats[name].count == values.shape[1]
        torch.testing.assert_close(stats[name].mean.double(), values.mean(dim=1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            stats[name].var.double(), values.var(dim=1, unbiased=False), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            stats[name].unbiased_var.double(), values.var(dim=1, unbiased=True), rtol=1e-5, atol=1e-6
        )
    assert stats["elastic_bn"].channels == width


@pytest.mark.parametrize("training", [True, False])
def test_model_state_is_bit_identical_after_recalibration(training):
    net = trained_net().train(training)
    before = snapshot(net)
    flags = {name: m.training for name, m in net.named_modules()}
    stats = recalibrate(net, [torch.randn(4, 1, 8, 8), torch.randn(2, 1, 8, 8)])
    after = snapshot(net)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert flags == {name: m.training for name, m in net.named_modules()}
    assert all("forward" not in m.__dict__ for m in net.modules())
    with use_statistics(net.eval(), stats):
        changed = net.stem_bn.running_mean.clone()
    assert not torch.equal(changed, before["stem_bn.running_mean"])
    for key, value in snapshot(net).items():
        assert torch.equal(before[key], value), key


def test_eval_with_statistics_normalises_like_whole_set_batch_norm():
    net = trained_net()
    net.path, net.width = 1, 4
    data = torch.randn(16, 1, 8, 8) + 0.5
    stats = recalibrate(net, [data[:6], data[6:]])
    net.eval()
    shared = net(data)
    with use_statistics(net, stats):
        recalibrated = net(data)
    # The recalibrated eval pass normalises the stem by the exact statistics of the whole set,
    # so the stem BN output has zero mean and unit (biased) variance per channel.
    outputs = []
    handle = net.stem_bn.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    with use_statistics(net, stats):
        net(data)
    handle.remove()
    stem = outputs[0].transpose(0, 1).reshape(8, -1).double()
    torch.testing.assert_close(stem.mean(dim=1), torch.zeros(8, dtype=torch.float64), atol=1e-4, rtol=0)
    # running_var holds the unbiased variance, so the output variance is (n - 1) / n, n = 1024
    expected = torch.full((8,), 1023 / 1024, dtype=torch.float64)
    torch.testing.assert_close(stem.var(dim=1, unbiased=False), expected, atol=2e-4, rtol=0)
    assert not torch.allclose(shared, recalibrated)
    # the elastic layer's unused running entries are left alone
    with use_statistics(net, stats):
        assert torch.equal(net.elastic_bn.running_mean[4:], trained_net().elastic_bn.running_mean[4:])


def test_errors_name_the_problem():
    net = trained_net()
    with pytest.raises(ValueError, match="no batches"):
        recalibrate(net, [])
    assert all("forward" not in m.__dict__ for m in net.modules())
    with pytest.raises(ValueError, match="does not have"):
        with use_statistics(net, {"missing": recalibrate(net, [torch.randn(2, 1, 4, 4)])["stem_bn"]}):
            pass
    with pytest.raises(ValueError, match="max_entries"):
        StatisticsCache(0)


def test_cache_is_least_recently_used():
    cache = StatisticsCache(max_entries=2)
    calls = []
    for key in ["a", "b", "a", "c", "b"]:
        cache.get_or_compute(key, lambda key=key: calls.append(key) or {})
    assert calls == ["a", "b", "c", "b"]  # "b" was evicted by "c" since "a" was used after it
    assert "a" not in cache and len(cache) == 2


def peak_rss_megabytes() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_memory_stays_flat_over_a_thousand_architectures():
    torch.manual_seed(0)
    # ~1 MiB of weights per architecture's layers: a deep copy kept per architecture (1,000 of
    # them) would need ~1 GiB; the cache keeps 8 entries of a few KiB of statistics each.
    net = nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64),
    )
    weights_mib = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    batch = torch.randn(2, 1, 4, 4)
    cache = StatisticsCache(max_entries=8)
    before_state = snapshot(net)

    def evaluate(arch: int) -> None:
        stats = cache.get_or_compute(arch, lambda: recalibrate(net, [batch]))
        with use_statistics(net.eval(), stats), torch.no_grad():
            net(batch)

    for arch in range(50):  # warm up the allocator
        evaluate(arch)
    gc.collect()
    start = peak_rss_megabytes()
    for arch in range(50, 1050):
        evaluate(arch)
    gc.collect()
    growth = peak_rss_megabytes() - start
    # Measured: peak RSS growth 0.00 MiB with 0.43 MiB of weights (1,000 copies would be ~430 MiB).
    print(f"peak RSS growth {growth:.2f} MiB, weights {weights_mib:.2f} MiB")
    assert growth < 20, f"peak RSS grew by {growth:.1f} MiB over 1,000 architectures"
    assert 1000 * weights_mib > 10 * 20  # the bound is 10x below what copies would take
    assert len(cache) == 8
    for key, value in snapshot(net).items():
        assert torch.equal(before_state[key], value), key
