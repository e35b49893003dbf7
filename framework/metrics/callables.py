"""Metrics as objects a study can optimise: ``metric(prediction, target) -> float``.

:data:`METRICS` maps each metric name to a factory; ``medtune.create("metric", name, **options)``
calls it (the built-in plugin registers this mapping). A :class:`Metric` knows its ``name``
and its ``direction`` (``"maximize"`` or ``"minimize"``), so a study can turn any of them into
an objective. Options are the keyword arguments of the underlying function (``label``,
``spacing``, ``tolerance``...), checked when the metric is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np

from medtune.metrics.detection import DetectionCase, aufroc
from medtune.metrics.inputs import MetricError, check_tolerance, spacing_tuple
from medtune.metrics.overlap import accuracy, dice, iou, precision, recall
from medtune.metrics.statistics import (
    mean_absolute_error,
    pearson_r,
    root_mean_squared_error,
    spearman_rho,
)
from medtune.metrics.surface import boundary_f1, hausdorff95, surface_dice

Direction = Literal["maximize", "minimize"]


class Metric:
    """A named, configured metric: ``metric(prediction, target)`` returns a float.

    ``direction`` says whether larger (``"maximize"``) or smaller (``"minimize"``) is better.
    """

    def __init__(self, name: str, function: Callable[..., float], direction: Direction,
                 **options: Any) -> None:
        if direction not in ("maximize", "minimize"):
            raise MetricError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        accepted = [parameter.name for parameter in inspect.signature(function).parameters.values()
                    if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            allowed = ", ".join(accepted) or "none"
            raise MetricError(f"metric {name!r} got unknown option(s) {', '.join(unknown)}; "
                              f"accepted options: {allowed}")
        if options.get("tolerance") is not None:
            check_tolerance(options["tolerance"])
        spacing = options.get("spacing")
        if spacing is not None:  # checked now; the axis count is checked against each input
            spacing_tuple(spacing, 1 if np.ndim(spacing) == 0 else len(spacing))
        self.name = name
        self.direction: Direction = direction
        self.options = dict(options)
        self._function = function

    def __call__(self, prediction: Any, target: Any) -> float:
        """Score one prediction against its target."""
        return float(self._function(prediction, target, **self.options))

    def __repr__(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"Metric({self.name!r}, direction={self.direction!r}{options})"


def _cases_aufroc(prediction: Sequence[DetectionCase], target: None = None, *,
                  false_positive_range: tuple[float, float] = (0.02, 0.5),
                  normalize: bool = False, average: str = "patient") -> float:
    """AUFROC of detection cases; the cases hold the matches, so ``target`` must be None."""
    if target is not None:
        raise MetricError("the aufroc metric takes the DetectionCase list as prediction and "
                          "target=None (each case already records which lesions it hits)")
    return aufroc(prediction, false_positive_range=false_positive_range, normalize=normalize,
                  average=average)  # type: ignore[arg-type]


_SPECS: dict[str, tuple[Callable[..., float], Direction]] = {
    "dice": (dice, "maximize"),
    "iou": (iou, "maximize"),
    "precision": (precision, "maximize"),
    "recall": (recall, "maximize"),
    "accuracy": (accuracy, "maximize"),
    "surface_dice": (surface_dice, "maximize"),
    "hausdorff95": (hausdorff95, "minimize"),
    "boundary_f1": (boundary_f1, "maximize"),
    "mae": (mean_absolute_error, "minimize"),
    "rmse": (root_mean_squared_error, "minimize"),
    "pearson": (pearson_r, "maximize"),
    "spearman": (spearman_rho, "maximize"),
    "aufroc": (_cases_aufroc, "maximize"),
}

#: ``{name: factory}``: ``factory(**options)`` builds the :class:`Metric` of that name.
METRICS: dict[str, Callable[..., Metric]] = {
    name: partial(Metric, name, function, direction)
    for name, (function, direction) in _SPECS.items()
}
