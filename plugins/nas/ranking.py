"""Rank many architectures of an elastic super-net at once, sharing the work their paths share.

Proxy evaluation (Pourchot2022, sec. 4.3.2, BNS-FT) recalibrates the batch-norm statistics of
each architecture and evaluates it. A layer's output, and the statistics its batch norm
recalibrates to, depend only on the choices made before it, so :func:`evaluate_architectures`
walks the architectures as a trie of their executed blocks (depth first, so memory stays that
of one path) and computes each shared prefix once: the stem once, a block's expansion once at
the widest ratio its children use, the depthwise convolution once per kernel size. The logits
equal those of recalibrating and evaluating each architecture on its own, up to floating-point
rounding. Details: docs/nas.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medtune.plugins.nas.elastic import Architecture, ElasticBatchNorm2d, ElasticSuperNet
from medtune.plugins.nas.recalibration import (
    StatisticsAccumulator,
    normalise_by_batch,
    normalise_by_statistics,
)

__all__ = ["evaluate_architectures", "rank_architectures"]

Step = tuple[int, int, int, int]  # (stage, block, expand ratio, kernel size)


@dataclass
class _Activations:
    """One layer's output for every calibration batch and for the evaluation images."""

    calibration: list[Tensor]
    evaluation: Tensor

    def map(self, fn) -> _Activations:
        return _Activations([fn(x) for x in self.calibration], fn(self.evaluation))

    def narrow(self, channels: int) -> _Activations:
        return self.map(lambda x: x if x.shape[1] == channels else x[:, :channels])


def _norm(bn: ElasticBatchNorm2d, values: _Activations) -> _Activations:
    """Batch norm recalibrated on the calibration batches, applied to every tensor of ``values``."""
    accumulator = StatisticsAccumulator()
    calibration = [normalise_by_batch(bn, x, accumulator) for x in values.calibration]
    stats = accumulator.statistics(bn.running_mean.dtype)
    return _Activations(calibration, normalise_by_statistics(bn, values.evaluation, stats))


def _relu6(x: Tensor) -> Tensor:
    return F.relu6(x, inplace=True)  # on a fresh batch-norm output: nothing else reads it


def _conv(layer, values: _Activations, kernel: int, in_channels: int,
          out_channels: int) -> _Activations:
    return values.map(lambda x: layer(x, [(0, x.shape[0], kernel, in_channels, out_channels)]))


def _steps(arch: Architecture) -> tuple[Step, ...]:
    return tuple((s, b, arch.expand_ratios[s][b], arch.kernel_sizes[s][b])
                 for s, depth in enumerate(arch.depths) for b in range(depth))


class _Walk:
    """Depth-first walk of the trie of architectures' steps, filling ``logits``."""

    def __init__(self, net: ElasticSuperNet, paths: list[tuple[Step, ...]],
                 logits: list[Tensor | None]) -> None:
        self.net, self.paths, self.logits = net, paths, logits

    def node(self, members: list[int], depth: int, values: _Activations) -> None:
        """``members`` share their first ``depth`` steps, whose output is ``values``."""
        by_block: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index in members:
            path = self.paths[index]
            if len(path) == depth:  # paths are distinct: one member ends here at most
                self.logits[index] = self.net.head(values.evaluation.mean(dim=(2, 3)))
                continue
            by_block[path[depth][:2]].append(index)
        for (stage, block_index), group in by_block.items():
            self.block(self.net.stages[stage][block_index], group, depth, values)

    def block(self, block, group: list[int], depth: int, values: _Activations) -> None:
        """Run one block for every choice in ``group``, then descend into each choice."""
        c_in, c_out = block.in_channels, block.out_channels
        ratios = {index: self.paths[index][depth][2] for index in group}
        kernels = {index: self.paths[index][depth][3] for index in group}
        hidden = c_in * max(ratios.values())
        expanded = _conv(block.expand, values, 1, c_in, hidden)
        expanded = _norm(block.expand_bn, expanded).map(_relu6)
        kernel_sizes = sorted(set(kernels.values()))
        for kernel in kernel_sizes:
            users = [index for index in group if kernels[index] == kernel]
            width = c_in * max(ratios[index] for index in users)
            spatial = _conv(block.depthwise, expanded.narrow(width), kernel, width, width)
            spatial = _norm(block.depthwise_bn, spatial).map(_relu6)
            if kernel == kernel_sizes[-1]:
                expanded = None  # freed before descending: memory stays that of one path
            expand_ratios = sorted({ratios[index] for index in users})
            for ratio in expand_ratios:
                y = _conv(block.project, spatial, 1, c_in * ratio, c_out)
                if ratio == expand_ratios[-1]:
                    spatial = None
                y = _norm(block.project_bn, y)
                if block.residual:
                    y = _Activations([a + b for a, b in zip(y.calibration, values.calibration)],
                                     y.evaluation + values.evaluation)
                self.node([index for index in users if ratios[index] == ratio], depth + 1, y)


def _check(net: ElasticSuperNet, archs: Sequence[Architecture],
           calibration: Tensor | Sequence[Tensor], images: Tensor) -> list[Tensor]:
    if not isinstance(net, ElasticSuperNet):
        raise TypeError(f"net must be an ElasticSuperNet, got {type(net).__name__}")
    if len(archs) == 0:
        raise ValueError("archs is empty; pass at least one architecture")
    for arch in archs:
        net.space.check(arch)
    batches = [calibration] if isinstance(calibration, Tensor) else list(calibration)
    if not batches:
        raise ValueError("calibration is empty; pass a batch of images or a list of batches")
    for name, x in [("images", images)] + [(f"calibration batch {i}", b)
                                           for i, b in enumerate(batches)]:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be an image tensor [N, C, H, W], got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if x.shape[1:] != images.shape[1:]:
            raise ValueError(f"{name} has images of shape {tuple(x.shape[1:])} but the evaluation "
                             f"images are {tuple(images.shape[1:])}; use one image shape")
    return batches


def evaluate_architectures(net: ElasticSuperNet, archs: Sequence[Architecture],
                           calibration: Tensor | Sequence[Tensor], images: Tensor) -> Tensor:
    """Logits of every architecture on ``images`` after recalibrating its batch norm (BNS-FT).

    Args:
        net: the super-net. Neither copied nor modified (its buffers, parameters and modes stay
            as they are); put it in eval mode if it has dropout.
        archs: the architectures, in any order; repeats are evaluated once.
        calibration: one batch [N, C, H, W] or a list of batches; each batch-norm layer of an
            architecture normalises each batch by the batch's own statistics and recalibrates to
            the exact statistics of all of them, as :func:`medtune.plugins.nas.recalibration.
            recalibrate` does.
        images: the evaluation images [M, C, H, W].

    Returns:
        [len(archs), M, num_classes]: the logits each architecture gives, equal (up to
        floating-point rounding) to recalibrating and evaluating it alone.

    Raises:
        ValueError: an architecture outside the super-net's space, no calibration batch, or
            tensors that are not image batches of one shape.
    """
    batches = _check(net, archs, calibration, images)
    paths = [_steps(arch) for arch in archs]
    logits: list[Tensor | None] = [None] * len(archs)
    first = {}
    for index, path in enumerate(paths):
        first.setdefault(path, index)
    with torch.no_grad():
        values = _Activations(batches, images).map(net.stem_conv)
        values = _norm(net.stem_bn, values).map(_relu6)
        _Walk(net, paths, logits).node(sorted(first.values()), 0, values)
    return torch.stack([logits[first[path]] for path in paths])


def rank_architectures(net: ElasticSuperNet, archs: Sequence[Architecture],
                       calibration: Tensor | Sequence[Tensor], images: Tensor,
                       labels: Tensor) -> Tensor:
    """Accuracy of every architecture on ``(images, labels)`` after BN recalibration (BNS-FT).

    See :func:`evaluate_architectures` for ``net``, ``archs``, ``calibration`` and ``images``;
    ``labels`` holds the class index of each image, [M] integers.

    Returns:
        [len(archs)] float: the share of images each architecture classifies correctly, the
        proxy score the architectures are ranked by (higher is better).
    """
    if not isinstance(labels, Tensor) or labels.shape != images.shape[:1] or \
            labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer tensor [{images.shape[0]}] (one class per "
                         f"image), got {getattr(labels, 'dtype', type(labels).__name__)} of shape "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    logits = evaluate_architectures(net, archs, calibration, images)
    return (logits.argmax(-1) == labels).float().mean(dim=1)
