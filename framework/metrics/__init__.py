"""Evaluation metrics of medical-image segmentation, detection and quality regression.

- Overlap (:mod:`~medtune.metrics.overlap`): :func:`dice`, :func:`iou`, :func:`precision`,
  :func:`recall`, :func:`accuracy`, :func:`per_class_accuracy`, and :func:`per_label` to score
  each region of a label map.
- Boundaries in mm (:mod:`~medtune.metrics.surface`, on MONAI): :func:`surface_dice`,
  :func:`hausdorff95`, :func:`boundary_f1`, :func:`boundary_distances`.
- Lesion detection (:mod:`~medtune.metrics.detection`, Pourchot2022): :class:`DetectionCase`,
  :func:`patient_sensitivity`, :func:`patient_specificity`, :func:`lesion_sensitivity`,
  :func:`false_positives_per_patient`, :func:`froc_curve`, :func:`aufroc`, :func:`box_iou`.
- Statistics (:mod:`~medtune.metrics.statistics`, on scipy): :func:`mean_absolute_error`,
  :func:`root_mean_squared_error`, :func:`pearson`, :func:`spearman` (with Fisher-z
  intervals), :func:`cohens_d`, :func:`t_test`, :func:`bootstrap_ci`.
- Plugins (:mod:`~medtune.metrics.callables`): :data:`METRICS` and :class:`Metric`, the
  ``metric`` kind of ``medtune.create``.

Every function takes numpy arrays or torch tensors of one case and raises
:class:`MetricError` (a ``ValueError``) on inputs it cannot score. Each module states how
empty masks are scored.
"""

from medtune.metrics.callables import METRICS, Metric
from medtune.metrics.detection import (
    DetectionCase,
    FROCCurve,
    aufroc,
    box_iou,
    false_positives_per_patient,
    froc_curve,
    lesion_sensitivity,
    patient_sensitivity,
    patient_specificity,
)
from medtune.metrics.inputs import MetricError
from medtune.metrics.overlap import (
    accuracy,
    dice,
    iou,
    per_class_accuracy,
    per_label,
    precision,
    recall,
)
from medtune.metrics.statistics import (
    Correlation,
    Interval,
    TTestResult,
    bootstrap_ci,
    cohens_d,
    mean_absolute_error,
    pearson,
    pearson_r,
    root_mean_squared_error,
    spearman,
    spearman_rho,
    t_test,
)
from medtune.metrics.surface import boundary_distances, boundary_f1, hausdorff95, surface_dice

__all__ = [
    "METRICS",
    "Correlation",
    "DetectionCase",
    "FROCCurve",
    "Interval",
    "Metric",
    "MetricError",
    "TTestResult",
    "accuracy",
    "aufroc",
    "bootstrap_ci",
    "boundary_distances",
    "boundary_f1",
    "box_iou",
    "cohens_d",
    "dice",
    "false_positives_per_patient",
    "froc_curve",
    "hausdorff95",
    "iou",
    "lesion_sensitivity",
    "mean_absolute_error",
    "patient_sensitivity",
    "patient_specificity",
    "pearson",
    "pearson_r",
    "per_class_accuracy",
    "per_label",
    "precision",
    "recall",
    "root_mean_squared_error",
    "spearman",
    "spearman_rho",
    "surface_dice",
    "t_test",
]
