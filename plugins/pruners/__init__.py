"""Built-in pruners, each a :class:`medtune.pruners.Pruner` that stops trials from their reports.

``median`` and ``percentile`` (compare with the other trials at the same step, as Optuna's
pruners of those names), ``patience`` (no improvement for a while), ``asha`` (asynchronous
successive halving) and ``wilcoxon`` (a signed-rank test of per-case scores against the
best trial's); build one with ``medtune.create("pruner", name, direction=..., **options)``.
"""

from medtune.plugins.pruners.asha import AshaPruner
from medtune.plugins.pruners.patience import PatiencePruner
from medtune.plugins.pruners.percentile import MedianPruner, PercentilePruner
from medtune.plugins.pruners.wilcoxon import WilcoxonPruner
from medtune.pruners import History, Pruner, PrunerError  # the contract, beside its rules

#: ``{name: factory}`` as registered under the ``pruner`` kind by the built-in plugin.
PRUNERS = {
    "median": MedianPruner,
    "percentile": PercentilePruner,
    "patience": PatiencePruner,
    "asha": AshaPruner,
    "wilcoxon": WilcoxonPruner,
}

__all__ = [
    "PRUNERS",
    "AshaPruner",
    "History",
    "MedianPruner",
    "PatiencePruner",
    "PercentilePruner",
    "Pruner",
    "PrunerError",
    "WilcoxonPruner",
]
