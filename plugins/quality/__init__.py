"""Segmentation quality estimation (Kofler2022): the DQE estimator, the brain-tumour phantom with
segmentations of controlled quality, simulated raters and a loader for real ratings."""

from medtune.plugins.quality.brain_tumour import (
    DEGRADATIONS,
    BrainTumourPhantom,
    RatedExam,
    degrade,
    load_anatomy,
)
from medtune.plugins.quality.cases import REGIONS, Case, QualityError
from medtune.plugins.quality.dqe import DQE
from medtune.plugins.quality.raters import (
    RatedCases,
    RaterPanel,
    load_rated_folder,
    rater_mae,
    segmentation_quality,
)

#: ``{name: factory}`` as registered under the ``quality_estimator`` kind by the built-in plugin.
QUALITY_ESTIMATORS = {"dqe": DQE}

__all__ = [
    "DEGRADATIONS",
    "DQE",
    "QUALITY_ESTIMATORS",
    "REGIONS",
    "BrainTumourPhantom",
    "Case",
    "QualityError",
    "RatedCases",
    "RatedExam",
    "RaterPanel",
    "degrade",
    "load_anatomy",
    "load_rated_folder",
    "rater_mae",
    "segmentation_quality",
]
