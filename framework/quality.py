"""Dataset curation with a quality estimator (Kofler2022, discussion): flag the doubtful cases.

``screen(estimator, cases, threshold)`` rates every case with a trained estimator (any object
with ``predict(cases) -> ratings``, such as the ``dqe`` plugin) and returns the cases rated
below ``threshold`` stars, worst first - the segmentations to review or leave out of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtune.errors import MedtuneError


@dataclass(frozen=True)
class FlaggedCase:
    """A case rated below the threshold: its position in the screened list, its name and its
    predicted rating."""

    index: int
    name: str
    rating: float


def screen(estimator: Any, cases: Sequence[Any], threshold: float) -> list[FlaggedCase]:
    """The cases whose predicted rating is below ``threshold``, lowest rating first."""
    if not hasattr(estimator, "predict"):
        raise MedtuneError(f"screen: the estimator must have a predict(cases) method, got "
                           f"{type(estimator).__name__}; build one with medtune.create('quality_estimator', 'dqe')")
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise MedtuneError(f"screen: threshold must be a finite number of stars, got {threshold}")
    if len(cases) == 0:
        return []
    ratings = np.asarray(estimator.predict(cases), dtype=float).reshape(-1)
    if len(ratings) != len(cases):
        raise MedtuneError(f"screen: the estimator returned {len(ratings)} ratings for {len(cases)} cases")
    flagged = [FlaggedCase(i, str(getattr(case, "name", i)), float(r))
               for i, (case, r) in enumerate(zip(cases, ratings)) if r < threshold]
    return sorted(flagged, key=lambda case: case.rating)
