"""OFA-like elastic super-net for 2D classification and its search space (Pourchot2022, ch. 5).

Stages of inverted-residual blocks whose every convolution runs through
:func:`medtune.kernels.supernet_conv` on the shared weight. An architecture chooses per stage its
depth (2, 3 or 4 blocks) and per block the expand ratio (3, 4 or 6: the first channels of the
shared layers) and the depthwise kernel size (3, 5 or 7: as in OFA, a centre crop times a
learned transformation matrix). :meth:`ElasticSuperNet.forward` runs one architecture, or
different architectures on consecutive slices of one batch in one op call per layer.
:class:`ElasticSpace` is the architecture space, encoded as the flat configs of a
:class:`medtune.search.space.SearchSpace` so that medtune's searchers run on it unchanged.
The architecture in detail: docs/nas.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtune.kernels import supernet_conv
from medtune.search.space import Ordinal, SearchSpace

DEPTHS = (2, 3, 4)
EXPAND_RATIOS = (3, 4, 6)
KERNEL_SIZES = (3, 5, 7)


@dataclass(frozen=True)
class Architecture:
    """One sub-network: per stage its depth and, per active block, expand ratio and kernel."""

    depths: tuple[int, ...]
    expand_ratios: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]

    def key(self) -> str:
        """A canonical string naming the architecture (e.g. a cache key)."""
        return "|".join(
            ",".join(f"e{e}k{k}" for e, k in zip(es, ks))
            for es, ks in zip(self.expand_ratios, self.kernel_sizes)
        )


# --- search space --------------------------------------------------------------------------


class ElasticSpace:
    """Depth per stage, expand ratio and kernel size per block, as a medtune search space.

    Args:
        num_stages: number of stages of the super-net.
        depths, expand_ratios, kernel_sizes: the elastic choices (ascending); the largest depth
            is the number of blocks a stage holds.
    """

    def __init__(self, num_stages: int = 3, depths: Sequence[int] = DEPTHS,
                 expand_ratios: Sequence[int] = EXPAND_RATIOS,
                 kernel_sizes: Sequence[int] = KERNEL_SIZES) -> None:
        if not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"num_stages must be a positive integer, got {num_stages!r}")
        for name, values in (("depths", depths), ("expand_ratios", expand_ratios),
                             ("kernel_sizes", kernel_sizes)):
            if not values or any(not isinstance(v, int) or v < 1 for v in values) or \
                    list(values) != sorted(set(values)):
                raise ValueError(f"{name} must be distinct positive integers in ascending "
                                 f"order, got {values!r}")
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd (centre crops), got {kernel_sizes!r}")
        self.num_stages = num_stages
        self.depths = tuple(depths)
        self.expand_ratios = tuple(expand_ratios)
        self.kernel_sizes = tuple(kernel_sizes)
        self.max_depth = self.depths[-1]
        parameters = []
        for s in range(num_stages):
            parameters.append(Ordinal(f"depth_{s}", self.depths))
            for b in range(self.max_depth):
                deeper = [d for d in self.depths if d > b]
                condition = None if len(deeper) == len(self.depths) else {f"depth_{s}": deeper}
                parameters.append(Ordinal(f"expand_{s}_{b}", self.expand_ratios,
                                          condition=condition))
                parameters.append(Ordinal(f"kernel_{s}_{b}", self.kernel_sizes,
                                          condition=condition))
        self.search_space = SearchSpace(parameters)

    def largest(self) -> Architecture:
        """The full network: every block, the largest ratio and kernel."""
        d = self.max_depth
        return Architecture((d,) * self.num_stages,
                            ((self.expand_ratios[-1],) * d,) * self.num_stages,
                            ((self.kernel_sizes[-1],) * d,) * self.num_stages)

    def encode(self, arch: Architecture) -> dict[str, int]:
        """``arch`` as a config dict of :attr:`search_space` (validated)."""
        self.check(arch)
        config: dict[str, int] = {}
        for s, depth in enumerate(arch.depths):
            config[f"depth_{s}"] = depth
            for b in range(depth):
                config[f"expand_{s}_{b}"] = arch.expand_ratios[s][b]
                config[f"kernel_{s}_{b}"] = arch.kernel_sizes[s][b]
        return self.search_space.validate(config)

    def decode(self, config: Mapping[str, Any]) -> Architecture:
        """The architecture of a config dict of :attr:`search_space` (validated)."""
        config = self.search_space.validate(config)
        depths = tuple(int(config[f"depth_{s}"]) for s in range(self.num_stages))
        return Architecture(
            depths,
            tuple(tuple(int(config[f"expand_{s}_{b}"]) for b in range(d))
                  for s, d in enumerate(depths)),
            tuple(tuple(int(config[f"kernel_{s}_{b}"]) for b in range(d))
                  for s, d in enumerate(depths)),
        )

    def check(self, arch: Architecture) -> None:
        """Raise ValueError naming the problem if ``arch`` is not in this space."""
        if not isinstance(arch, Architecture):
            raise ValueError(f"expected an elastic Architecture, got {type(arch).__name__}")
        if len(arch.depths) != self.num_stages or len(arch.expand_ratios) != self.num_stages \
                or len(arch.kernel_sizes) != self.num_stages:
            raise ValueError(f"the architecture has {len(arch.depths)} stages; this space has "
                             f"{self.num_stages}")
        for s, (d, es, ks) in enumerate(zip(arch.depths, arch.expand_ratios, arch.kernel_sizes)):
            if d not in self.depths or len(es) != d or len(ks) != d:
                raise ValueError(f"stage {s}: depth {d} must be one of {self.depths} with one "
                                 f"expand ratio and kernel per block, got {es} and {ks}")
            bad = [e for e in es if e not in self.expand_ratios] + \
                  [k for k in ks if k not in self.kernel_sizes]
            if bad:
                raise ValueError(f"stage {s}: {bad} not among the expand ratios "
                                 f"{self.expand_ratios} / kernel sizes {self.kernel_sizes}")

    def sample(self, rng: np.random.Generator) -> Architecture:
        """A uniformly drawn architecture (uniform per choice, as single-path training does)."""
        return self.decode(self.search_space.sample(rng))

    def neighbours(self, arch: Architecture) -> list[Architecture]:
        """Architectures one choice away from ``arch`` (local search moves)."""
        return [self.decode(c) for c in self.search_space.neighbours(self.encode(arch))]

    def mutate(self, arch: Architecture, rate: float, rng: np.random.Generator) -> Architecture:
        """A child of ``arch`` with each choice mutated with probability ``rate`` (at least one)."""
        return self.decode(self.search_space.mutate(self.encode(arch), rate, rng))


# --- layers --------------------------------------------------------------------------------


Slices = list[tuple[int, int, Architecture]]  # (batch_start, batch_end, architecture)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the first ``C`` channels of its parameters and running buffers, ``C`` the
    input's channel count (elastic width). Training mode updates the first ``C`` entries of the
    running buffers in place."""

    def forward(self, input: Tensor) -> Tensor:
        channels = input.shape[1]
        if channels > self.num_features:
            raise ValueError(f"ElasticBatchNorm2d has {self.num_features} features, got an input "
                             f"with {channels} channels")
        use_batch = self.training or self.running_mean is None
        running = self.running_mean is not None and (not self.training or
                                                     self.track_running_stats)
        return F.batch_norm(
            input,
            self.running_mean[:channels] if running else None,
            self.running_var[:channels] if running else None,
            self.weight[:channels] if self.weight is not None else None,
            self.bias[:channels] if self.bias is not None else None,
            use_batch, self.momentum if self.momentum is not None else 0.1, self.eps)


def _norm(bn: ElasticBatchNorm2d, x: Tensor, widths: list[tuple[int, int, int]]) -> Tensor:
    """Batch norm of each slice's first ``width`` channels; zeros beyond, up to the widest."""
    if len(widths) == 1:
        return bn(x[:, :widths[0][2]])
    widest = max(w for _, _, w in widths)
    return torch.cat([F.pad(bn(x[a:b, :w]), (0, 0, 0, 0, 0, widest - w)) for a, b, w in widths])


class ElasticConv2d(nn.Module):
    """A shared convolution weight run through ``supernet_conv`` (dense or depthwise).

    A depthwise layer with ``kernel_transform`` holds OFA's transformation matrices: the kernel
    of size ``k`` is the centre ``k x k`` crop of the next larger (transformed) kernel times a
    learned ``k^2 x k^2`` matrix (identity at start).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int],
                 stride: int = 1, depthwise: bool = False, kernel_transform: bool = False):
        super().__init__()
        self.kernel_sizes = tuple(sorted(kernel_sizes))
        self.max_kernel = self.kernel_sizes[-1]
        self.stride = stride
        self.depthwise = depthwise
        weight = torch.empty(out_channels, 1 if depthwise else in_channels, self.max_kernel,
                             self.max_kernel)
        nn.init.kaiming_normal_(weight, mode="fan_out")
        self.weight = nn.Parameter(weight)
        self.transforms = nn.ParameterDict()
        if kernel_transform and depthwise:
            for k in self.kernel_sizes[:-1]:
                self.transforms[str(k)] = nn.Parameter(torch.eye(k * k))

    def kernel(self, size: int) -> Tensor:
        """The [C_out, C_in, size, size] kernel a sub-path of kernel ``size`` uses (with the
        transformation matrices applied; without them, the shared weight itself)."""
        if not self.transforms or size == self.max_kernel:
            return self.weight
        current = self.weight
        for k in reversed(self.kernel_sizes[:-1]):
            if k < size:
                break
            off = (current.shape[2] - k) // 2
            crop = current[:, :, off:off + k, off:off + k]
            flat = crop.reshape(-1, k * k) @ self.transforms[str(k)]
            current = flat.reshape(crop.shape)
        return current

    def forward(self, x: Tensor, segments: list[tuple[int, int, int, int, int]]) -> Tensor:
        """Run ``segments`` (batch_start, batch_end, kernel, in_channels, out_channels).

        The op receives the prefix of the shared weight (a view) that the widest segment uses,
        so its output has that many channels rather than the layer's maximum."""
        widest_out = max(seg[4] for seg in segments)
        widest_in = 1 if self.depthwise else max(seg[3] for seg in segments)
        if not self.transforms:
            return supernet_conv(x, self.weight[:widest_out, :widest_in], None, segments,
                                 self.stride, self.depthwise)
        outputs, run = [], [segments[0]]
        for seg in segments[1:] + [None]:
            if seg is not None and seg[2] == run[0][2]:
                run.append(seg)
                continue
            start = run[0][0]
            local = [(a - start, b - start, k, i, o) for a, b, k, i, o in run]
            outputs.append(supernet_conv(x[start:run[-1][1]], self.kernel(run[0][2])[:widest_out],
                                         None, local, self.stride, self.depthwise))
            run = [seg]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class ElasticBlock(nn.Module):
    """Inverted residual: 1x1 expand -> BN -> ReLU6 -> k x k depthwise -> BN -> ReLU6 ->
    1x1 project -> BN, plus the input when stride is 1 and widths match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 expand_ratios: Sequence[int], kernel_sizes: Sequence[int],
                 kernel_transform: bool):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        hidden = in_channels * max(expand_ratios)
        self.expand = ElasticConv2d(in_channels, hidden, (1,))
        self.expand_bn = ElasticBatchNorm2d(hidden)
        self.depthwise = ElasticConv2d(hidden, hidden, kernel_sizes, stride, depthwise=True,
                                       kernel_transform=kernel_transform)
        self.depthwise_bn = ElasticBatchNorm2d(hidden)
        self.project = ElasticConv2d(hidden, out_channels, (1,))
        self.project_bn = ElasticBatchNorm2d(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor, choices: list[tuple[int, int, int, int]]) -> Tensor:
        """``choices``: (batch_start, batch_end, expand_ratio, kernel_size) per slice."""
        c_in, c_out = self.in_channels, self.out_channels
        hidden = [(a, b, c_in * e) for a, b, e, _ in choices]
        y = self.expand(x, [(a, b, 1, c_in, h) for a, b, h in hidden])
        y = F.relu6(_norm(self.expand_bn, y, hidden))
        y = self.depthwise(y, [(a, b, k, h, h) for (a, b, h), (*_, k) in zip(hidden, choices)])
        y = F.relu6(_norm(self.depthwise_bn, y, hidden))
        y = self.project(y, [(a, b, 1, h, c_out) for a, b, h in hidden])
        y = _norm(self.project_bn, y, [(a, b, c_out) for a, b, _ in hidden])
        return y + x if self.residual else y


class ElasticSuperNet(nn.Module):
    """The weight-shared super-net of an :class:`ElasticSpace` (see the module docstring).

    Args:
        space: the architecture space (its number of stages sets the number of stages).
        in_channels: image channels.
        num_classes: outputs of the classification head (logits).
        stem_channels: width of the 3x3 stem convolution.
        widths: output width of each stage.
        strides: stride of each stage's first block.
        kernel_transform: learn OFA's kernel transformation matrices (else plain crops).
    """

    def __init__(self, space: ElasticSpace, in_channels: int = 1, num_classes: int = 2,
                 stem_channels: int = 8, widths: Sequence[int] = (8, 16, 24),
                 strides: Sequence[int] = (1, 2, 2), kernel_transform: bool = True):
        super().__init__()
        if len(widths) != space.num_stages or len(strides) != space.num_stages:
            raise ValueError(f"widths {tuple(widths)} and strides {tuple(strides)} need one entry "
                             f"per stage of the space ({space.num_stages})")
        self.space = space
        self.stem = ElasticConv2d(in_channels, stem_channels, (3,))
        self.stem_bn = ElasticBatchNorm2d(stem_channels)
        self.stages = nn.ModuleList()
        previous = stem_channels
        for width, stride in zip(widths, strides):
            blocks = nn.ModuleList(
                ElasticBlock(previous if b == 0 else width, width, stride if b == 0 else 1,
                             space.expand_ratios, space.kernel_sizes, kernel_transform)
                for b in range(space.max_depth))
            self.stages.append(blocks)
            previous = width
        self.head = nn.Linear(previous, num_classes)

    def _slices(self, x: Tensor, arch: Architecture | None,
                archs: Sequence[tuple[Architecture, int]] | None) -> Slices:
        if arch is not None and archs is not None:
            raise ValueError("pass either arch (one architecture for the batch) or archs "
                             "([(architecture, n_samples), ...]), not both")
        if archs is None:
            archs = [(arch if arch is not None else self.space.largest(), x.shape[0])]
        slices, start = [], 0
        for a, n in archs:
            self.space.check(a)
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"each slice needs a positive sample count, got {n!r}")
            slices.append((start, start + n, a))
            start += n
        if start != x.shape[0]:
            raise ValueError(f"archs cover {start} samples but the batch has {x.shape[0]}; the "
                             "counts must add up to the batch size")
        return slices

    def stem_conv(self, x: Tensor) -> Tensor:
        """The stem convolution of images ``x``, in channels-last layout: every later layer keeps
        it, so oneDNN runs the convolutions without reordering their inputs and outputs."""
        y = self.stem(x, [(0, x.shape[0], 3, x.shape[1], self.stem_bn.num_features)])
        return y.contiguous(memory_format=torch.channels_last)

    def features(self, x: Tensor, arch: Architecture | None = None,
                 archs: Sequence[tuple[Architecture, int]] | None = None) -> Tensor:
        """The pooled features [N, widths[-1]] before the head."""
        slices = self._slices(x, arch, archs)
        y = self.stem_conv(x)
        y = F.relu6(_norm(self.stem_bn, y, [(a, e, self.stem_bn.num_features)
                                            for a, e, _ in slices]))
        for s, blocks in enumerate(self.stages):
            for b, block in enumerate(blocks):
                active = [(a, e, arc) for a, e, arc in slices if b < arc.depths[s]]
                if not active:
                    break
                if len(active) == len(slices):
                    y = block(y, [(a, e, arc.expand_ratios[s][b], arc.kernel_sizes[s][b])
                                  for a, e, arc in active])
                    continue
                index = torch.cat([torch.arange(a, e, device=x.device) for a, e, _ in active])
                choices, start = [], 0
                for a, e, arc in active:
                    choices.append((start, start + e - a, arc.expand_ratios[s][b],
                                    arc.kernel_sizes[s][b]))
                    start += e - a
                y = y.index_copy(0, index, block(y.index_select(0, index), choices))
        return y.mean(dim=(2, 3))

    def forward(self, x: Tensor, arch: Architecture | None = None,
                archs: Sequence[tuple[Architecture, int]] | None = None) -> Tensor:
        """Logits [N, num_classes] of ``arch`` (default: the largest) on the whole batch, or of
        ``archs = [(architecture, n_samples), ...]`` on consecutive slices of the batch."""
        return self.head(self.features(x, arch, archs))

    @torch.no_grad()
    def export(self, arch: Architecture) -> nn.Module:
        """A standalone plain PyTorch network (``nn.Conv2d``, ``nn.BatchNorm2d``) computing
        ``arch`` with copies of the inherited weights (transformed kernels, channel prefixes,
        batch-norm parameters and running statistics)."""
        self.space.check(arch)
        blocks = []
        for s, stage in enumerate(self.stages):
            for b in range(arch.depths[s]):
                blocks.append(_export_block(stage[b], arch.expand_ratios[s][b],
                                            arch.kernel_sizes[s][b]))
        stem = _export_conv(self.stem, 3, self.stem.weight.shape[1], self.stem.weight.shape[0])
        net = PlainElasticNet(stem, _export_bn(self.stem_bn, self.stem_bn.num_features),
                              nn.Sequential(*blocks), nn.Linear(self.head.in_features,
                                                                self.head.out_features))
        net.head.load_state_dict(self.head.state_dict())
        return net.train(self.training)


# --- export --------------------------------------------------------------------------------


class PlainBlock(nn.Module):
    """An exported inverted-residual block of plain PyTorch layers."""

    def __init__(self, layers: nn.Sequential, residual: bool):
        super().__init__()
        self.layers = layers
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.layers(x)
        return y + x if self.residual else y


class PlainElasticNet(nn.Module):
    """An exported sub-network: stem, blocks, global average pooling, linear head."""

    def __init__(self, stem: nn.Conv2d, stem_bn: nn.BatchNorm2d, blocks: nn.Sequential,
                 head: nn.Linear):
        super().__init__()
        self.stem, self.stem_bn, self.blocks, self.head = stem, stem_bn, blocks, head

    def forward(self, x: Tensor) -> Tensor:
        y = self.blocks(F.relu6(self.stem_bn(self.stem(x))))
        return self.head(y.mean(dim=(2, 3)))


def _export_conv(layer: ElasticConv2d, kernel: int, in_channels: int,
                 out_channels: int) -> nn.Conv2d:
    groups = out_channels if layer.depthwise else 1
    conv = nn.Conv2d(in_channels, out_channels, kernel, layer.stride, kernel // 2, groups=groups,
                     bias=False)
    weight = layer.kernel(kernel)
    off = (weight.shape[2] - kernel) // 2
    rows = weight[:out_channels, :(1 if layer.depthwise else in_channels)]
    conv.weight.copy_(rows[:, :, off:off + kernel, off:off + kernel])
    return conv


def _export_bn(layer: ElasticBatchNorm2d, channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, layer.eps, layer.momentum if layer.momentum is not None else 0.1)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn, name).copy_(getattr(layer, name)[:channels])
    bn.num_batches_tracked.copy_(layer.num_batches_tracked)
    return bn


def _export_block(block: ElasticBlock, expand_ratio: int, kernel: int) -> PlainBlock:
    c_in, c_out = block.in_channels, block.out_channels
    hidden = c_in * expand_ratio
    layers = nn.Sequential(
        _export_conv(block.expand, 1, c_in, hidden), _export_bn(block.expand_bn, hidden),
        nn.ReLU6(),
        _export_conv(block.depthwise, kernel, hidden, hidden),
        _export_bn(block.depthwise_bn, hidden), nn.ReLU6(),
        _export_conv(block.project, 1, hidden, c_out), _export_bn(block.project_bn, c_out),
    )
    return PlainBlock(layers, block.residual)
