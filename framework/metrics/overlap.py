"""Overlap metrics of one segmented case: Dice, IoU, precision, recall and accuracy.

The metrics count voxels directly (one pass over the masks): MONAI's ``DiceMetric`` and
``MeanIoU`` compute the same quantities but need one-hot batches and return NaN for an empty
truth, so they serve as references in the tests rather than as the implementation.

Inputs are one case (any number of axes), binary masks or, with ``label=``, label maps.
Empty masks follow one convention for every ratio here: when the denominator is zero, the
score is 1.0 if both prediction and target are empty (nothing to find, nothing found) and 0.0
otherwise. So the Dice of two empty masks is 1.0, and the precision of an empty prediction
against a non-empty truth is 0.0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from medtune.metrics.inputs import MetricError, as_array, masks, same_shape


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def _counts(prediction: Any, target: Any, label: int | None) -> tuple[int, int, int, bool]:
    predicted, truth = masks(prediction, target, label)
    true_positives = int(np.count_nonzero(predicted & truth))
    false_positives = int(np.count_nonzero(predicted & ~truth))
    false_negatives = int(np.count_nonzero(~predicted & truth))
    both_empty = not predicted.any() and not truth.any()
    return true_positives, false_positives, false_negatives, both_empty


def dice(prediction: Any, target: Any, *, label: int | None = None) -> float:
    """Sørensen-Dice coefficient ``2|P∩T| / (|P| + |T|)`` of one case; 1.0 if both are empty."""
    tp, fp, fn, both_empty = _counts(prediction, target, label)
    return _ratio(2 * tp, 2 * tp + fp + fn, both_empty)


def iou(prediction: Any, target: Any, *, label: int | None = None) -> float:
    """Intersection over union (Jaccard) ``|P∩T| / |P∪T|``; 1.0 if both are empty."""
    tp, fp, fn, both_empty = _counts(prediction, target, label)
    return _ratio(tp, tp + fp + fn, both_empty)


def precision(prediction: Any, target: Any, *, label: int | None = None) -> float:
    """Positive predictive value ``|P∩T| / |P|``; 1.0 if both are empty, 0.0 if only P is."""
    tp, fp, _, both_empty = _counts(prediction, target, label)
    return _ratio(tp, tp + fp, both_empty)


def recall(prediction: Any, target: Any, *, label: int | None = None) -> float:
    """Sensitivity ``|P∩T| / |T|``; 1.0 if both are empty, 0.0 if only T is empty."""
    tp, _, fn, both_empty = _counts(prediction, target, label)
    return _ratio(tp, tp + fn, both_empty)


def accuracy(prediction: Any, target: Any) -> float:
    """Global accuracy: the fraction of voxels whose predicted label equals the target label.

    Works for binary masks and for label maps alike (no ``label`` argument: every class counts).
    """
    predicted = as_array(prediction, "prediction")
    truth = as_array(target, "target")
    same_shape(predicted, truth)
    return float(np.count_nonzero(predicted == truth)) / predicted.size


def per_class_accuracy(prediction: Any, target: Any,
                       labels: Iterable[int] | None = None) -> dict[int, float]:
    """Class accuracy of each label of a label map (Rukundo2021, after Csurka et al. 2013).

    The class accuracy of label ``c`` is the fraction of the voxels of class ``c`` in the target
    that the prediction labels ``c`` (the per-class recall; MATLAB's ``Accuracy`` class metric).
    ``labels`` defaults to the labels present in the target; a requested label absent from the
    target scores 1.0 if the prediction does not use it either and 0.0 otherwise.
    """
    truth = as_array(target, "target")
    chosen = sorted(int(v) for v in np.unique(truth)) if labels is None else list(labels)
    if not chosen:
        raise MetricError("labels is empty; pass at least one class label")
    return {label: recall(prediction, truth, label=label) for label in chosen}


def per_label(metric: Callable[..., float], prediction: Any, target: Any,
              labels: Iterable[int], **kwargs: Any) -> dict[int, float]:
    """Apply a binary ``metric`` (any of this package taking ``label=``) to each of ``labels``.

    Example: ``per_label(dice, prediction, target, labels=(1, 2, 3))`` gives the Dice of each
    region of a three-class label map; keyword arguments (``spacing=``...) are passed on.
    """
    chosen = list(labels)
    if not chosen:
        raise MetricError("labels is empty; pass at least one class label")
    return {int(label): metric(prediction, target, label=int(label), **kwargs) for label in chosen}
