"""Metric plugins: the metrics of :mod:`medtune.metrics` as objects a study can optimise.

``METRICS`` maps names (dice, iou, precision, recall, accuracy, surface_dice, hausdorff95,
boundary_f1, mae, rmse, pearson, spearman, aufroc) to factories of
:class:`medtune.metrics.Metric`; the built-in plugin registers it under the ``metric`` kind,
so ``medtune.create("metric", "surface_dice", tolerance=2.0, spacing=(1, 1, 3))`` works.
"""

from medtune.metrics import METRICS, Metric, MetricError

__all__ = ["METRICS", "Metric", "MetricError"]
