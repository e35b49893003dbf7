"""The fingerprint of a scans dataset: what planning needs to know about it (Isensee2021's
"dataset fingerprint"): each case's spacing and shape, each channel's foreground intensities,
how often each label occurs and its smallest connected structure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from scipy import ndimage

from medtune.errors import MedtuneError
from medtune.plugins.scans.layout import ScanDataset, Volume, check_foreground, read_case

#: Foreground voxels sampled per case for the intensity statistics (as nnU-Net).
SAMPLES_PER_CASE = 10_000

#: Version of the fingerprint's JSON form.
FINGERPRINT_FORMAT_VERSION = 1


class FingerprintError(MedtuneError, ValueError):
    """A fingerprint cannot be read back from its JSON form."""


@dataclass(frozen=True)
class ChannelIntensity:
    """Statistics of one channel's voxels under the foreground (label > 0), from a sample of
    at most :data:`SAMPLES_PER_CASE` voxels per case."""

    mean: float
    std: float
    median: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class Structure:
    """The smallest connected component (6-connected) of one label over the dataset: its size
    in voxels and in mm^3 (the smallest by mm^3), and the case it is in."""

    voxels: int
    volume_mm3: float
    case: str


@dataclass(frozen=True)
class Fingerprint:
    """What planning knows about a dataset.

    ``spacings`` and ``shapes`` are per case (the order of ``cases``); ``intensities`` per
    channel; ``label_voxels`` counts every label's voxels over all cases (background included);
    ``smallest_structures`` has the foreground labels, ``None`` for one that never occurs.
    """

    dataset: str
    channels: tuple[str, ...]
    labels: dict[str, int]
    cases: tuple[str, ...]
    spacings: tuple[tuple[float, float, float], ...]
    shapes: tuple[tuple[int, int, int], ...]
    intensities: tuple[ChannelIntensity, ...]
    label_voxels: dict[str, int]
    smallest_structures: dict[str, Structure | None]

    @property
    def class_frequencies(self) -> dict[str, float]:
        """Each label's share of all voxels."""
        total = sum(self.label_voxels.values())
        return {name: count / total for name, count in self.label_voxels.items()}

    @property
    def median_spacing(self) -> tuple[float, float, float]:
        """Per axis, the median of the cases' spacings."""
        return tuple(float(s) for s in np.median(np.asarray(self.spacings), axis=0))

    def to_json(self) -> dict:
        """The fingerprint as a JSON-ready dictionary."""
        return {"format_version": FINGERPRINT_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> Fingerprint:
        """The fingerprint of :meth:`to_json`'s dictionary; :class:`FingerprintError` when it is
        not one."""
        if not isinstance(data, dict) or data.get("format_version") != FINGERPRINT_FORMAT_VERSION:
            raise FingerprintError("fingerprint: not a fingerprint of format version "
                                   f"{FINGERPRINT_FORMAT_VERSION}; compute it again from the dataset")
        try:
            return cls(
                dataset=str(data["dataset"]),
                channels=tuple(str(c) for c in data["channels"]),
                labels={str(k): int(v) for k, v in data["labels"].items()},
                cases=tuple(str(c) for c in data["cases"]),
                spacings=tuple(tuple(float(s) for s in spacing) for spacing in data["spacings"]),
                shapes=tuple(tuple(int(s) for s in shape) for shape in data["shapes"]),
                intensities=tuple(ChannelIntensity(**entry) for entry in data["intensities"]),
                label_voxels={str(k): int(v) for k, v in data["label_voxels"].items()},
                smallest_structures={str(k): None if v is None else Structure(**v)
                                     for k, v in data["smallest_structures"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise FingerprintError(f"fingerprint: a field is missing or has the wrong type ({error}); "
                                   "compute it again from the dataset") from None


def fingerprint(dataset: ScanDataset, progress: bool = False) -> Fingerprint:
    """The fingerprint of ``dataset``'s training cases (each read once).

    Args:
        dataset: the dataset (:func:`medtune.plugins.scans.layout.load_dataset`).
        progress: show a progress bar.

    Raises:
        ScanDataError: a case cannot be read (naming it), or no label map holds foreground.
    """
    columns = (TextColumn("fingerprint"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("cases", total=len(dataset.training))

        def cases() -> Iterable[tuple[str, Volume, np.ndarray]]:
            for case in dataset.training:
                volume, label = read_case(case, dataset)
                yield case.name, volume, label
                bar.advance(task)

        result = summarise(dataset.name, dataset.channels, dataset.labels, cases())
    check_foreground(dataset, result.label_voxels)
    return result


def summarise(name: str, channels: tuple[str, ...], labels: dict[str, int],
              cases: Iterable[tuple[str, Volume, np.ndarray]]) -> Fingerprint:
    """The fingerprint of ``cases``, ``(case name, volume, int label map)`` in a fixed order;
    the voxel sample of each case is drawn from a generator seeded by the case's position, so
    the result is deterministic. :func:`fingerprint` reads the cases of a dataset into it."""
    names, spacings, shapes, samples = [], [], [], []
    counts = {label: 0 for label in labels}
    smallest: dict[str, Structure | None] = {label: None for label, value in labels.items() if value != 0}
    for index, (case, volume, label) in enumerate(cases):
        spacing = tuple(float(s) for s in volume.spacing)
        names.append(case)
        spacings.append(spacing)
        shapes.append(tuple(int(s) for s in volume.shape))
        foreground = np.flatnonzero(label > 0)
        rng = np.random.default_rng(index)
        if foreground.size > SAMPLES_PER_CASE:
            foreground = rng.choice(foreground, SAMPLES_PER_CASE, replace=False)
        samples.append(volume.array.reshape(volume.array.shape[0], -1)[:, foreground])
        voxel_mm3 = math.prod(spacing)
        for label_name, value in labels.items():
            mask = label == value
            counts[label_name] += int(mask.sum())
            if value == 0 or not mask.any():
                continue
            components, _ = ndimage.label(mask)
            size = int(np.bincount(components.ravel())[1:].min())
            known = smallest[label_name]
            if known is None or size * voxel_mm3 < known.volume_mm3:
                smallest[label_name] = Structure(size, size * voxel_mm3, case)
    sample = np.concatenate(samples, axis=1) if samples else np.zeros((len(channels), 0), np.float32)
    intensities = tuple(_intensity(sample[channel]) for channel in range(len(channels)))
    return Fingerprint(name, tuple(channels), dict(labels), tuple(names), tuple(spacings), tuple(shapes),
                       intensities, counts, smallest)


def _intensity(values: np.ndarray) -> ChannelIntensity:
    if values.size == 0:
        return ChannelIntensity(math.nan, math.nan, math.nan, math.nan, math.nan)
    values = values.astype(np.float64)
    low, median, high = np.percentile(values, [0.5, 50.0, 99.5])
    return ChannelIntensity(float(values.mean()), float(values.std()), float(median), float(low), float(high))
