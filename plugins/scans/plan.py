"""The plan of a scans dataset: target spacing, normalisation, patch and batch size under a memory
budget, and the DynUNet topology, derived from the dataset's fingerprint by nnU-Net's rules
(Isensee2021).

A plan is what a study trains on; ``plan.json`` stores it and a study may fix or search some of
its fields (:meth:`Plan.with_overrides`). The rules and the memory model are derived in
docs/scans.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from numbers import Real
from typing import Any

import numpy as np
from rich.table import Table

from medtune.errors import MedtuneError
from medtune.plugins.scans.fingerprint import Fingerprint
from medtune.tables import format_number, verbatim

#: Version of ``plan.json``.
PLAN_FORMAT_VERSION = 1

#: Version of the preprocessing code, part of :meth:`Plan.key`: raise it when
#: :func:`medtune.plugins.scans.preprocess.preprocess` changes what it writes.
PREPROCESS_VERSION = 1

#: An axis is downsampled only while its feature map has at least this many voxels.
MIN_POOLED_EDGE = 8

#: The anisotropy rule of :func:`target_spacing`: an axis more than this many times coarser than
#: the others, with this many times fewer voxels, is a low-resolution axis.
ANISOTROPY_RATIO = 3.0

#: An axis whose spacing is at least this many times the finest one gets kernel 1 and no
#: downsampling until the finer axes have caught up.
SPACING_RATIO = 2.0

#: DynUNet needs an input block, one downsampling block and a bottleneck.
MIN_STAGES = 3

#: No patch axis is planned shorter than this (enough for :data:`MIN_STAGES`).
MIN_PATCH_EDGE = 16

#: Voxels of the initial patch before it is clipped to the median shape: 256^3 in 3D, 2048^2 in 2D.
INITIAL_PATCH_VOXELS = {3: 256**3, 2: 2048**2}

#: Filters of the first stage, doubled per stage up to :data:`MAX_FILTERS`; budgets under
#: :data:`SMALL_BUDGET_GB` (CPU, small GPUs) start at 16.
BASE_FILTERS = 32
SMALL_BUDGET_FILTERS = 16
SMALL_BUDGET_GB = 8.0
MAX_FILTERS = {3: 320, 2: 512}

#: A batch covers at most this share of the dataset's voxels; and is at least :data:`MIN_BATCH`.
MAX_DATASET_SHARE = 0.05
MIN_BATCH = 2

#: Default budget: this share of the CUDA device's memory, else :data:`CPU_BUDGET_GB`.
CUDA_BUDGET_SHARE = 0.8
CPU_BUDGET_GB = 4.0

#: Peak training memory over the activations that autograd keeps for the backward pass, measured
#: for DynUNet forward + backward on CPU (docs/scans.md, "Memory model").
ACTIVATION_PEAK_FACTOR = 1.3

#: Bytes per parameter in training: float32 weights, gradients and Adam's two moments.
BYTES_PER_PARAMETER = 16

#: Bytes per activation value (float32).
BYTES_PER_VALUE = 4

#: Normalisation schemes: ``ct`` clips to the foreground's percentiles then uses the dataset's
#: foreground mean and standard deviation; ``zscore`` uses each image's own mean and deviation.
SCHEMES = ("ct", "zscore")

#: Configurations a plan can be made for.
CONFIGURATIONS = ("3d", "2d")

#: Fields :meth:`Plan.with_overrides` accepts.
OVERRIDABLE = ("spacing", "patch_size", "batch_size", "normalisation")


class PlanError(MedtuneError, ValueError):
    """A plan cannot be made, read or overridden as asked."""


Topology = tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]


def dynunet_topology(spacing: Sequence[float], patch_size: Sequence[int]) -> Topology:
    """``(kernels, strides)`` of a DynUNet for patches of ``patch_size`` voxels at ``spacing``.

    One stage per entry; stage 0 has stride 1, each further stage halves the axes it downsamples.
    An axis is downsampled while its feature map has at least :data:`MIN_POOLED_EDGE` voxels and
    its current spacing is less than :data:`SPACING_RATIO` times the finest current spacing; its
    kernel is 1 until its spacing is within that ratio of the finest, then 3 for good; the
    bottleneck's kernel is 3 along every axis. The patch must be divisible by the product of the
    strides per axis (:func:`divisors`); this function does not check it.
    """
    spacing = [float(s) for s in spacing]
    size = [int(s) for s in patch_size]
    dims = len(size)
    kernel = [1] * dims
    kernels: list[tuple[int, ...]] = []
    strides: list[tuple[int, ...]] = [(1,) * dims]
    while True:
        finest = min(spacing)
        for axis in range(dims):
            if spacing[axis] / finest < SPACING_RATIO:
                kernel[axis] = 3
        large = [axis for axis in range(dims) if size[axis] >= MIN_POOLED_EDGE]
        if not large:
            break
        finest_large = min(spacing[axis] for axis in large)
        pooled = [axis for axis in large if spacing[axis] / finest_large < SPACING_RATIO]
        kernels.append(tuple(kernel))
        strides.append(tuple(2 if axis in pooled else 1 for axis in range(dims)))
        for axis in pooled:
            spacing[axis] *= 2
            size[axis] = math.ceil(size[axis] / 2)
    kernels.append((3,) * dims)
    return tuple(kernels), tuple(strides)


def divisors(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Per axis, the product of the strides: what a patch must be divisible by."""
    return tuple(int(v) for v in np.prod(np.asarray(strides, dtype=np.int64), axis=0))


def stage_filters(stages: int, base: int, dims: int) -> tuple[int, ...]:
    """Filters per stage: ``base`` doubled per stage, at most :data:`MAX_FILTERS` (320 in 3D,
    512 in 2D, as nnU-Net)."""
    return tuple(min(base * 2**stage, MAX_FILTERS[dims]) for stage in range(stages))


def _stage_sizes(patch: Sequence[int], strides: Sequence[Sequence[int]]) -> list[int]:
    """Voxels of one channel's feature map per stage (a stride-2 convolution with kernel 3 and
    padding 1 maps ``n`` voxels to ``ceil(n / 2)``)."""
    shape = [int(p) for p in patch]
    sizes = []
    for stride in strides:
        shape = [math.ceil(n / s) for n, s in zip(shape, stride)]
        sizes.append(math.prod(shape))
    return sizes


def dynunet_parameters(channels: int, classes: int, kernels: Sequence[Sequence[int]],
                       strides: Sequence[Sequence[int]], filters: Sequence[int]) -> int:
    """Number of parameters of :func:`medtune.plugins.scans.network.build_network`'s DynUNet:
    per stage two convolutions (no bias, as MONAI builds them) and two affine instance norms; per
    decoder level a transposed convolution without bias (kernel = stride) and the two
    convolutions after the concatenation; a 1x1x1 output convolution with bias."""
    def block(inputs: int, outputs: int, kernel: Sequence[int]) -> int:
        volume = math.prod(kernel)
        return volume * inputs * outputs + volume * outputs * outputs + 4 * outputs

    total = 0
    for stage, kernel in enumerate(kernels):
        total += block(channels if stage == 0 else filters[stage - 1], filters[stage], kernel)
    for level in range(len(filters) - 1):
        total += math.prod(strides[level + 1]) * filters[level + 1] * filters[level]
        total += block(2 * filters[level], filters[level], kernels[level + 1])
    return total + filters[0] * classes + classes


def activation_values(patch: Sequence[int], channels: int, classes: int,
                      strides: Sequence[Sequence[int]], filters: Sequence[int]) -> int:
    """Values (per sample) that autograd keeps for the backward pass of one training step of the
    DynUNet: the input; per encoder stage four ``F x S`` maps (two convolution outputs, two
    normalised maps that the in-place activations overwrite); per decoder level the
    concatenation ``2F x S`` and four ``F x S`` maps; the logits and the loss's maps (softmax,
    log-softmax, one-hot target: four ``K x S`` maps at full resolution)."""
    sizes = _stage_sizes(patch, strides)
    total = channels * sizes[0]
    total += sum(4 * f * s for f, s in zip(filters, sizes))
    total += sum(6 * f * s for f, s in zip(filters[:-1], sizes[:-1]))
    return total + 4 * classes * sizes[0]


def estimate_memory_gb(patch: Sequence[int], batch: int, channels: int, classes: int,
                       kernels: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                       filters: Sequence[int]) -> float:
    """Training memory of the DynUNet in GB (2^30 bytes), float32: the activations kept for the
    backward pass (:func:`activation_values`, times ``batch``) times
    :data:`ACTIVATION_PEAK_FACTOR` (the gradients that exist at the peak of the backward pass),
    plus :data:`BYTES_PER_PARAMETER` bytes per parameter (weights, gradients, Adam's moments).
    Not counted: the CUDA context and library workspaces (the default budget leaves 20 % of the
    device for them)."""
    activations = activation_values(patch, channels, classes, strides, filters) * batch * BYTES_PER_VALUE
    parameters = dynunet_parameters(channels, classes, kernels, strides, filters) * BYTES_PER_PARAMETER
    return (ACTIVATION_PEAK_FACTOR * activations + parameters) / 2**30


def default_memory_budget_gb() -> float:
    """:data:`CUDA_BUDGET_SHARE` of the first CUDA device's memory when there is one, else
    :data:`CPU_BUDGET_GB`."""
    import torch

    if torch.cuda.is_available():
        return CUDA_BUDGET_SHARE * torch.cuda.get_device_properties(0).total_memory / 2**30
    return CPU_BUDGET_GB


@dataclass(frozen=True)
class Plan:
    """How a dataset is preprocessed and which network trains on it (``plan.json``).

    ``spacing`` has three values (x, y, z of the files' voxel order); in the ``2d`` configuration
    the network sees slices across :attr:`slice_axis` (the coarsest axis), ``patch_size`` has the
    two in-plane values and preprocessing keeps each case's own spacing along the slice axis.
    ``normalisation`` has one ``{"scheme", "clip", "mean", "std"}`` per channel. ``labels`` maps
    names to the values in the label files; the network's class ``k`` is the ``k``-th label by
    value. ``kernels``, ``strides`` and ``filters`` follow from ``spacing`` and ``patch_size``.
    """

    dataset: str
    channels: tuple[str, ...]
    labels: dict[str, int]
    configuration: str
    spacing: tuple[float, ...]
    normalisation: tuple[dict, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    kernels: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    filters: tuple[int, ...]
    memory_budget_gb: float
    estimated_memory_gb: float
    median_shape: tuple[int, int, int]

    @property
    def slice_axis(self) -> int | None:
        """The axis the ``2d`` configuration slices along (the coarsest; the last of equals),
        ``None`` in ``3d``."""
        if self.configuration != "2d":
            return None
        coarsest = max(self.spacing)
        return max(axis for axis, s in enumerate(self.spacing) if s == coarsest)

    @property
    def patch_axes(self) -> tuple[int, ...]:
        """The volume axes that ``patch_size`` runs along: all three in ``3d``, the in-plane two
        in ``2d``."""
        return tuple(axis for axis in range(3) if axis != self.slice_axis)

    def to_json(self) -> dict:
        """The plan as ``plan.json`` stores it (lists for tuples, ``format_version`` added)."""
        data = json.loads(json.dumps(asdict(self)))
        return {"format_version": PLAN_FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        """A plan from :meth:`to_json`'s dictionary; :class:`PlanError` naming a missing or
        unknown field or an unsupported version, then the checks of :meth:`with_overrides`."""
        if not isinstance(data, dict):
            raise PlanError("plan.json: expected a JSON object; write it again with `medtune plan DATA`")
        version = data.get("format_version")
        if version != PLAN_FORMAT_VERSION:
            raise PlanError(f"plan.json: format_version {version!r} is not supported (expected "
                            f"{PLAN_FORMAT_VERSION}); make the plan again with `medtune plan DATA`")
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        unknown = sorted(set(data) - set(names) - {"format_version"})
        if missing or unknown:
            raise PlanError(f"plan.json: missing fields {missing}, unknown fields {unknown}; make the "
                            "plan again with `medtune plan DATA`")
        try:
            plan = cls(
                dataset=str(data["dataset"]),
                channels=tuple(str(c) for c in data["channels"]),
                labels={str(k): int(v) for k, v in data["labels"].items()},
                configuration=str(data["configuration"]),
                spacing=tuple(float(s) for s in data["spacing"]),
                normalisation=tuple(dict(n) for n in data["normalisation"]),
                patch_size=tuple(int(p) for p in data["patch_size"]),
                batch_size=int(data["batch_size"]),
                kernels=tuple(tuple(int(k) for k in kernel) for kernel in data["kernels"]),
                strides=tuple(tuple(int(s) for s in stride) for stride in data["strides"]),
                filters=tuple(int(f) for f in data["filters"]),
                memory_budget_gb=float(data["memory_budget_gb"]),
                estimated_memory_gb=float(data["estimated_memory_gb"]),
                median_shape=tuple(int(m) for m in data["median_shape"]),
            )
        except (TypeError, ValueError, AttributeError) as error:
            raise PlanError(f"plan.json: a field has the wrong type ({error}); make the plan again "
                            "with `medtune plan DATA`") from None
        if plan.configuration not in CONFIGURATIONS:
            raise PlanError(f"plan.json: configuration {plan.configuration!r} is not one of "
                            f"{list(CONFIGURATIONS)}")
        try:
            checked = plan.with_overrides(spacing=plan.spacing, patch_size=plan.patch_size,
                                          batch_size=plan.batch_size, normalisation=plan.normalisation)
        except PlanError as error:
            raise PlanError(f"plan.json: {error}") from None
        if (checked.kernels, checked.strides, checked.filters) != (plan.kernels, plan.strides, plan.filters):
            raise PlanError("plan.json: kernels, strides or filters do not follow from spacing and "
                            "patch_size; change those through patch_size and spacing, or make the "
                            "plan again with `medtune plan DATA`")
        return plan

    def key(self) -> str:
        """A stable hash of what preprocessing depends on (configuration, channels, label
        values, spacing, normalisation, :data:`PREPROCESS_VERSION`): the cache folder's name."""
        content = {
            "version": PREPROCESS_VERSION,
            "configuration": self.configuration,
            "channels": list(self.channels),
            "labels": sorted(self.labels.values()),
            "spacing": [round(s, 6) for s in self.spacing],
            "normalisation": list(self.normalisation),
        }
        text = json.dumps(content, sort_keys=True)
        return f"{self.configuration}_{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def with_overrides(self, **overrides: Any) -> Plan:
        """This plan with some of :data:`OVERRIDABLE` fields replaced (what a study fixes or
        searches). A new ``spacing`` rescales ``median_shape``; ``kernels``, ``strides`` and
        ``filters`` are derived again from ``spacing`` and ``patch_size`` (the first stage keeps
        its filters), and the memory estimate follows.

        Raises :class:`PlanError` naming the field: unknown or derived names, a spacing that is
        not three positive numbers, a patch with the wrong number of axes, too small for
        :data:`MIN_STAGES` stages or not divisible by the strides' product, a batch size below 1,
        a normalisation that does not fit the channels.
        """
        for name in overrides:
            if name not in OVERRIDABLE:
                known = [f.name for f in fields(self)]
                what = ("is derived from spacing and patch_size" if name in known
                        else f"is not a plan field (fields: {', '.join(known)})")
                raise PlanError(f"plan override {name!r} {what}; override one of "
                                f"{', '.join(OVERRIDABLE)}")
        spacing = _checked_spacing(overrides.get("spacing", self.spacing))
        patch = _checked_patch(overrides.get("patch_size", self.patch_size), len(self.patch_axes))
        batch = overrides.get("batch_size", self.batch_size)
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise PlanError(f"plan override 'batch_size' must be a positive integer, got {batch!r}")
        normalisation = _checked_normalisation(overrides.get("normalisation", self.normalisation),
                                               self.channels)
        resampled = self.patch_axes  # in 2d the slice axis keeps each case's own spacing
        median = tuple(max(1, round(m * old / new)) if axis in resampled else m
                       for axis, (m, old, new) in enumerate(zip(self.median_shape, self.spacing, spacing)))
        plan = replace(self, spacing=spacing, patch_size=patch, batch_size=int(batch),
                       normalisation=normalisation, median_shape=median)
        patch_spacing = [spacing[axis] for axis in plan.patch_axes]
        kernels, strides = dynunet_topology(patch_spacing, patch)
        if len(strides) < MIN_STAGES:
            raise PlanError(f"plan override 'patch_size' {list(patch)} is too small for a U-Net of "
                            f"{MIN_STAGES} stages; give one axis at least {MIN_PATCH_EDGE} voxels")
        need = divisors(strides)
        for axis, (size, divisor) in enumerate(zip(patch, need)):
            if size % divisor:
                lower, upper = size // divisor * divisor, -(-size // divisor) * divisor
                sizes = f"{lower} or {upper}" if lower else str(upper)
                raise PlanError(f"plan override 'patch_size' {list(patch)}: axis {axis} ({size}) is not "
                                f"divisible by {divisor}, the product of the strides along it; use "
                                f"{sizes} (or change spacing)")
        filters = stage_filters(len(strides), self.filters[0], len(patch))
        memory = estimate_memory_gb(patch, plan.batch_size, len(self.channels), len(self.labels),
                                    kernels, strides, filters)
        return replace(plan, kernels=kernels, strides=strides, filters=filters, estimated_memory_gb=memory)


def _checked_spacing(spacing: Any) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise PlanError(f"plan override 'spacing' must be three positive numbers (mm), got {spacing!r}")
    return values


def _checked_patch(patch: Any, dims: int) -> tuple[int, ...]:
    try:
        values = tuple(patch)
    except TypeError:
        values = ()
    if (len(values) != dims
            or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p > 0 for p in values)):
        raise PlanError(f"plan override 'patch_size' must be {dims} positive integers for this "
                        f"configuration, got {patch!r}")
    return tuple(int(p) for p in values)


def _checked_normalisation(normalisation: Any, channels: Sequence[str]) -> tuple[dict, ...]:
    entries = tuple(normalisation) if isinstance(normalisation, (list, tuple)) else ()
    if len(entries) != len(channels):
        raise PlanError(f"plan override 'normalisation' needs one entry per channel ({len(channels)}: "
                        f"{', '.join(channels)}), got {normalisation!r}")
    checked = []
    for channel, entry in zip(channels, entries):
        if not isinstance(entry, dict) or entry.get("scheme") not in SCHEMES:
            raise PlanError(f"plan override 'normalisation' of channel {channel!r}: expected "
                            f"{{\"scheme\": one of {list(SCHEMES)}, ...}}, got {entry!r}")
        if entry["scheme"] == "ct":
            clip, mean, std = entry.get("clip"), entry.get("mean"), entry.get("std")
            numbers = (clip[0], clip[1], mean, std) if isinstance(clip, (list, tuple)) and len(clip) == 2 else ()
            valid = (len(numbers) == 4 and all(isinstance(v, Real) and math.isfinite(v) for v in numbers)
                     and clip[0] < clip[1] and std > 0)
            if not valid:
                raise PlanError(f"plan override 'normalisation' of channel {channel!r}: the ct scheme "
                                f"needs clip [low, high] with low < high, a mean and a positive std, "
                                f"got {entry!r}")
            checked.append({"scheme": "ct", "clip": [float(clip[0]), float(clip[1])],
                            "mean": float(mean), "std": float(std)})
        else:
            checked.append({"scheme": "zscore", "clip": None, "mean": None, "std": None})
    return tuple(checked)


def make_plan(fp: Fingerprint, configuration: str = "3d", memory_budget_gb: float | None = None) -> Plan:
    """The plan of the dataset of ``fp`` for ``configuration`` (``"3d"`` or ``"2d"``).

    Target spacing: :func:`target_spacing`. Normalisation: a channel named ``CT`` is clipped to
    its foreground's 0.5 / 99.5 percentiles and standardised with the foreground's mean and
    standard deviation, every other channel is standardised per image. Patch: in the proportions
    of an isotropic cube in mm, at most the median resampled shape, then shrunk (the axis largest
    relative to the median shape first, keeping it divisible by the strides' product) until two
    patches fit ``memory_budget_gb`` (:func:`estimate_memory_gb`). Batch: grown while it fits, at
    most :data:`MAX_DATASET_SHARE` of the dataset's voxels, at least :data:`MIN_BATCH`. Topology:
    :func:`dynunet_topology`; filters from 32 (16 under :data:`SMALL_BUDGET_GB`), doubling.
    The derivation: docs/scans.md.

    Args:
        fp: the dataset's fingerprint.
        configuration: ``"3d"`` (3D patches) or ``"2d"`` (slices across the coarsest axis).
        memory_budget_gb: training memory allowed, in GB (2^30 bytes); ``None`` for
            :func:`default_memory_budget_gb`.

    Raises:
        PlanError: an unknown configuration, a budget that is not positive, a fingerprint
            without cases, or a budget too small for the smallest patch at batch size 2.
    """
    if configuration not in CONFIGURATIONS:
        raise PlanError(f"configuration {configuration!r} is not one of {list(CONFIGURATIONS)}")
    budget = default_memory_budget_gb() if memory_budget_gb is None else float(memory_budget_gb)
    if not (math.isfinite(budget) and budget > 0):
        raise PlanError(f"memory budget must be a positive number of GB, got {memory_budget_gb!r}")
    if not fp.cases:
        raise PlanError(f"dataset {fp.dataset!r}: the fingerprint has no cases; add training cases")
    spacing = target_spacing(fp)
    dims = 3 if configuration == "3d" else 2
    coarsest = max(spacing)
    slice_axis = None if dims == 3 else max(a for a, s in enumerate(spacing) if s == coarsest)
    axes = tuple(a for a in range(3) if a != slice_axis)
    shapes = [tuple(round(n * s / t) if a in axes else n
                    for a, (n, s, t) in enumerate(zip(shape, case_spacing, spacing)))
              for shape, case_spacing in zip(fp.shapes, fp.spacings)]
    median = tuple(max(1, int(round(m))) for m in np.median(np.asarray(shapes), axis=0))
    dataset_voxels = float(sum(math.prod(shape) for shape in shapes))
    classes, channels = len(fp.labels), len(fp.channels)
    base = SMALL_BUDGET_FILTERS if budget < SMALL_BUDGET_GB else BASE_FILTERS
    patch_spacing = [spacing[a] for a in axes]
    patch_median = [median[a] for a in axes]

    def memory(patch: Sequence[int], batch: int) -> float:
        kernels, strides = dynunet_topology(patch_spacing, patch)
        return estimate_memory_gb(patch, batch, channels, classes, kernels, strides,
                                  stage_filters(len(strides), base, dims))

    patch = _initial_patch(patch_spacing, patch_median)
    while memory(patch, MIN_BATCH) > budget:
        ratios = [(p / m, p) for p, m in zip(patch, patch_median)]
        for axis in sorted(range(dims), key=lambda a: ratios[a], reverse=True):
            smaller = _shrunk(patch_spacing, patch, axis)
            if smaller is not None:
                patch = smaller
                break
        else:
            raise PlanError(f"dataset {fp.dataset!r}: even a patch of {list(patch)} voxels needs "
                            f"{memory(patch, MIN_BATCH):.2f} GB at batch size {MIN_BATCH}, over the "
                            f"budget of {budget:.2f} GB; give a larger budget (--budget)")
    cap = max(MIN_BATCH, round(MAX_DATASET_SHARE * dataset_voxels / math.prod(patch)))
    batch = MIN_BATCH
    while batch < cap and memory(patch, batch + 1) <= budget:
        batch += 1
    kernels, strides = dynunet_topology(patch_spacing, patch)
    return Plan(
        dataset=fp.dataset,
        channels=tuple(fp.channels),
        labels=dict(sorted(fp.labels.items(), key=lambda item: item[1])),
        configuration=configuration,
        spacing=spacing,
        normalisation=tuple(_normalisation(name, intensity)
                            for name, intensity in zip(fp.channels, fp.intensities)),
        patch_size=tuple(patch),
        batch_size=batch,
        kernels=kernels,
        strides=strides,
        filters=stage_filters(len(strides), base, dims),
        memory_budget_gb=budget,
        estimated_memory_gb=memory(patch, batch),
        median_shape=median,
    )


def target_spacing(fp: Fingerprint) -> tuple[float, float, float]:
    """Per axis the median of the cases' spacings; but where one axis is more than
    :data:`ANISOTROPY_RATIO` times coarser than the others and has, in the median, more than that
    ratio fewer voxels, that axis takes the 10th percentile of its spacings (not finer than the
    other axes), so that few thick slices are not interpolated into many (Isensee2021)."""
    spacings = np.asarray(fp.spacings, dtype=np.float64)
    target = np.median(spacings, axis=0)
    sizes = np.median(np.asarray(fp.shapes, dtype=np.float64), axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    anisotropic_spacing = target[worst] > ANISOTROPY_RATIO * max(target[others])
    anisotropic_voxels = sizes[worst] * ANISOTROPY_RATIO < min(sizes[others])
    if anisotropic_spacing and anisotropic_voxels:
        target[worst] = max(float(np.percentile(spacings[:, worst], 10)), float(max(target[others])))
    return tuple(float(s) for s in target)


def _normalisation(channel: str, intensity: Any) -> dict:
    if channel.strip().upper() == "CT":
        return {"scheme": "ct", "clip": [intensity.percentile_00_5, intensity.percentile_99_5],
                "mean": intensity.mean, "std": max(intensity.std, 1e-8)}
    return {"scheme": "zscore", "clip": None, "mean": None, "std": None}


def _padded(spacing: Sequence[float], patch: Sequence[int]) -> tuple[int, ...]:
    """``patch`` rounded up to the strides' product of its own topology (which that does not
    change: every stage's feature map keeps its size)."""
    _, strides = dynunet_topology(spacing, patch)
    return tuple(-(-p // d) * d for p, d in zip(patch, divisors(strides)))


def _initial_patch(spacing: Sequence[float], median: Sequence[int]) -> tuple[int, ...]:
    """The proportions of a cube in mm with :data:`INITIAL_PATCH_VOXELS` voxels, each axis at
    most the median shape; the finest axes raised to :data:`MIN_PATCH_EDGE` when the network
    would have fewer than :data:`MIN_STAGES` stages; padded to divisibility."""
    dims = len(spacing)
    inverse = 1.0 / np.asarray(spacing, dtype=np.float64)
    scale = (INITIAL_PATCH_VOXELS[dims] / np.prod(inverse)) ** (1.0 / dims)
    patch = [max(1, min(int(round(v)), m)) for v, m in zip(inverse * scale, median)]
    if len(dynunet_topology(spacing, patch)[1]) < MIN_STAGES:
        finest = min(spacing)
        patch = [max(p, MIN_PATCH_EDGE) if s / finest < SPACING_RATIO else p for p, s in zip(patch, spacing)]
    return _padded(spacing, patch)


def _shrunk(spacing: Sequence[float], patch: Sequence[int], axis: int) -> tuple[int, ...] | None:
    """``patch`` with ``axis`` one step shorter, or ``None`` when that axis cannot shrink (under
    :data:`MIN_POOLED_EDGE`, or the network would lose its :data:`MIN_STAGES` stages). The step
    is the strides' product of the shorter patch's topology, so that no divisible size is
    skipped (subtracting 64 from 256 would skip 224)."""
    trial = list(patch)
    trial[axis] -= divisors(dynunet_topology(spacing, patch)[1])[axis]
    if trial[axis] < MIN_POOLED_EDGE:
        return None
    trial[axis] = patch[axis] - divisors(dynunet_topology(spacing, trial)[1])[axis]
    if trial[axis] < MIN_POOLED_EDGE:
        return None
    smaller = _padded(spacing, trial)
    if len(dynunet_topology(spacing, smaller)[1]) < MIN_STAGES or smaller[axis] >= patch[axis]:
        return None
    return smaller


def plan_table(plan: Plan, fingerprint: Fingerprint) -> Table:
    """The plan as the ``plan`` command prints it: what the fingerprint found and what the plan
    chose, one row each."""
    def numbers(values: Sequence[Any]) -> str:
        return " x ".join(format_number(float(v) if isinstance(v, float) else v, 3) for v in values)

    table = Table(title=f"plan of {verbatim(plan.dataset)} ({plan.configuration})")
    table.add_column("")
    table.add_column("value")
    table.add_row("cases", str(len(fingerprint.cases)))
    table.add_row("channels", verbatim(", ".join(plan.channels)))
    table.add_row("labels", verbatim(", ".join(f"{name}={value}" for name, value in plan.labels.items())))
    frequencies = fingerprint.class_frequencies
    table.add_row("voxel shares", verbatim(", ".join(f"{name} {format_number(100 * share, 3)} %"
                                                     for name, share in frequencies.items())))
    for name, structure in fingerprint.smallest_structures.items():
        shown = ("absent" if structure is None else
                 f"{structure.voxels} voxels, {format_number(structure.volume_mm3, 3)} mm³ ({structure.case})")
        table.add_row(verbatim(f"smallest {name}"), verbatim(shown))
    table.add_row("median spacing (mm)", numbers(fingerprint.median_spacing))
    table.add_row("target spacing (mm)", numbers(plan.spacing))
    table.add_row("median shape, resampled", numbers(plan.median_shape))
    for channel, scheme in zip(plan.channels, plan.normalisation):
        if scheme["scheme"] == "ct":
            low, high = scheme["clip"]
            shown = (f"clip to [{format_number(low, 4)}, {format_number(high, 4)}], then "
                     f"(x - {format_number(scheme['mean'], 4)}) / {format_number(scheme['std'], 4)}")
        else:
            shown = "z-score per image"
        table.add_row(verbatim(f"normalisation {channel}"), shown)
    if plan.slice_axis is not None:
        table.add_row("slices across axis", str(plan.slice_axis))
    table.add_row("patch size", numbers(plan.patch_size))
    table.add_row("batch size", str(plan.batch_size))
    table.add_row("strides", ", ".join("x".join(map(str, s)) for s in plan.strides))
    table.add_row("kernels", ", ".join("x".join(map(str, k)) for k in plan.kernels))
    table.add_row("filters", ", ".join(map(str, plan.filters)))
    table.add_row("memory (estimate / budget)",
                  f"{plan.estimated_memory_gb:.2f} GB / {plan.memory_budget_gb:.2f} GB")
    return table
