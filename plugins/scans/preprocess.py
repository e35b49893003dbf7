"""Preprocessing of scans as a plan says (normalise, then resample to the target spacing), the
on-disk cache of preprocessed cases keyed by the plan, and the way back from the plan's grid to
a case's own geometry (:func:`restore`)."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medtune.errors import MedtuneError
from medtune.plugins.scans.layout import ScanCase, ScanDataset, Volume, read_case
from medtune.plugins.scans.plan import Plan
from medtune.study.files import replacing

#: Floor of a standard deviation that normalisation divides by (a constant image stays finite).
MIN_STD = 1e-8


class PreprocessError(MedtuneError, ValueError):
    """A volume, label map or probability map does not fit the plan."""


def target_shape(shape: Sequence[int], spacing: Sequence[float], plan: Plan) -> tuple[int, int, int]:
    """The shape of a volume of ``shape`` voxels at ``spacing`` mm once resampled to the plan:
    ``round(shape * spacing / plan.spacing)`` per axis (at least 1), except along the slice axis
    of a ``2d`` plan, which keeps the volume's own slices."""
    return tuple(
        int(n) if axis == plan.slice_axis else max(1, int(round(n * s / t)))
        for axis, (n, s, t) in enumerate(zip(shape, spacing, plan.spacing))
    )


def normalise(array: np.ndarray, plan: Plan) -> np.ndarray:
    """``array`` float32 [C, X, Y, Z] normalised channel by channel as ``plan.normalisation``
    says: ``ct`` clips to ``clip`` then subtracts ``mean`` and divides by ``std``; ``zscore``
    uses the channel's own mean and standard deviation."""
    if array.shape[0] != len(plan.channels):
        raise PreprocessError(f"the image has {array.shape[0]} channels but the plan of "
                              f"{plan.dataset!r} expects {len(plan.channels)} ({', '.join(plan.channels)}); "
                              "give the channels the dataset was planned with")
    result = np.empty(array.shape, dtype=np.float32)
    for channel, scheme in enumerate(plan.normalisation):
        values = array[channel].astype(np.float32, copy=False)
        if scheme["scheme"] == "ct":
            low, high = scheme["clip"]
            mean, std = scheme["mean"], scheme["std"]
            values = np.clip(values, low, high)
        else:
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        result[channel] = (values - mean) / max(std, MIN_STD)
    return result


def preprocess(volume: Volume, label: np.ndarray | None, plan: Plan) -> tuple[np.ndarray, np.ndarray | None]:
    """``volume`` (and its ``label``) on the plan's grid.

    The image is normalised (:func:`normalise`, on the original grid as nnU-Net does) and
    resampled linearly (trilinear, ``align_corners=False``) to :func:`target_shape`; the label
    is mapped to class indices (the ``k``-th label of the plan by value is class ``k``) and
    resampled by nearest neighbour on the same voxel-centre convention (``nearest-exact``).

    Returns:
        image float32 [C, *target shape] and label int16 [*target shape] (``None`` without one).

    Raises:
        PreprocessError: the number of channels differs from the plan's, the label's shape from
            the image's, or the label holds a value the plan does not list.
    """
    shape = target_shape(volume.shape, volume.spacing, plan)
    image = _resampled(torch.from_numpy(normalise(volume.array, plan)), shape, "trilinear").numpy()
    if label is None:
        return image, None
    if tuple(label.shape) != tuple(volume.shape):
        raise PreprocessError(f"the label map has shape {tuple(label.shape)} but the image "
                              f"{tuple(volume.shape)}; give the label map of this image")
    classes = _class_indices(label, plan)
    resampled = _resampled(torch.from_numpy(classes.astype(np.float32))[None], shape, "nearest-exact")
    return image, resampled[0].numpy().astype(np.int16)


def restore(probabilities: np.ndarray, volume: Volume, plan: Plan) -> np.ndarray:
    """The label map of ``volume`` from class ``probabilities`` [K, *plan-space shape]: each
    class resampled linearly (trilinear, ``align_corners=False``) to ``volume.shape``, the
    most probable class per voxel, as its label value (int16 [X, Y, Z]). Classes are resampled
    one at a time, so memory stays at two volumes of the input's size whatever K.

    Raises:
        PreprocessError: ``probabilities`` is not 4D with one map per label of the plan.
    """
    values = np.asarray(sorted(plan.labels.values()), dtype=np.int16)
    if probabilities.ndim != 4 or probabilities.shape[0] != len(values):
        raise PreprocessError(f"expected probabilities [K={len(values)}, X, Y, Z] (one map per label "
                              f"of {plan.dataset!r}), got shape {tuple(probabilities.shape)}")
    maps = torch.as_tensor(np.ascontiguousarray(probabilities), dtype=torch.float32)
    best = index = None
    for k in range(maps.shape[0]):
        current = _resampled(maps[k:k + 1], volume.shape, "trilinear")[0]
        if best is None:
            best, index = current, torch.zeros(current.shape, dtype=torch.int64)
        else:
            better = current > best
            best = torch.where(better, current, best)
            index[better] = k
    return values[index.numpy()]


def _resampled(array: torch.Tensor, shape: Sequence[int], mode: str) -> torch.Tensor:
    """``array`` [C, X, Y, Z] resampled to ``shape`` (unchanged when it has that shape)."""
    if tuple(array.shape[1:]) == tuple(shape):
        return array
    align = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(array[None], size=tuple(int(n) for n in shape), mode=mode, **align)[0]


def _class_indices(label: np.ndarray, plan: Plan) -> np.ndarray:
    values = np.asarray(sorted(plan.labels.values()), dtype=np.int64)
    present = np.unique(label)
    unknown = present[~np.isin(present, values)]
    if unknown.size:
        raise PreprocessError(f"the label map holds values {unknown.tolist()} that the plan of "
                              f"{plan.dataset!r} does not list ({values.tolist()}); fix the label map "
                              "or the labels of dataset.json and plan again")
    return np.searchsorted(values, label).astype(np.int16)


class PreprocessedCache:
    """Preprocessed cases on disk: ``folder / plan.key() / CASE.npz``.

    A case is computed (:func:`read_case`, :func:`preprocess`) and stored on its first
    :meth:`get`, read back afterwards. A file is written to a temporary name and renamed, so
    concurrent readers and writers (data-loader workers, trials) see whole files only. A stored
    case records the size and modification time of its source files and is computed again when
    they change; a plan that preprocesses differently has another key, hence another folder.
    """

    def __init__(self, folder: str | os.PathLike, plan: Plan, dataset: ScanDataset) -> None:
        self.plan = plan
        self.dataset = dataset
        self.folder = Path(folder) / plan.key()

    def path(self, case: ScanCase) -> Path:
        """Where ``case`` is stored."""
        return self.folder / f"{case.name}.npz"

    def get(self, case: ScanCase) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image float32 [C, ...], label int16 [...] or None)`` of ``case`` on the plan's grid;
        computed and stored on a miss."""
        path = self.path(case)
        source = _source_signature(case)
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as stored:
                    if str(stored["source"]) == source:
                        return stored["image"], stored["label"] if "label" in stored.files else None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # damaged or from another version: computed again below
        volume, label = read_case(case, self.dataset)
        image, label = preprocess(volume, label, self.plan)
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays = {"image": image, "source": np.asarray(source)}
        if label is not None:
            arrays["label"] = label
        with replacing(path) as temporary, open(temporary, "wb") as file:
            np.savez(file, **arrays)
        return image, label


def _source_signature(case: ScanCase) -> str:
    files = [*case.images, *([case.label] if case.label is not None else [])]
    entries = []
    for file in files:
        status = Path(file).stat()
        entries.append([Path(file).name, status.st_size, status.st_mtime_ns])
    return json.dumps(entries)
