"""The weight-sharing super-net over the cell space and its training and evaluation (Pourchot2022).

Every node of a super-cell holds all three operations at full width and every possible edge
exists; an architecture (a :class:`~medtune.plugins.nas.cells.Cell`) is a sub-graph: its operation
nodes map, in canonical order, to the first super-nodes, and each node uses the first ``w``
channels of its filter bank (NAS-Bench-101 splits a cell's output channels between the nodes
feeding the output, so widths vary over architectures; Pourchot2022, sec. 4.3.1, inherits the first
filters). Weights are sliced, never copied; batch-norm layers of elastic width use the prefix
of their parameters and running statistics.

Training (sec. 4.3.2) samples one architecture per mini-batch, uniformly from a list of cells
(``sampling="uniform"``) or pro-rata to the standalone parameter counts (``"pro_rata"``, Luo et
al., 2019); ``paths=k`` averages the gradients of k sampled architectures per step (AVG-k);
``single_kernel=True`` makes the 1x1 convolution of a node the centre of its 3x3 kernel
(Stamoulis et al., 2019). Evaluation uses the shared running statistics (NO-FT) or statistics
recalibrated per architecture on training batches (BNS-FT, :mod:`.recalibration`, cached);
:meth:`SuperNet.rank` scores many architectures with a progress bar and :meth:`SuperNet.export`
builds the standalone :class:`~medtune.plugins.nas.cells.CellNetwork` with the inherited weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medtune.plugins.nas.cells import MAX_NODES, Cell, CellNetwork, max_pool3x3, node_channels
from medtune.plugins.nas.recalibration import StatisticsCache, recalibrate, use_statistics

__all__ = ["EVALUATION_MODES", "SAMPLINGS", "PrefixBatchNorm2d", "SuperNet", "SupernetTraining", "train_supernet"]

SAMPLINGS = ("uniform", "pro_rata")
EVALUATION_MODES = ("noft", "bnsft")


class PrefixBatchNorm2d(nn.BatchNorm2d):
    """Batch norm of elastic width: an input of ``C`` channels uses the first ``C`` features."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        channels = values.shape[1]
        use_running = not self.training or self.track_running_stats
        return F.batch_norm(
            values,
            self.running_mean[:channels] if use_running else None,
            self.running_var[:channels] if use_running else None,
            self.weight[:channels],
            self.bias[:channels],
            self.training,
            self.momentum,
            self.eps,
        )


class _ElasticConvBnRelu(nn.Module):
    """conv (no bias) + prefix batch norm + ReLU whose convolution is sliced to the used width."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, momentum: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels_out, channels_in, kernel, kernel))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.norm = PrefixBatchNorm2d(channels_out, momentum=momentum)

    def forward(self, values: torch.Tensor, width: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        kernel = (self.weight if weight is None else weight)[:width, : values.shape[1]]
        return F.relu(self.norm(F.conv2d(values, kernel, padding=kernel.shape[-1] // 2)))


class _SuperCell(nn.Module):
    """All operations of ``max_op_nodes`` nodes, input projections and the residual projection."""

    def __init__(self, max_op_nodes: int, in_channels: int, out_channels: int, single_kernel: bool,
                 momentum: float) -> None:
        super().__init__()
        self.single_kernel = single_kernel
        self.projections = nn.ModuleList(
            [_ElasticConvBnRelu(in_channels, out_channels, 1, momentum) for _ in range(max_op_nodes)])
        self.conv3 = nn.ModuleList(
            [_ElasticConvBnRelu(out_channels, out_channels, 3, momentum) for _ in range(max_op_nodes)])
        self.conv1 = nn.ModuleList(
            [_ElasticConvBnRelu(out_channels, out_channels, 1, momentum) for _ in range(max_op_nodes)])
        if single_kernel:
            for module in self.conv1:
                del module.weight  # the 1x1 kernel is the centre of the node's 3x3 kernel
        self.residual = _ElasticConvBnRelu(in_channels, out_channels, 1, momentum)
        self.out_channels = out_channels

    def operation(self, node: int, op: str, values: torch.Tensor, width: int) -> torch.Tensor:
        """Operation ``op`` of super-node ``node`` (1-based) on ``values``."""
        if op == "maxpool3x3":
            return max_pool3x3(values)
        if op == "conv3x3-bn-relu":
            return self.conv3[node - 1](values, width)
        shared = self.conv3[node - 1].weight[:, :, 1:2, 1:2] if self.single_kernel else None
        return self.conv1[node - 1](values, width, shared)

    def forward(self, values: torch.Tensor, cell: Cell, widths: Sequence[int]) -> torch.Tensor:
        outputs: list[torch.Tensor] = [values]
        for k, width in enumerate(widths):
            node = k + 1
            inputs = [outputs[i][:, :width] for i in range(1, node) if cell.matrix[i][node]]
            if cell.matrix[0][node]:
                inputs.append(self.projections[k](values, width))
            outputs.append(self.operation(node, cell.ops[k], sum(inputs), width))
        feeding = [outputs[i] for i in cell.output_nodes]
        result = torch.cat(feeding, dim=1) if feeding else None
        if cell.residual:
            projected = self.residual(values, self.out_channels)
            result = projected if result is None else result + projected
        return result


class SuperNet(nn.Module):
    """Weight-sharing super-net with the skeleton of :class:`CellNetwork`.

    Args:
        max_op_nodes: operation nodes per super-cell (the largest architecture it holds).
        channels, stacks, cells_per_stack, in_channels, classes: as :class:`CellNetwork`.
        single_kernel: share one kernel between a node's 3x3 and 1x1 convolutions.
        momentum: momentum of the batch-norm running statistics (PyTorch convention).
    """

    def __init__(self, max_op_nodes: int = 3, channels: int = 8, stacks: int = 2, cells_per_stack: int = 1,
                 in_channels: int = 1, classes: int = 2, single_kernel: bool = False,
                 momentum: float = 0.1) -> None:
        super().__init__()
        if not 1 <= max_op_nodes <= MAX_NODES - 2:
            raise ValueError(f"max_op_nodes must lie in [1, {MAX_NODES - 2}], got {max_op_nodes}")
        self.max_op_nodes = max_op_nodes
        self.shape = dict(channels=channels, stacks=stacks, cells_per_stack=cells_per_stack,
                          in_channels=in_channels, classes=classes)
        self.stem_conv = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.stem_norm = nn.BatchNorm2d(channels, momentum=momentum)
        self.cells = nn.ModuleList()
        self.pools = []
        width = channels
        for stack in range(stacks):
            out = channels * 2**stack
            for position in range(cells_per_stack):
                self.cells.append(_SuperCell(max_op_nodes, width, out, single_kernel, momentum))
                self.pools.append(stack > 0 and position == 0)
                width = out
        self.classifier = nn.Linear(width, classes)

    def check(self, cell: Cell) -> Cell:
        """The canonical form of ``cell``, after checking that the super-net holds it."""
        canonical = cell.canonical
        if canonical.size - 2 > self.max_op_nodes:
            raise ValueError(
                f"cell {cell.encoding()} has {canonical.size - 2} operation nodes; this super-net "
                f"holds at most {self.max_op_nodes} (build it with a larger max_op_nodes)"
            )
        return canonical

    def forward(self, images: torch.Tensor, cell: Cell) -> torch.Tensor:
        """Logits of architecture ``cell`` (its sub-graph of the super-net)."""
        cell = self.check(cell)
        values = F.relu(self.stem_norm(self.stem_conv(images)))
        for super_cell, pool in zip(self.cells, self.pools):
            if pool:
                values = F.max_pool2d(values, 2)
            values = super_cell(values, cell, node_channels(cell, super_cell.out_channels))
        return self.classifier(values.mean(dim=(2, 3)))

    def export(self, cell: Cell) -> CellNetwork:
        """A standalone :class:`CellNetwork` of ``cell`` holding the inherited weights and
        the shared running statistics; in eval mode its outputs equal ``self(images, cell)``."""
        cell = self.check(cell)
        network = CellNetwork(cell, **self.shape)
        with torch.no_grad():
            _copy_conv_bn(network.stem, self.stem_conv.weight, self.stem_norm)
            cell_modules = [m for m in network.body if not isinstance(m, nn.MaxPool2d)]
            for module, super_cell in zip(cell_modules, self.cells):
                for k, (op, width) in enumerate(zip(module.cell.ops, module.widths)):
                    node = k + 1
                    if str(node) in module.projections:
                        source = super_cell.projections[k]
                        _copy_conv_bn(module.projections[str(node)], source.weight, source.norm)
                    if op == "conv3x3-bn-relu":
                        source = super_cell.conv3[k]
                        _copy_conv_bn(module.ops[k], source.weight, source.norm)
                    elif op == "conv1x1-bn-relu":
                        source = super_cell.conv1[k]
                        weight = (super_cell.conv3[k].weight[:, :, 1:2, 1:2] if super_cell.single_kernel
                                  else source.weight)
                        _copy_conv_bn(module.ops[k], weight, source.norm)
                if "output" in module.projections:
                    source = super_cell.residual
                    _copy_conv_bn(module.projections["output"], source.weight, source.norm)
            network.classifier.load_state_dict(self.classifier.state_dict())
        return network.eval()

    # -- evaluation ----------------------------------------------------------------------------
    def accuracy(self, cell: Cell, split: tuple[torch.Tensor, torch.Tensor], mode: str = "bnsft",
                 recalibration: Sequence[torch.Tensor] = (), cache: StatisticsCache | None = None,
                 batch_size: int = 512) -> float:
        """Proxy accuracy of ``cell`` on ``split`` = (images, labels).

        ``mode="noft"`` uses the super-net's shared running statistics; ``"bnsft"`` recalibrates
        them on the ``recalibration`` image batches first (stored in ``cache`` when given).
        """
        if mode not in EVALUATION_MODES:
            raise ValueError(f"mode must be one of {EVALUATION_MODES}, got {mode!r}")
        cell = self.check(cell)
        images, labels = split
        self.eval()
        if mode == "noft":
            return self._accuracy(cell, images, labels, batch_size)
        if not recalibration:
            raise ValueError("BNS-FT evaluation needs recalibration batches (training images)")

        def compute():
            return recalibrate(self, recalibration, forward=lambda net, batch: net(batch, cell))

        stats = cache.get_or_compute(cell.hash, compute) if cache is not None else compute()
        with use_statistics(self, stats):
            return self._accuracy(cell, images, labels, batch_size)

    def _accuracy(self, cell: Cell, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
        correct = 0
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                logits = self(images[start:start + batch_size], cell)
                correct += int((logits.argmax(dim=1) == labels[start:start + batch_size]).sum())
        return correct / len(labels)

    def rank(self, cells: Sequence[Cell], split: tuple[torch.Tensor, torch.Tensor], mode: str = "bnsft",
             recalibration: Sequence[torch.Tensor] = (), cache: StatisticsCache | None = None,
             progress: bool = True, description: str = "ranking architectures") -> np.ndarray:
        """Proxy accuracies of many ``cells`` (see :meth:`accuracy`), with a rich progress bar."""
        scores = np.empty(len(cells))
        if not progress:
            for k, cell in enumerate(cells):
                scores[k] = self.accuracy(cell, split, mode, recalibration, cache)
            return scores
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"{description} ({mode})", total=len(cells))
            for k, cell in enumerate(cells):
                scores[k] = self.accuracy(cell, split, mode, recalibration, cache)
                bar.advance(task)
        return scores


def _copy_conv_bn(target: nn.Sequential, weight: torch.Tensor, norm: nn.BatchNorm2d) -> None:
    """Copy the sliced conv weight and batch-norm prefix into a conv-bn-relu ``target``."""
    conv, target_norm = target[0], target[1]
    out, channels_in = conv.weight.shape[:2]
    conv.weight.copy_(weight[:out, :channels_in])
    target_norm.weight.copy_(norm.weight[:out])
    target_norm.bias.copy_(norm.bias[:out])
    target_norm.running_mean.copy_(norm.running_mean[:out])
    target_norm.running_var.copy_(norm.running_var[:out])
    target_norm.eps = norm.eps


@dataclass(frozen=True)
class SupernetTraining:
    """How a super-net is trained: ``steps`` mini-batches, one or ``paths`` sampled cells each."""

    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 0.01
    weight_decay: float = 1e-4
    sampling: str = "uniform"
    paths: int = 1

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.steps < 1 or self.batch_size < 1 or self.paths < 1:
            raise ValueError(f"steps, batch_size and paths must be >= 1, got {self.steps}, {self.batch_size}, {self.paths}")


def sampling_weights(cells: Sequence[Cell], sampling: str, supernet: SuperNet) -> np.ndarray:
    """Probability of each cell: uniform, or pro-rata to its standalone parameter count."""
    if sampling == "uniform":
        return np.full(len(cells), 1.0 / len(cells))
    counts = np.array([c.parameters(**supernet.shape) for c in cells], dtype=np.float64)
    return counts / counts.sum()


def train_supernet(supernet: SuperNet, cells: Sequence[Cell], train: tuple[torch.Tensor, torch.Tensor],
                   settings: SupernetTraining = SupernetTraining(), seed: int = 0,
                   progress: bool = False) -> dict[str, float]:
    """Train ``supernet`` by single-path sampling over ``cells`` (Pourchot2022, sec. 4.3.2).

    Each step draws ``settings.paths`` cells (uniformly or pro-rata to parameters), averages
    their cross-entropy gradients on the same mini-batch and takes one Adam step (cosine
    learning-rate schedule to 0). Returns the mean loss of the last 10 % of steps and the
    training seconds.
    """
    if not cells:
        raise ValueError("train_supernet needs at least one cell to sample from")
    cells = [supernet.check(c) for c in cells]
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    probabilities = sampling_weights(cells, settings.sampling, supernet)
    images, labels = train
    optimizer = torch.optim.Adam(supernet.parameters(), lr=settings.learning_rate,
                                 weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    supernet.train()
    losses = []
    started = time.perf_counter()
    order = torch.randperm(len(labels), generator=generator)
    position = 0
    for _ in range(settings.steps):
        if position + settings.batch_size > len(labels):
            order, position = torch.randperm(len(labels), generator=generator), 0
        index = order[position:position + settings.batch_size]
        position += settings.batch_size
        optimizer.zero_grad()
        total = 0.0
        for choice in rng.choice(len(cells), size=settings.paths, p=probabilities):
            loss = F.cross_entropy(supernet(images[index], cells[int(choice)]), labels[index]) / settings.paths
            loss.backward()
            total += loss.item()
        optimizer.step()
        schedule.step()
        losses.append(total)
    tail = losses[-max(1, len(losses) // 10):]
    return {"loss": float(np.mean(tail)), "seconds": time.perf_counter() - started}
