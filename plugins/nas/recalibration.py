"""Batch-norm statistics recalibration of one architecture of a weight-sharing super-net.

A super-net's running statistics are shared by every sub-network and match none of them;
Pourchot2022 (sec. 4.3.2, BNS-FT) recomputes them per architecture before evaluating it.
:func:`recalibrate` does it exactly (per-channel statistics of every batch combined in float64)
and without side effects: running buffers, parameters and training flags are never touched and
the model is never copied. :func:`use_statistics` swaps the recalibrated statistics into the
running buffers for evaluation (the first ``C`` entries, for layers of elastic width) and
restores them; it writes the unbiased variance, PyTorch's convention for ``running_var``.
The two batch-norm steps as functions, the cache and the variance convention: docs/nas.md.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import batch_norm
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "BNStatistics",
    "LayerStatistics",
    "StatisticsAccumulator",
    "StatisticsCache",
    "batch_norm_layers",
    "normalise_by_batch",
    "normalise_by_statistics",
    "recalibrate",
    "use_statistics",
]


@dataclass(frozen=True)
class LayerStatistics:
    """Exact statistics of one batch-norm layer's input over a whole recalibration set.

    ``mean`` and ``var`` (biased, divided by ``count``) have one entry per channel the layer
    received, which may be fewer than its ``num_features`` for elastic width.
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: int

    @property
    def channels(self) -> int:
        """Number of channels the statistics cover (a prefix of the layer's features)."""
        return int(self.mean.numel())

    @property
    def unbiased_var(self) -> torch.Tensor:
        """Variance divided by ``count - 1`` (PyTorch's ``running_var`` convention)."""
        if self.count < 2:
            return self.var.clone()
        return self.var * (self.count / (self.count - 1))


BNStatistics = dict[str, LayerStatistics]
"""Statistics per batch-norm layer, keyed by the layer's qualified name in the model."""


def batch_norm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every batch-norm layer of ``model`` (any ``_BatchNorm`` subclass) with its qualified name."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, _BatchNorm)]


class StatisticsAccumulator:
    """Exact per-channel mean and variance of a layer's inputs over several batches.

    Each batch contributes its mean, unbiased variance and element count per channel (as batch
    norm computes them, with float64 accumulation on the CPU); batches are combined in float64
    with the pairwise update of Chan et al., so the result is the statistics of the union.
    """

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.sum_squared_deviations: torch.Tensor | None = None
        self.count = 0

    def add(self, mean: torch.Tensor, unbiased_var: torch.Tensor, count: int) -> None:
        """Add one batch: its per-channel ``mean``, ``unbiased_var`` and elements per channel."""
        if self.mean is not None and self.mean.numel() != mean.numel():
            raise ValueError(
                f"a batch-norm layer received {mean.numel()} channels after {self.mean.numel()} "
                "in the same recalibration; recalibrate each architecture separately"
            )
        batch_mean = mean.detach().to(torch.float64)
        batch_squares = unbiased_var.detach().to(torch.float64) * (count - 1)
        if self.mean is None:
            self.mean, self.sum_squared_deviations, self.count = batch_mean, batch_squares, count
            return
        total = self.count + count
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.sum_squared_deviations = (self.sum_squared_deviations + batch_squares
                                       + delta * delta * (self.count * count / total))
        self.count = total

    def statistics(self, dtype: torch.dtype) -> LayerStatistics:
        """Mean and biased variance of everything added so far."""
        if self.mean is None or self.sum_squared_deviations is None:
            raise ValueError("no batch was added; run at least one batch through the layer")
        var = (self.sum_squared_deviations / self.count).clamp_min(0.0)
        return LayerStatistics(mean=self.mean.to(dtype), var=var.to(dtype), count=self.count)


def normalise_by_batch(layer: _BatchNorm, values: torch.Tensor,
                       accumulator: StatisticsAccumulator) -> torch.Tensor:
    """Batch norm of ``values`` by their own statistics (training-mode normalisation with the
    first ``C`` affine parameters of ``layer``), adding those statistics to ``accumulator``.

    The statistics come out of the normalisation itself (batch norm writes them into fresh
    buffers with momentum 1), so recording them costs no extra pass over ``values``.
    """
    if values.dim() < 2:
        raise ValueError(f"batch-norm input must be [N, C, ...], got shape {tuple(values.shape)}")
    channels = values.shape[1]
    if channels > layer.num_features:
        raise ValueError(
            f"batch-norm layer with {layer.num_features} features received {channels} channels"
        )
    count = values.numel() // channels
    if count < 2:
        raise ValueError(
            f"batch-norm statistics need more than one value per channel, got input shape "
            f"{tuple(values.shape)}; recalibrate with a larger batch"
        )
    mean = values.new_zeros(channels)
    unbiased_var = values.new_ones(channels)
    weight = layer.weight[:channels] if layer.weight is not None else None
    bias = layer.bias[:channels] if layer.bias is not None else None
    output = batch_norm(values, mean, unbiased_var, weight, bias, True, 1.0, layer.eps)
    accumulator.add(mean, unbiased_var, count)
    return output


def normalise_by_statistics(layer: _BatchNorm, values: torch.Tensor,
                            stats: LayerStatistics) -> torch.Tensor:
    """Evaluation-mode batch norm of ``values`` with recalibrated ``stats``: the same result as
    ``layer`` in eval mode inside :func:`use_statistics`, without touching its buffers."""
    channels = values.shape[1]
    if channels != stats.channels:
        raise ValueError(f"the statistics cover {stats.channels} channels but the input has "
                         f"{channels}; use the statistics of this architecture's layer")
    weight = layer.weight[:channels] if layer.weight is not None else None
    bias = layer.bias[:channels] if layer.bias is not None else None
    return batch_norm(values, stats.mean, stats.unbiased_var, weight, bias, False, 0.0, layer.eps)


def _batch_statistics_forward(layer: _BatchNorm, accumulator: StatisticsAccumulator) -> Callable:
    """A forward for ``layer`` that normalises by batch statistics and records them."""

    def forward(values: torch.Tensor) -> torch.Tensor:
        return normalise_by_batch(layer, values, accumulator)

    return forward


def recalibrate(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple | list],
    forward: Callable[[nn.Module, object], object] | None = None,
) -> BNStatistics:
    """Exact batch-norm statistics of ``model`` (one architecture) over ``batches``.

    Args:
        model: the network, typically a super-net already restricted to one architecture (via
            ``forward``). It is neither copied nor modified.
        batches: the recalibration set; each item is passed to ``forward``.
        forward: ``forward(model, batch)`` runs the model on one batch (e.g. selecting the
            architecture's path); by default ``model(batch)``, or ``model(batch[0])`` when the
            batch is a tuple or list (inputs, targets).

    Returns:
        For every batch-norm layer that ran, the mean and biased variance of its input over
        all batches and pixels. Layers that never ran are absent.

    During the passes each batch-norm layer normalises by the current batch's statistics, as in
    training; other layers run in whatever mode the model is in (call ``model.eval()`` first to
    switch dropout off). Runs under ``torch.no_grad``.
    """
    if forward is None:
        def forward(net: nn.Module, batch: object) -> object:
            return net(batch[0] if isinstance(batch, (tuple, list)) else batch)

    layers = batch_norm_layers(model)
    accumulators = {name: StatisticsAccumulator() for name, _ in layers}
    patched: list[_BatchNorm] = []
    try:
        for name, layer in layers:
            if "forward" in layer.__dict__:
                raise ValueError(
                    f"batch-norm layer {name!r} already has an instance-level forward; "
                    "recalibration cannot run inside another recalibration"
                )
            layer.forward = _batch_statistics_forward(layer, accumulators[name])
            patched.append(layer)
        ran = False
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
                ran = True
        if not ran:
            raise ValueError("recalibrate received no batches; pass at least one batch")
    finally:
        for layer in patched:
            del layer.forward
    return {
        name: accumulators[name].statistics(layer.running_mean.dtype if layer.running_mean is not None else torch.float32)
        for name, layer in layers
        if accumulators[name].count > 0
    }


@contextlib.contextmanager
def use_statistics(model: nn.Module, stats: BNStatistics) -> Iterator[nn.Module]:
    """Evaluate ``model`` with ``stats`` in its running buffers; restore them on exit.

    The first ``C`` entries of each layer's ``running_mean`` / ``running_var`` receive the
    recalibrated mean and unbiased variance; the rest and every layer absent from ``stats``
    keep their values. Put the model in eval mode to use them (training mode ignores running
    statistics).
    """
    layers = dict(batch_norm_layers(model))
    unknown = sorted(set(stats) - set(layers))
    if unknown:
        raise ValueError(
            f"statistics name layers the model does not have: {unknown[:5]}; recalibrate this "
            "model to get statistics that match it"
        )
    saved: list[tuple[_BatchNorm, torch.Tensor, torch.Tensor]] = []
    try:
        for name, layer_stats in stats.items():
            layer = layers[name]
            if layer.running_mean is None or layer.running_var is None:
                raise ValueError(
                    f"batch-norm layer {name!r} tracks no running statistics "
                    "(track_running_stats=False); build it with running buffers to use recalibration"
                )
            channels = layer_stats.channels
            if channels > layer.running_mean.numel():
                raise ValueError(
                    f"statistics of layer {name!r} cover {channels} channels but it has "
                    f"{layer.running_mean.numel()}"
                )
            saved.append((layer, layer.running_mean[:channels].clone(), layer.running_var[:channels].clone()))
            with torch.no_grad():
                layer.running_mean[:channels].copy_(layer_stats.mean)
                layer.running_var[:channels].copy_(layer_stats.unbiased_var)
        yield model
    finally:
        with torch.no_grad():
            for layer, mean, var in saved:
                layer.running_mean[: mean.numel()].copy_(mean)
                layer.running_var[: var.numel()].copy_(var)


class StatisticsCache:
    """Least-recently-used cache of recalibrated statistics keyed by an architecture key."""

    def __init__(self, max_entries: int = 128) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, BNStatistics] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> BNStatistics | None:
        """Statistics stored under ``key`` (marking them recently used), or None."""
        stats = self._entries.get(key)
        if stats is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return stats

    def put(self, key: Hashable, stats: BNStatistics) -> None:
        """Store ``stats`` under ``key``, evicting the least recently used entry when full."""
        self._entries[key] = stats
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], BNStatistics]) -> BNStatistics:
        """Cached statistics of ``key``, computing and storing them with ``compute()`` on a miss."""
        stats = self.get(key)
        if stats is None:
            stats = compute()
            self.put(key, stats)
        return stats

    def clear(self) -> None:
        """Forget every entry (e.g. after the super-net's weights changed)."""
        self._entries.clear()
