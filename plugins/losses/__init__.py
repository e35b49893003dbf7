"""Loss plugins: Dice, Tversky, Effectiveness, the adaptive GLF, the density-weighted loss
and the quality-surrogate loss.

The overlap losses (``dice``, ``tversky``, ``effectiveness``, ``glf``) run on the fused kernel
op :func:`medtune.kernels.glf_loss` and take MONAI's arguments; ``glf`` adapts its coefficients
during training (Seo2021), deterministically inside its forward or through
:class:`GLFExploratory`. ``density_weighted`` is the KDE-weighted regression loss of Pourchot2022.
"""

from medtune.plugins.losses.adaptive import (
    CoefficientBounds,
    DeterministicRules,
    RatioLadder,
    Trajectory,
    driving_metrics,
    tversky_projection,
)
from medtune.plugins.losses.density import DensityWeightedLoss
from medtune.errors import LossError
from medtune.plugins.losses.exploratory import (
    ExploratoryStep,
    GLFExploratory,
    StepCost,
    euclidean_distance,
    exploratory_overhead,
)
from medtune.plugins.losses.glf import GLFLoss
from medtune.losses import OverlapLoss
from medtune.plugins.losses.overlap import DiceLoss, EffectivenessLoss, TverskyLoss
from medtune.plugins.losses.quality_surrogate import QualitySurrogateLoss

#: ``{name: factory}`` as registered under the ``loss`` kind by the built-in plugin.
LOSSES = {
    "dice": DiceLoss,
    "tversky": TverskyLoss,
    "effectiveness": EffectivenessLoss,
    "glf": GLFLoss,
    "density_weighted": DensityWeightedLoss,
    "quality_surrogate": QualitySurrogateLoss,
}

__all__ = [
    "LOSSES",
    "CoefficientBounds",
    "DensityWeightedLoss",
    "DeterministicRules",
    "DiceLoss",
    "EffectivenessLoss",
    "ExploratoryStep",
    "GLFExploratory",
    "GLFLoss",
    "LossError",
    "OverlapLoss",
    "QualitySurrogateLoss",
    "RatioLadder",
    "StepCost",
    "Trajectory",
    "TverskyLoss",
    "driving_metrics",
    "euclidean_distance",
    "exploratory_overhead",
    "tversky_projection",
]
