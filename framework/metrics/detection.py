"""Lesion-level detection metrics of Pourchot2022 (ch. 2.3.3): patient-wise, lesion-wise and FROC.

A :class:`DetectionCase` is one patient (or one image: whatever unit the false positives are
counted per): the confidence score of each detection and which ground-truth lesions it hits,
built from points that must fall inside a lesion region (:meth:`DetectionCase.from_points`) or
from boxes that must overlap a lesion box with IoU above 0.5 (:meth:`DetectionCase.from_boxes`).
At a score threshold: patient-wise sensitivity and specificity (a patient counts as detected
only when all its lesions are), lesion-wise sensitivity and false positives per patient
(Pourchot2022, eqs. 2.2 and 2.3). The FROC curve and :func:`aufroc`, its exact integral over a
false-positive range (default 0.02-0.5, Pourchot2022 ch. 5). The definitions in full:
docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from medtune.metrics.inputs import MetricError, as_array

Average = Literal["patient", "lesion"]


@dataclass(frozen=True)
class DetectionCase:
    """One patient's detections: ``scores`` (M,) and ``hits`` (M, F), M detections, F lesions.

    ``hits[m, f]`` is true when detection ``m`` hits lesion ``f``. A case without detections
    has ``hits`` of shape ``(0, F)``; a case without lesions has shape ``(M, 0)``.
    """

    scores: np.ndarray
    hits: np.ndarray

    def __post_init__(self) -> None:
        scores = as_array(self.scores, "scores").astype(np.float64).reshape(-1)
        hits = as_array(self.hits, "hits")
        if hits.ndim != 2 or hits.shape[0] != scores.size:
            raise MetricError(f"hits must have shape (detections, lesions) = ({scores.size}, F), "
                              f"got {hits.shape}; pass np.zeros((0, F), bool) when there are "
                              "no detections")
        if not np.isfinite(scores).all():
            raise MetricError("scores contain NaN or infinity; pass finite confidence scores")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "hits", hits.astype(bool))

    @property
    def num_lesions(self) -> int:
        """The number of ground-truth lesions of the case."""
        return int(self.hits.shape[1])

    @classmethod
    def from_points(cls, points: Any, scores: Any, lesions: Any, *,
                    components: bool = False) -> DetectionCase:
        """Detections given as voxel coordinates that hit a lesion by falling inside it.

        ``points`` is (M, ndim) voxel indices (rounded to the nearest voxel), ``lesions`` a
        label map whose positive values each mark one lesion (0 is background); with
        ``components=True`` it is a binary mask whose connected components are the lesions.
        """
        lesion_map = as_array(lesions, "lesions")
        if components:
            lesion_map, _ = ndimage.label(lesion_map > 0)
        coordinates = np.rint(as_array(points, "points")).astype(np.int64)
        if coordinates.size == 0:
            coordinates = np.zeros((0, lesion_map.ndim), np.int64)
        if coordinates.ndim != 2 or coordinates.shape[1] != lesion_map.ndim:
            raise MetricError(f"points must have shape (detections, {lesion_map.ndim}) for a "
                              f"{lesion_map.ndim}D lesion map, got {coordinates.shape}")
        inside = (coordinates >= 0) & (coordinates < np.asarray(lesion_map.shape))
        if not inside.all():
            bad = coordinates[~inside.all(axis=1)][0].tolist()
            raise MetricError(f"point {bad} lies outside the lesion map of shape "
                              f"{lesion_map.shape}; pass voxel indices inside the image")
        ids = np.unique(lesion_map[lesion_map > 0])
        labels_at_points = lesion_map[tuple(coordinates.T)]
        return cls(scores, labels_at_points[:, None] == ids[None, :])

    @classmethod
    def from_boxes(cls, boxes: Any, scores: Any, lesion_boxes: Any, *,
                   iou_threshold: float = 0.5) -> DetectionCase:
        """Detections given as boxes that hit a lesion box when their IoU exceeds the threshold.

        Boxes are ``(min_0, ..., min_d, max_0, ..., max_d)`` in any units (Pourchot2022: IoU > 0.5).
        """
        return cls(scores, box_iou(boxes, lesion_boxes) > iou_threshold)


def box_iou(boxes: Any, other_boxes: Any) -> np.ndarray:
    """IoU matrix (N, K) of axis-aligned boxes ``(min_0, ..., min_d, max_0, ..., max_d)``."""
    first = as_array(boxes, "boxes").astype(np.float64)
    second = as_array(other_boxes, "lesion boxes").astype(np.float64)
    width = max(first.shape[-1] if first.ndim == 2 else 0,
                second.shape[-1] if second.ndim == 2 else 0)
    if width == 0 or width % 2:
        raise MetricError("boxes must be arrays of shape (N, 2 * ndim) holding the minimum "
                          "corner then the maximum corner; got shapes "
                          f"{first.shape} and {second.shape}")
    first, second = first.reshape(-1, width), second.reshape(-1, width)
    half = width // 2
    if (first[:, half:] < first[:, :half]).any() or (second[:, half:] < second[:, :half]).any():
        raise MetricError("a box has a maximum corner below its minimum corner; boxes are "
                          "(min_0, ..., min_d, max_0, ..., max_d)")
    low = np.maximum(first[:, None, :half], second[None, :, :half])
    high = np.minimum(first[:, None, half:], second[None, :, half:])
    intersection = np.prod(np.clip(high - low, 0, None), axis=-1)
    volume_first = np.prod(first[:, half:] - first[:, :half], axis=-1)
    volume_second = np.prod(second[:, half:] - second[:, :half], axis=-1)
    union = volume_first[:, None] + volume_second[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def _cases(cases: Sequence[DetectionCase]) -> list[DetectionCase]:
    chosen = list(cases)
    if not chosen:
        raise MetricError("no cases given; pass a sequence of DetectionCase, one per patient")
    for case in chosen:
        if not isinstance(case, DetectionCase):
            raise MetricError(f"expected DetectionCase objects, got {type(case).__name__}; "
                              "build them with DetectionCase(...) or its from_* constructors")
    return chosen


def _level(threshold: float | None) -> float:
    return -np.inf if threshold is None else float(threshold)


def _lesion_scores(case: DetectionCase) -> np.ndarray:
    """The best score among the detections hitting each lesion (-inf for a missed lesion)."""
    if case.hits.shape[0] == 0:
        return np.full(case.num_lesions, -np.inf)
    return np.where(case.hits, case.scores[:, None], -np.inf).max(axis=0)


def _detected(lesion_scores: np.ndarray, level: float) -> np.ndarray:
    """Which lesions a kept detection hits (a missed lesion stays missed at any threshold)."""
    return np.isfinite(lesion_scores) & (lesion_scores >= level)


def _false_positive_scores(case: DetectionCase) -> np.ndarray:
    return case.scores[~case.hits.any(axis=1)]


def patient_sensitivity(cases: Sequence[DetectionCase], threshold: float | None = None) -> float:
    """Patient-wise sensitivity SE_pw: share of patients with lesions whose lesions are all hit."""
    level = _level(threshold)
    positives = [case for case in _cases(cases) if case.num_lesions]
    if not positives:
        raise MetricError("patient-wise sensitivity needs at least one case with a lesion")
    return float(np.mean([_detected(_lesion_scores(case), level).all() for case in positives]))


def patient_specificity(cases: Sequence[DetectionCase], threshold: float | None = None) -> float:
    """Patient-wise specificity SPE_pw: share of patients without lesions with no detection kept."""
    level = _level(threshold)
    negatives = [case for case in _cases(cases) if not case.num_lesions]
    if not negatives:
        raise MetricError("patient-wise specificity needs at least one case without lesions")
    return float(np.mean([not (case.scores >= level).any() for case in negatives]))


def _lesion_weights(cases: list[DetectionCase], average: Average) -> list[float]:
    if average not in ("patient", "lesion"):
        raise MetricError(f"average must be 'patient' or 'lesion', got {average!r}")
    total = sum(case.num_lesions for case in cases)
    positives = sum(1 for case in cases if case.num_lesions)
    if total == 0:
        raise MetricError("lesion-wise sensitivity needs at least one lesion in the cases")
    if average == "lesion":
        return [1.0 / total] * len(cases)
    return [1.0 / (positives * case.num_lesions) if case.num_lesions else 0.0 for case in cases]


def lesion_sensitivity(cases: Sequence[DetectionCase], threshold: float | None = None, *,
                       average: Average = "patient") -> float:
    """Lesion-wise (fracture-wise) sensitivity SE_fw (Pourchot2022, eq. 2.3) at a threshold."""
    chosen = _cases(cases)
    level = _level(threshold)
    weights = _lesion_weights(chosen, average)
    return float(sum(weight * np.count_nonzero(_detected(_lesion_scores(case), level))
                     for weight, case in zip(weights, chosen)))


def false_positives_per_patient(cases: Sequence[DetectionCase],
                                threshold: float | None = None) -> float:
    """FPP_pw: kept detections hitting no lesion, per case over all cases (Pourchot2022, eq. 2.3)."""
    chosen = _cases(cases)
    level = _level(threshold)
    return sum(int(np.count_nonzero(_false_positive_scores(case) >= level))
               for case in chosen) / len(chosen)


@dataclass(frozen=True)
class FROCCurve:
    """Operating points of a detector, one per threshold, in order of decreasing threshold.

    The first point is ``(threshold=inf, 0 false positives, sensitivity 0)``: nothing kept.
    """

    thresholds: np.ndarray
    false_positives_per_patient: np.ndarray
    sensitivity: np.ndarray


def froc_curve(cases: Sequence[DetectionCase], *, average: Average = "patient") -> FROCCurve:
    """The FROC curve: lesion-wise sensitivity against false positives per patient."""
    chosen = _cases(cases)
    weights = _lesion_weights(chosen, average)
    lesion_scores = np.concatenate([_lesion_scores(case) for case in chosen])
    lesion_weights = np.concatenate([np.full(case.num_lesions, weight)
                                     for weight, case in zip(weights, chosen)])
    false_scores = np.concatenate([_false_positive_scores(case) for case in chosen])
    all_scores = np.concatenate([case.scores for case in chosen])
    thresholds = np.unique(all_scores)[::-1]
    order = np.argsort(-lesion_scores, kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(lesion_weights[order])])
    descending_lesions = -lesion_scores[order]
    detected = np.searchsorted(descending_lesions, -thresholds, side="right")
    descending_false = np.sort(-false_scores)
    false_kept = np.searchsorted(descending_false, -thresholds, side="right")
    return FROCCurve(
        thresholds=np.concatenate([[np.inf], thresholds]),
        false_positives_per_patient=np.concatenate([[0.0], false_kept / len(chosen)]),
        sensitivity=np.clip(np.concatenate([[0.0], cumulative[detected]]), 0.0, 1.0),
    )


def aufroc(curve: FROCCurve | Sequence[DetectionCase], *,
           false_positive_range: tuple[float, float] = (0.02, 0.5),
           normalize: bool = False, average: Average = "patient") -> float:
    """Area under the FROC curve between two false-positive rates (per patient or image).

    The curve is the polyline through the operating points, constant at its last sensitivity
    beyond the largest false-positive rate reached; the area is exact for that polyline. With
    ``normalize=True`` the area is divided by the range's width, giving a mean sensitivity in
    [0, 1]. Accepts a :class:`FROCCurve` or the cases themselves (``average`` then applies).
    """
    bounds = np.asarray(false_positive_range, dtype=np.float64).reshape(-1)
    low, high = (float(bounds[0]), float(bounds[-1])) if bounds.size == 2 else (np.nan, np.nan)
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
        raise MetricError(f"false_positive_range must be (low, high) with 0 <= low < high, got "
                          f"{false_positive_range!r}")
    froc = curve if isinstance(curve, FROCCurve) else froc_curve(curve, average=average)
    x = np.append(froc.false_positives_per_patient, max(high, froc.false_positives_per_patient[-1]))
    y = np.append(froc.sensitivity, froc.sensitivity[-1])
    start, stop = np.maximum(x[:-1], low), np.minimum(x[1:], high)
    inside = stop > start  # segments overlapping the range (vertical ones never do)
    x0, x1, y0, y1 = x[:-1][inside], x[1:][inside], y[:-1][inside], y[1:][inside]
    slope = (y1 - y0) / (x1 - x0)
    height_start = y0 + slope * (start[inside] - x0)
    height_stop = y0 + slope * (stop[inside] - x0)
    area = float(np.sum((stop[inside] - start[inside]) * (height_start + height_stop) / 2))
    return area / (high - low) if normalize else area
