"""Built-in objectives a study can optimise (``module:function`` objectives work too)."""

from medtune.tasks.configured import ConfiguredObjective
from medtune.tasks.segmentation import SEGMENTATION_DEFAULTS, train_segmentation

__all__ = ["SEGMENTATION_DEFAULTS", "ConfiguredObjective", "train_segmentation"]
