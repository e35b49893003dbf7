"""The OFA-like elastic super-net: space moves, searchers on it, sliced batches, export, BN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import medtune
from medtune.kernels import use_backend
from medtune.plugins.nas.elastic import Architecture, ElasticSpace, ElasticSuperNet
from medtune.plugins.nas.recalibration import recalibrate, use_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0, **options) -> ElasticSuperNet:
    torch.manual_seed(seed)
    net = ElasticSuperNet(ElasticSpace(2), in_channels=1, num_classes=3, stem_channels=4,
                          widths=(4, 6), strides=(1, 2), **options)
    with torch.no_grad():  # non-trivial batch-norm parameters, statistics and transforms
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
        for name, p in net.named_parameters():
            if "transforms" in name:
                p.add_(0.1 * torch.randn_like(p))
    return net


def _images(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 9, 10, generator=torch.Generator().manual_seed(seed))


def test_space_encodes_decodes_and_moves_within_the_space():
    space = ElasticSpace(3)
    rng = np.random.default_rng(0)
    # every depth/expand/kernel count: per stage sum over depths d of 9^d
    assert space.search_space.size() == (9**2 + 9**3 + 9**4) ** 3
    for _ in range(20):
        arch = space.sample(rng)
        assert space.decode(space.encode(arch)) == arch
        for neighbour in space.neighbours(arch):
            a, b = space.encode(arch), space.encode(neighbour)
            changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            assert changed and (len(changed) == 1 or any(k.startswith("depth") for k in changed))
        child = space.mutate(arch, 0.1, rng)
        assert child != arch
        space.check(child)
    assert {arch.depths[0] for arch in (space.sample(rng) for _ in range(60))} == {2, 3, 4}


def test_space_rejects_foreign_architectures_and_bad_options():
    space = ElasticSpace(2)
    with pytest.raises(ValueError, match="stage 0: depth 5"):
        space.check(Architecture((5, 2), ((3,) * 5, (3, 3)), ((3,) * 5, (3, 3))))
    with pytest.raises(ValueError, match="not among"):
        space.check(Architecture((2, 2), ((3, 5), (3, 3)), ((3, 3), (3, 3))))
    with pytest.raises(ValueError, match="kernel_sizes must be odd"):
        ElasticSpace(2, kernel_sizes=(3, 4))


@pytest.mark.parametrize("name,options", [("random", {"max_trials": 8}),
                                          ("local", {"max_trials": 8}),
                                          ("evolution", {"budget": 8})])
def test_medtune_searchers_run_on_the_elastic_space(name, options):
    space = ElasticSpace(2)
    searcher = medtune.create("searcher", name, space=space.search_space, seed=0,
                              direction="minimize", **options)
    seen = []
    for _ in range(8):
        suggestion = searcher.ask()
        if suggestion is None:
            break
        arch = space.decode(suggestion.config)
        seen.append(arch)
        searcher.tell(suggestion, float(sum(arch.depths) + sum(map(sum, arch.expand_ratios))))
    assert len(seen) == 8 and len({a.key() + str(a.depths) for a in seen}) > 1


@pytest.mark.parametrize("kernel_transform", [True, False])
def test_export_matches_the_super_net_in_eval_mode(kernel_transform):
    net = _net(kernel_transform=kernel_transform).eval()
    x = _images()
    rng = np.random.default_rng(3)
    for _ in range(4):
        arch = net.space.sample(rng)
        plain = net.export(arch).eval()
        assert not any(type(m).__name__.startswith("Elastic") for m in plain.modules())
        assert sum(isinstance(m, nn.Conv2d) for m in plain.modules()) == 1 + 3 * sum(arch.depths)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), net(x, arch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_sliced_batch_equals_each_architecture_on_its_own_slice(train):
    net = _net(1).train(train)
    x = _images(6)
    rng = np.random.default_rng(4)
    archs = [net.space.sample(rng) for _ in range(3)]
    archs[1] = net.space.largest()  # depths differ: some blocks run on a subset of slices
    counts = [2, 3, 1]
    with torch.no_grad():
        together = net(x, archs=list(zip(archs, counts)))
        bounds = np.cumsum([0, *counts])
        alone = torch.cat([net(x[a:b], arch) for arch, a, b in zip(archs, bounds[:-1],
                                                                    bounds[1:])])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_shared_weights_and_kernel_transforms():
    net = _net(2).train()
    small = Architecture((2, 2), ((3, 3), (3, 3)), ((3, 3), (3, 3)))
    net(_images(4), small).square().sum().backward()
    block = net.stages[0][0]
    assert block.depthwise.transforms["3"].grad.abs().sum() > 0
    assert block.depthwise.transforms["5"].grad.abs().sum() > 0
    grad = block.expand.weight.grad  # expand ratio 3 of 4 input channels: 12 of 24 rows
    assert grad[:12].abs().sum() > 0 and grad[12:].abs().max() == 0
    assert net.stages[0][2].expand.weight.grad is None  # depth 2: the third block never ran


def test_backends_agree_on_the_super_net():
    net = _net(3).eval()
    arch = net.space.sample(np.random.default_rng(5))
    x = _images()
    with torch.no_grad(), use_backend("torch"):
        expected = net(x, arch)
    with torch.no_grad():
        torch.testing.assert_close(net(x, arch), expected, rtol=1e-5, atol=1e-5)


def test_recalibration_in_place_matches_recalibrating_the_exported_network():
    net = _net(4).eval()
    arch = net.space.sample(np.random.default_rng(6))
    batches = [_images(4, seed) for seed in range(3)]
    stats = recalibrate(net, batches, forward=lambda model, batch: model(batch, arch))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    plain = net.export(arch)
    plain_stats = recalibrate(plain, batches)
    with use_statistics(net, stats), use_statistics(plain, plain_stats), torch.no_grad():
        torch.testing.assert_close(net(batches[0], arch), plain(batches[0]), rtol=1e-4,
                                   atol=1e-4)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_calls_are_clear_errors():
    net = _net()
    arch = net.space.largest()
    with pytest.raises(ValueError, match="counts must add up"):
        net(_images(4), archs=[(arch, 3)])
    with pytest.raises(ValueError, match="not both"):
        net(_images(4), arch, archs=[(arch, 4)])
    with pytest.raises(ValueError, match="one entry per stage"):
        ElasticSuperNet(ElasticSpace(2), widths=(4, 6, 8))


def test_nas_ranking_benchmark_ranks_identically_both_ways():
    """The benchmark's fused ranking (shared-prefix trie), medtune one architecture at a time and
    the usual path (materialised, deep-copied, recalibrated in train mode) give the same
    accuracies."""
    from benchmarks.cases import CASES, NAS_QUICK_ARCHITECTURES

    case = CASES["nas_ranking"]
    inputs = case.make_inputs(quick=True, device="cpu")
    results = {impl.key: impl.build()(inputs.pred, inputs.target)
               for impl in case.implementations}
    assert set(results) == {"medtune", "one_at_a_time", "deepcopy"}
    assert results["medtune"].shape == (NAS_QUICK_ARCHITECTURES,)
    assert len(set(results["medtune"].tolist())) > 1
    for key in ("one_at_a_time", "deepcopy"):
        torch.testing.assert_close(results["medtune"], results[key], rtol=0, atol=0)
