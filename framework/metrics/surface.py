"""Boundary metrics of one segmented case, in millimetres: surface Dice, HD95 and boundary F1.

All three are spacing-aware (2D or 3D; ``spacing`` is the voxel size along each axis, default
1 mm) and compare boundary voxels, found as MONAI finds them (a mask minus its binary erosion).

- :func:`surface_dice` calls MONAI's ``compute_surface_dice`` (normalised surface Dice,
  Nikolov et al. 2021): the fraction of both boundaries lying within ``tolerance`` mm of the
  other boundary.
- :func:`hausdorff95` calls MONAI's ``compute_hausdorff_distance`` with ``percentile=95``: the
  larger of the two directed 95th-percentile boundary distances.
- :func:`boundary_f1` is written here (MONAI has no BF score) on MONAI's ``get_mask_edges`` and
  ``get_surface_distance``: the BF score of Csurka et al. (2013) that Rukundo2021 reports per
  region, the harmonic mean of boundary precision and boundary recall at a tolerance.

Empty masks: surface Dice and boundary F1 are 1.0 when both masks are empty and 0.0 when only
one is; HD95 is 0.0 when both are empty and ``inf`` when only one is (no boundary to measure
to), which any minimising study treats as the worst value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from monai.metrics.utils import get_mask_edges, get_surface_distance

from medtune.metrics.inputs import (
    MetricError,
    Spacing,
    check_tolerance,
    masks,
    spacing_tuple,
    spatial_ndim,
)

#: Default BF-score tolerance as a fraction of the image diagonal (Csurka et al. 2013; MATLAB).
BF_DIAGONAL_FRACTION = 0.0075


def _prepare(prediction: Any, target: Any, label: int | None,
             spacing: Spacing) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    predicted, truth = masks(prediction, target, label)
    return predicted, truth, spacing_tuple(spacing, spatial_ndim(predicted))


@contextmanager
def _monai_quietly() -> Iterator[None]:
    """Silence the deprecation warning MONAI >= 1.5 raises on an argument it passes itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy",
                                category=FutureWarning)
        yield


def _batch(mask: np.ndarray) -> torch.Tensor:
    """One case as MONAI's one-hot batch ``[1, 1, *spatial]``."""
    return torch.from_numpy(mask.astype(np.float32))[None, None]


def boundary_distances(prediction: Any, target: Any, *, label: int | None = None,
                       spacing: Spacing = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each prediction boundary voxel to the target boundary, and back.

    Returns ``(prediction_to_target, target_to_prediction)``, one value per boundary voxel.
    Both masks must be non-empty.
    """
    predicted, truth, voxel = _prepare(prediction, target, label, spacing)
    if not predicted.any() or not truth.any():
        raise MetricError("boundary distances need two non-empty masks; the prediction or the "
                          "target has no foreground voxel")
    return _distances(predicted, truth, voxel)


def _distances(predicted: np.ndarray, truth: np.ndarray,
               voxel: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    predicted_edges, truth_edges = get_mask_edges(predicted, truth, crop=True)
    forward = get_surface_distance(predicted_edges, truth_edges, "euclidean", voxel)
    backward = get_surface_distance(truth_edges, predicted_edges, "euclidean", voxel)
    return np.asarray(forward, dtype=np.float64), np.asarray(backward, dtype=np.float64)


def surface_dice(prediction: Any, target: Any, *, tolerance: float = 1.0,
                 label: int | None = None, spacing: Spacing = None) -> float:
    """Normalised surface Dice at ``tolerance`` mm (MONAI ``compute_surface_dice``).

    The share of the boundary voxels of both masks that lie within ``tolerance`` mm of the
    other mask's boundary. 1.0 if both masks are empty, 0.0 if exactly one is.
    """
    tol = check_tolerance(tolerance)
    predicted, truth, voxel = _prepare(prediction, target, label, spacing)
    if not predicted.any() or not truth.any():
        return 1.0 if predicted.any() == truth.any() else 0.0
    with _monai_quietly():
        score = compute_surface_dice(_batch(predicted), _batch(truth), class_thresholds=[tol],
                                     include_background=True, spacing=list(voxel))
    return float(score.reshape(-1)[0])


def hausdorff95(prediction: Any, target: Any, *, label: int | None = None,
                spacing: Spacing = None) -> float:
    """95th-percentile Hausdorff distance in mm (MONAI ``compute_hausdorff_distance``).

    ``max(P95(d(∂P, ∂T)), P95(d(∂T, ∂P)))`` over boundary voxels. 0.0 if both masks are
    empty, ``inf`` if exactly one is.
    """
    predicted, truth, voxel = _prepare(prediction, target, label, spacing)
    if not predicted.any() or not truth.any():
        return 0.0 if predicted.any() == truth.any() else math.inf
    with _monai_quietly():
        distance = compute_hausdorff_distance(_batch(predicted), _batch(truth),
                                              include_background=True, percentile=95,
                                              spacing=list(voxel))
    return float(distance.reshape(-1)[0])


def boundary_f1(prediction: Any, target: Any, *, tolerance: float | None = None,
                label: int | None = None, spacing: Spacing = None) -> float:
    """Boundary F1 (BF score) of Csurka et al. (2013), the region score of Rukundo2021.

    Boundary precision is the share of prediction boundary voxels within ``tolerance`` mm of
    the target boundary, boundary recall the share of target boundary voxels within
    ``tolerance`` mm of the prediction boundary; BF = 2PR / (P + R) (0.0 when both are 0).
    ``tolerance`` defaults to 0.75 % of the image diagonal in mm, as in the paper and MATLAB's
    ``bfscore``. 1.0 if both masks are empty, 0.0 if exactly one is. Rukundo2021's "mean BF score"
    is the mean of this value over images, per region (see :func:`per_label`).
    """
    predicted, truth, voxel = _prepare(prediction, target, label, spacing)
    if tolerance is None:
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(predicted.shape, voxel)))
        tol = BF_DIAGONAL_FRACTION * diagonal
    else:
        tol = check_tolerance(tolerance)
    if not predicted.any() or not truth.any():
        return 1.0 if predicted.any() == truth.any() else 0.0
    forward, backward = _distances(predicted, truth, voxel)
    boundary_precision = float(np.mean(forward <= tol))
    boundary_recall = float(np.mean(backward <= tol))
    if boundary_precision + boundary_recall == 0:
        return 0.0
    return 2 * boundary_precision * boundary_recall / (boundary_precision + boundary_recall)
