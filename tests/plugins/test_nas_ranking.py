"""Ranking many architectures at once: the same logits and accuracies as one at a time, with the
shared prefixes, expansions and depthwise layers run once, and the model left untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medtune.plugins.nas.elastic import Architecture, ElasticSpace, ElasticSuperNet
from medtune.plugins.nas.ranking import evaluate_architectures, rank_architectures
from medtune.plugins.nas.recalibration import recalibrate, use_statistics
from tests.plugins.test_nas_elastic import _net as _elastic_net

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> ElasticSuperNet:
    return _elastic_net().eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 9, 10, generator=torch.Generator().manual_seed(seed))


def _architectures(space: ElasticSpace) -> list[Architecture]:
    """Random architectures, neighbours of one of them (long shared prefixes) and a repeat."""
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(6)]
    archs += space.neighbours(archs[0])[:10]
    return archs + [archs[2]]


def _one_at_a_time(net, archs, calibration, images) -> torch.Tensor:
    logits = []
    with torch.no_grad():
        for arch in archs:
            stats = recalibrate(net, calibration, forward=lambda m, x: m(x, arch))
            with use_statistics(net, stats):
                logits.append(net(images, arch))
    return torch.stack(logits)


def test_logits_and_accuracies_equal_recalibrating_each_architecture_alone():
    net = _net()
    archs = _architectures(net.space)
    calibration = [_images(6, 10), _images(5, 11)]
    images, labels = _images(12, 12), torch.randint(0, 3, (12,))
    expected = _one_at_a_time(net, archs, calibration, images)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    logits = evaluate_architectures(net, archs, calibration, images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    accuracies = rank_architectures(net, archs, calibration, images, labels)
    one_by_one = (expected.argmax(-1) == labels).float().mean(dim=1)
    assert torch.equal(accuracies, one_by_one)
    assert len(set(accuracies.tolist())) > 1  # the architectures really differ
    assert torch.equal(logits[-1], logits[2])  # a repeated architecture: the same logits
    # a single calibration tensor is one batch
    torch.testing.assert_close(evaluate_architectures(net, archs[:3], calibration[0], images),
                               _one_at_a_time(net, archs[:3], [calibration[0]], images),
                               rtol=1e-5, atol=1e-6)
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value), key
    assert not net.training and all("forward" not in m.__dict__ for m in net.modules())


def test_shared_layers_run_once_for_all_architectures():
    net = _net()
    archs = _architectures(net.space)
    calls: dict[str, int] = {}
    for name in ("stem", "stages.0.0.expand", "stages.0.0.depthwise", "stages.0.0.project"):
        net.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: calls.__setitem__(name,
                                                                      calls.get(name, 0) + 1))
    calibration = [_images(6, 10), _images(5, 11)]
    evaluate_architectures(net, archs, calibration, _images(8, 12))
    tensors = len(calibration) + 1  # each layer runs on every calibration batch and the images
    first = {(arch.expand_ratios[0][0], arch.kernel_sizes[0][0]) for arch in archs}
    assert calls["stem"] == tensors
    assert calls["stages.0.0.expand"] == tensors
    assert calls["stages.0.0.depthwise"] == tensors * len({k for _, k in first})
    assert calls["stages.0.0.project"] == tensors * len(first)
    assert len(first) < len(archs)


def test_bad_arguments_are_clear_errors():
    net = _net()
    archs = _architectures(net.space)[:2]
    images, labels = _images(4, 1), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="archs is empty"):
        rank_architectures(net, [], images, images, labels)
    with pytest.raises(ValueError, match="calibration is empty"):
        rank_architectures(net, archs, [], images, labels)
    with pytest.raises(ValueError, match="use one image shape"):
        rank_architectures(net, archs, torch.randn(4, 1, 8, 8), images, labels)
    with pytest.raises(ValueError, match="labels must be an integer tensor \\[4\\]"):
        rank_architectures(net, archs, images, images, labels.float())
    with pytest.raises(ValueError, match="stages"):
        rank_architectures(net, [ElasticSpace(3).largest()], images, images, labels)
    with pytest.raises(TypeError, match="ElasticSuperNet"):
        rank_architectures(nn.Linear(2, 2), archs, images, images, labels)
