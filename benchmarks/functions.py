"""The test problems of the search benchmarks: Branin, Hartmann-6, a tabulated finite space, and
two-objective problems (ZDT1, and the table's loss against its parameter count).

Branin and Hartmann-6 are the usual Bayesian-optimisation test functions (Surjanovic & Bingham,
"Virtual Library of Simulation Experiments"), both minimised. :class:`TabulatedProblem` is a
finite space of 34,300 configurations (7 × 7 × 7 × 10 × 10, the size of the search of Bertrand2019,
sec. 2.6.3) whose "validation loss" is a table computed once from a smooth function of the
parameters plus seeded noise, with a learning-curve term for multi-fidelity searchers: the loss
after ``r`` epochs (``r`` up to ``R``) is the final loss plus a term that decays with ``r`` at a
pace that depends on the configuration, so that rankings at a low budget agree only in part
with the final ones.

The two-objective problems (:class:`TwoObjectiveProblem`) are ZDT1 (Zitzler, Deb & Thiele
2000) and the table's final loss against a parameter count (:meth:`TabulatedProblem.parameters`),
each with a fixed hypervolume reference point and the largest hypervolume any set of its points
reaches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# -- Branin -----------------------------------------------------------------------------------
BRANIN_MINIMUM = 0.397887
BRANIN_MINIMISERS = ((-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475))


def branin(x1: float, x2: float) -> float:
    """Branin-Hoo on x1 in [-5, 10], x2 in [0, 15]: three global minima of 0.397887."""
    b = 5.1 / (4 * math.pi**2)
    c = 5 / math.pi
    t = 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


# -- Hartmann-6 -------------------------------------------------------------------------------
HARTMANN6_MINIMUM = -3.32237
HARTMANN6_MINIMISER = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
_HARTMANN6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_HARTMANN6_A = np.array([
    [10, 3, 17, 3.5, 1.7, 8],
    [0.05, 10, 17, 0.1, 8, 14],
    [3, 3.5, 1.7, 10, 17, 8],
    [17, 8, 0.05, 10, 0.1, 14],
])
_HARTMANN6_P = 1e-4 * np.array([
    [1312, 1696, 5569, 124, 8283, 5886],
    [2329, 4135, 8307, 3736, 1004, 9991],
    [2348, 1451, 3522, 2883, 3047, 6650],
    [4047, 8828, 8732, 5743, 1091, 381],
])


def hartmann6(x: Any) -> float:
    """Hartmann-6 on the unit cube [0, 1]^6: one global minimum of -3.32237."""
    x = np.asarray(x, dtype=float)
    inner = np.sum(_HARTMANN6_A * (x - _HARTMANN6_P) ** 2, axis=1)
    return float(-np.sum(_HARTMANN6_ALPHA * np.exp(-inner)))


# -- continuous problems as search spaces -----------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """A function to minimise over a search space (its TOML table), with its known minimum."""

    name: str
    title: str
    space: dict[str, dict[str, Any]]
    objective: Callable[[Mapping[str, Any]], float]
    minimum: float


BRANIN = Problem(
    name="branin",
    title="Branin (2-d, x1 in [-5, 10], x2 in [0, 15], minimum 0.397887)",
    space={
        "x1": {"type": "float", "low": -5.0, "high": 10.0},
        "x2": {"type": "float", "low": 0.0, "high": 15.0},
    },
    objective=lambda config: branin(config["x1"], config["x2"]),
    minimum=BRANIN_MINIMUM,
)

HARTMANN6 = Problem(
    name="hartmann6",
    title="Hartmann-6 (6-d unit cube, minimum -3.32237)",
    space={f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(6)},
    objective=lambda config: hartmann6([config[f"x{i}"] for i in range(6)]),
    minimum=HARTMANN6_MINIMUM,
)


# -- two-objective problems ----------------------------------------------------------------------
@dataclass(frozen=True)
class TwoObjectiveProblem:
    """Two functions to minimise over a search space, with the hypervolume reference point and
    the hypervolume of the true Pareto front w.r.t. it (the most any set of points reaches)."""

    name: str
    title: str
    space: dict[str, dict[str, Any]]
    objectives: Callable[[Mapping[str, Any]], tuple[float, float]]
    reference: tuple[float, float]
    best_hypervolume: float


ZDT1_DIMENSION = 6
#: the reference point BoTorch's ZDT problems use
ZDT1_REFERENCE = (11.0, 11.0)


def zdt1(x: Any) -> tuple[float, float]:
    """ZDT1 on the unit cube [0, 1]^n (n >= 2), both minimised: f1 = x1, f2 = g (1 - sqrt(f1 /
    g)) with g = 1 + 9 mean(x2 .. xn); the Pareto front is f2 = 1 - sqrt(f1), at x2 .. xn = 0."""
    x = np.asarray(x, dtype=float)
    g = 1.0 + 9.0 * float(np.mean(x[1:]))
    return float(x[0]), g * (1.0 - math.sqrt(x[0] / g))


ZDT1 = TwoObjectiveProblem(
    name="zdt1",
    title=f"ZDT1 ({ZDT1_DIMENSION}-d unit cube, reference point {ZDT1_REFERENCE})",
    space={f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(ZDT1_DIMENSION)},
    objectives=lambda config: zdt1([config[f"x{i}"] for i in range(ZDT1_DIMENSION)]),
    reference=ZDT1_REFERENCE,
    # the area under the reference point and above f2 = 1 - sqrt(f1): r1 r2 - 1/3
    best_hypervolume=ZDT1_REFERENCE[0] * ZDT1_REFERENCE[1] - 1.0 / 3.0,
)


# -- the tabulated finite space ---------------------------------------------------------------
#: (name, values) of the five parameters; the loss depends on each value's position u in [0, 1]
TABULATED_PARAMETERS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("filters_log2", tuple(range(2, 9))),  # 4 .. 256 filters
    ("batch_log2", tuple(range(2, 9))),  # batch size 4 .. 256
    ("learning_rate_log10", tuple(range(-7, 0))),  # 1e-7 .. 1e-1
    ("dropout", tuple(round(0.05 * i, 2) for i in range(10))),  # 0 .. 0.45
    ("weight_decay", (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
)
#: weights per squared filter in the parameter-count proxy (16 k .. 65.5 M for 4 .. 256 filters)
PARAMETERS_PER_SQUARED_FILTER = 1000
#: hypervolume reference point of the table's (final loss, log10 parameters) problem
TABULATED_REFERENCE = (0.6, 8.0)


class TabulatedProblem:
    """A deterministic table of validation losses over 34,300 configurations.

    The final loss (after ``R`` epochs) is a sum of smooth terms of the parameters' positions
    u in [0, 1] (the best learning rate grows with the batch size, the best dropout with the
    width, a small ripple over weight decay and dropout) plus Gaussian noise drawn from
    ``seed``. The loss after ``r`` epochs adds ``speed * ((R / r) ** 0.5 - 1)``, zero at
    ``r = R``; ``speed`` is larger (slower learning) for small learning rates, wide networks and
    strong dropout, times a seeded log-normal factor per configuration, so the best final
    configurations (wide, moderately regularised) do not look best after a few epochs.

    Args:
        seed: seed of the noise; the same seed gives the same table.
        R: the full budget (epochs) at which the loss is the final loss.
    """

    def __init__(self, seed: int = 0, R: float = 27) -> None:
        self.seed = seed
        self.R = R
        self.names = [name for name, _ in TABULATED_PARAMETERS]
        self.values = [values for _, values in TABULATED_PARAMETERS]
        self.shape = tuple(len(values) for values in self.values)
        self._position = [
            {value: index for index, value in enumerate(values)} for values in self.values
        ]
        rng = np.random.default_rng(seed)
        grids = np.meshgrid(*(np.linspace(0.0, 1.0, n) for n in self.shape), indexing="ij")
        filters, batch, learning_rate, dropout, decay = grids
        self.final = (
            0.25
            + 1.2 * (learning_rate - (0.45 + 0.3 * batch)) ** 2
            + 0.3 * (filters - 0.75) ** 2
            + 0.5 * (dropout - 0.5 * filters) ** 2
            + 0.15 * (decay - 0.45) ** 2
            + 0.02 * np.cos(3 * math.pi * decay) * np.sin(2 * math.pi * dropout)
            + 0.01 * rng.standard_normal(self.shape)
        )
        self.speed = (
            0.01
            * np.exp(2.0 * (1 - learning_rate) + 1.0 * filters + 0.6 * dropout)
            * np.exp(0.3 * rng.standard_normal(self.shape))
        )
        order = np.sort(self.final, axis=None)
        self.best_loss = float(order[0])
        #: the final loss at or below which a configuration is among the best 1 %
        self.top_percent_loss = float(order[math.ceil(0.01 * order.size) - 1])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def space(self) -> dict[str, dict[str, Any]]:
        """The search space as a TOML table (integers as int parameters, the rest ordinal)."""
        table: dict[str, dict[str, Any]] = {}
        for name, values in TABULATED_PARAMETERS:
            if all(isinstance(v, int) for v in values):
                table[name] = {"type": "int", "low": values[0], "high": values[-1]}
            else:
                table[name] = {"type": "ordinal", "values": list(values)}
        return table

    def index(self, config: Mapping[str, Any]) -> tuple[int, ...]:
        """The table position of a configuration."""
        return tuple(
            position[config[name]] for name, position in zip(self.names, self._position)
        )

    def loss(self, config: Mapping[str, Any], resource: float | None = None) -> float:
        """The validation loss of ``config`` after ``resource`` epochs (None: after ``R``)."""
        where = self.index(config)
        final = float(self.final[where])
        if resource is None or resource >= self.R:
            return final
        return final + float(self.speed[where]) * (math.sqrt(self.R / resource) - 1)

    def losses_at(self, resource: float) -> np.ndarray:
        """The loss of every configuration after ``resource`` epochs, in table order."""
        if resource >= self.R:
            return self.final
        return self.final + self.speed * (math.sqrt(self.R / resource) - 1)

    def parameters(self, config: Mapping[str, Any]) -> int:
        """A parameter-count proxy of ``config``: :data:`PARAMETERS_PER_SQUARED_FILTER` times
        the squared number of filters (a convolutional network's weights grow with the square
        of its width); the other parameters do not change it."""
        return PARAMETERS_PER_SQUARED_FILTER * 2 ** (2 * int(config["filters_log2"]))

    def two_objectives(self) -> TwoObjectiveProblem:
        """The final loss against log10 of :meth:`parameters`, both minimised, reference point
        :data:`TABULATED_REFERENCE`; the best hypervolume is that of the whole table's front."""
        from medtune.search.objectives import hypervolume

        filters = self.values[0]
        best_per_width = self.final.reshape(len(filters), -1).min(axis=1)
        points = [(float(loss), math.log10(self.parameters({"filters_log2": f})))
                  for f, loss in zip(filters, best_per_width)]
        return TwoObjectiveProblem(
            name="table",
            title=f"Tabulated space: final loss against log10 parameters (reference point "
                  f"{TABULATED_REFERENCE})",
            space=self.space(),
            objectives=lambda config: (self.loss(config),
                                       math.log10(self.parameters(config))),
            reference=TABULATED_REFERENCE,
            best_hypervolume=hypervolume(np.asarray(points), TABULATED_REFERENCE),
        )

    def rank(self, final_loss: float) -> int:
        """1 for the best configuration, up to :attr:`size`, from its final loss."""
        return int(np.count_nonzero(self.final < final_loss)) + 1
