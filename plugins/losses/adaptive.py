"""Adaptive GLF coefficients: driving metrics, the deterministic rule, bounds and trajectories.

Seo2021 evolves the GLF's alpha_p, alpha_n and beta2 during training. This module holds what
both of its strategies share (the batch-averaged metrics that drive them, the bounds, the
recorded trajectory for Seo2021's Figs. 6 and 7) and the deterministic strategy itself (eqs.
2-4, Fig. 2b): every step each coefficient is multiplied by one of five factors chosen by a
ladder on its driving ratio, then clamped to its bounds. Seo2021 gives one threshold of the
ladder; the others are medtune's symmetric choices, and the freezing counts follow the text
rather than the Fig. 2b caption (``freeze_when="above"`` follows the caption). The defaults
table and the reasons: docs/losses.md. The exploratory strategy lives in
:mod:`medtune.plugins.losses.exploratory`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from medtune.kernels import GLFStats
from medtune.errors import LossError

#: The adaptive coefficients, in the order of every [3] coefficient tensor.
COEFFICIENTS = ("alpha_p", "alpha_n", "beta2")

#: Seo2021's five deterministic actions: -50 %, -25 %, keep, +25 %, +50 %.
FIVE_ACTIONS = (0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass(frozen=True)
class RatioLadder:
    """Five actions chosen by four increasing thresholds on a driving ratio r.

    ``r < t1`` -> ``factors[0]``; ``t1 <= r < t2`` -> ``factors[1]``; ``t2 <= r <= t3`` ->
    ``factors[2]``; ``t3 < r <= t4`` -> ``factors[3]``; ``r > t4`` -> ``factors[4]``. An undefined
    ratio (NaN) keeps the coefficient (factor 1, whatever ``factors[2]`` is).
    """

    thresholds: tuple[float, float, float, float]
    factors: tuple[float, float, float, float, float] = FIVE_ACTIONS

    def __post_init__(self) -> None:
        t = tuple(float(x) for x in self.thresholds)
        f = tuple(float(x) for x in self.factors)
        if len(t) != 4 or not (0 < t[0] < t[1] <= t[2] < t[3] < math.inf):
            raise LossError(
                f"RatioLadder: thresholds must be four finite numbers 0 < t1 < t2 <= t3 < t4, "
                f"got {self.thresholds!r}"
            )
        if len(f) != 5 or not all(0 < x < math.inf for x in f):
            raise LossError(
                f"RatioLadder: factors must be five finite numbers > 0, got {self.factors!r}"
            )
        object.__setattr__(self, "thresholds", t)
        object.__setattr__(self, "factors", f)

    @classmethod
    def symmetric(
        cls, outer: float, inner: float, factors: tuple[float, ...] = FIVE_ACTIONS
    ) -> RatioLadder:
        """The ladder with thresholds (1/outer, 1/inner, inner, outer), symmetric in log r."""
        if not (1 <= inner < outer):
            raise LossError(
                f"RatioLadder.symmetric: need 1 <= inner < outer, got inner={inner}, outer={outer}"
            )
        return cls((1 / outer, 1 / inner, inner, outer), factors)  # type: ignore[arg-type]

    def factor(self, ratio: float) -> float:
        """The multiplicative action for ``ratio`` (NaN gives 1)."""
        t1, t2, t3, t4 = self.thresholds
        if math.isnan(ratio):
            return 1.0
        if ratio < t1:
            return self.factors[0]
        if ratio < t2:
            return self.factors[1]
        if ratio <= t3:
            return self.factors[2]
        if ratio <= t4:
            return self.factors[3]
        return self.factors[4]


def _default_alpha_ladder() -> RatioLadder:
    return RatioLadder.symmetric(outer=15.0, inner=5.0)


def _default_beta2_ladder() -> RatioLadder:
    return RatioLadder.symmetric(outer=4.0, inner=2.0)


@dataclass(frozen=True)
class DeterministicRules:
    """The deterministic update of Seo2021 (Fig. 2b); docs/losses.md has the table.

    Args:
        alpha_p: ladder on <TP / FP>.
        alpha_n: ladder on <TP / FN>.
        beta2: ladder on <R_aN / P_aP> (weighted recall over weighted precision).
        freeze_false_positives: alpha_p is frozen when <FP> is below (``freeze_when="below"``)
            or above (``"above"``) this count.
        freeze_false_negatives: the same for alpha_n and <FN>.
        freeze_when: ``"below"`` (default, follows Seo2021's stated reason) or ``"above"``
            (Seo2021's caption taken literally).
        ratio_floor: denominators below this count as this (pixels); also the minimum
            predicted / target size for a ratio to be defined.
    """

    alpha_p: RatioLadder = field(default_factory=_default_alpha_ladder)
    alpha_n: RatioLadder = field(default_factory=_default_alpha_ladder)
    beta2: RatioLadder = field(default_factory=_default_beta2_ladder)
    freeze_false_positives: float = 5.0
    freeze_false_negatives: float = 1.0
    freeze_when: Literal["below", "above"] = "below"
    ratio_floor: float = 1.0

    def __post_init__(self) -> None:
        for name in COEFFICIENTS:
            if not isinstance(getattr(self, name), RatioLadder):
                raise LossError(
                    f"DeterministicRules: {name} must be a RatioLadder, got "
                    f"{type(getattr(self, name)).__name__}"
                )
        if self.freeze_when not in ("below", "above"):
            raise LossError(
                f"DeterministicRules: freeze_when must be 'below' or 'above', got "
                f"{self.freeze_when!r}"
            )
        for name in ("freeze_false_positives", "freeze_false_negatives"):
            value = getattr(self, name)
            if not 0 <= float(value) < math.inf:
                raise LossError(
                    f"DeterministicRules: {name} must be finite and >= 0, got {value!r}"
                )
        if not 0 < float(self.ratio_floor) < math.inf:
            raise LossError(
                f"DeterministicRules: ratio_floor must be finite and > 0, got {self.ratio_floor!r}"
            )

    def factors(self, metrics: Mapping[str, float]) -> tuple[float, float, float]:
        """The multiplicative actions for (alpha_p, alpha_n, beta2) from driving metrics."""
        fp, fn = metrics["false_positives"], metrics["false_negatives"]
        if self.freeze_when == "below":
            frozen_p, frozen_n = fp < self.freeze_false_positives, fn < self.freeze_false_negatives
        else:
            frozen_p, frozen_n = fp > self.freeze_false_positives, fn > self.freeze_false_negatives
        return (
            1.0 if frozen_p else self.alpha_p.factor(metrics["tp_over_fp"]),
            1.0 if frozen_n else self.alpha_n.factor(metrics["tp_over_fn"]),
            self.beta2.factor(metrics["recall_over_precision"]),
        )


def _bounds_pair(name: str, value: object) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise LossError(
            f"CoefficientBounds: {name} must be a pair (low, high), got {value!r}"
        ) from None
    if not (0 < lo <= hi < math.inf):
        raise LossError(
            f"CoefficientBounds: {name} must satisfy 0 < low <= high < inf, got ({lo}, {hi}); "
            "a multiplicative update can never leave 0, so the lower bound must be positive"
        )
    return lo, hi


@dataclass(frozen=True)
class CoefficientBounds:
    """Closed intervals [low, high] (0 < low <= high) the adaptive coefficients stay in."""

    alpha_p: tuple[float, float] = (0.05, 20.0)
    alpha_n: tuple[float, float] = (0.05, 20.0)
    beta2: tuple[float, float] = (0.05, 20.0)

    def __post_init__(self) -> None:
        for name in COEFFICIENTS:
            object.__setattr__(self, name, _bounds_pair(name, getattr(self, name)))

    @classmethod
    def of(
        cls, bounds: CoefficientBounds | Mapping[str, tuple[float, float]] | None
    ) -> CoefficientBounds:
        """Accept a :class:`CoefficientBounds`, a mapping of some coefficients, or ``None``."""
        if bounds is None:
            return cls()
        if isinstance(bounds, CoefficientBounds):
            return bounds
        if isinstance(bounds, Mapping):
            unknown = set(bounds) - set(COEFFICIENTS)
            if unknown:
                raise LossError(
                    f"CoefficientBounds: unknown coefficient(s) {sorted(unknown)}; the "
                    f"coefficients are {', '.join(COEFFICIENTS)}"
                )
            return cls(**bounds)  # type: ignore[arg-type]
        raise LossError(
            f"bounds must be a CoefficientBounds or a mapping like {{'alpha_p': (0.1, 10)}}, got "
            f"{type(bounds).__name__}"
        )

    def low(self) -> tuple[float, float, float]:
        return tuple(getattr(self, n)[0] for n in COEFFICIENTS)  # type: ignore[return-value]

    def high(self) -> tuple[float, float, float]:
        return tuple(getattr(self, n)[1] for n in COEFFICIENTS)  # type: ignore[return-value]

    def clamp_values(self, values: Sequence[float]) -> tuple[float, float, float]:
        """(alpha_p, alpha_n, beta2) clamped into the bounds."""
        return tuple(  # type: ignore[return-value]
            min(max(float(v), lo), hi) for v, lo, hi in zip(values, self.low(), self.high())
        )

    def clamp(self, coefficients: Tensor) -> Tensor:
        """``coefficients`` [..., 3] clamped into the bounds."""
        low = coefficients.new_tensor(self.low())
        high = coefficients.new_tensor(self.high())
        return torch.minimum(torch.maximum(coefficients, low), high)

    def check(self, values: Mapping[str, float]) -> None:
        """Raise :class:`LossError` if an initial coefficient lies outside its bounds."""
        for name in COEFFICIENTS:
            lo, hi = getattr(self, name)
            if not lo <= values[name] <= hi:
                raise LossError(
                    f"GLFLoss: initial {name}={values[name]} lies outside its adaptive bounds "
                    f"[{lo}, {hi}]; change the value or pass bounds={{'{name}': (low, high)}}"
                )


def driving_metrics(
    stats: GLFStats, alpha_p: float, alpha_n: float, ratio_floor: float = 1.0
) -> dict[str, float]:
    """Batch-averaged metrics of the adaptive strategies, from the [N, C] confusion sums.

    Returns floats: ``tp_over_fp``, ``tp_over_fn``, ``recall_over_precision`` (R_aN / P_aP),
    ``precision`` and ``recall`` (unweighted, soft), and the batch means ``true_positives``,
    ``false_positives``, ``false_negatives``. docs/losses.md says where each ratio is
    defined; an undefined average is NaN. Reads the sums once (one small copy to the host).
    """
    sums = torch.stack(tuple(stats), dim=-1).detach().to("cpu", torch.float64).numpy()
    tp, fp, fn = sums.reshape(-1, 3).T
    floor = float(ratio_floor)
    predicted = (tp + fp) >= floor
    actual = (tp + fn) >= floor
    ratios = np.stack([
        tp / np.maximum(fp, floor),
        tp / np.maximum(fn, floor),
        (tp + float(alpha_p) * fp) / np.maximum(tp + float(alpha_n) * fn, floor * 1e-12),
        tp / np.maximum(tp + fp, floor),
        tp / np.maximum(tp + fn, floor),
    ])
    defined = np.stack([predicted, actual, predicted & actual, predicted, actual])
    counts = defined.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, (ratios * defined).sum(1) / counts, math.nan)
    totals = sums.reshape(-1, 3).mean(0)
    names = ("tp_over_fp", "tp_over_fn", "recall_over_precision", "precision", "recall")
    metrics = dict(zip(names, means.tolist()))
    metrics.update(zip(("true_positives", "false_positives", "false_negatives"), totals.tolist()))
    return metrics


def tversky_projection(alpha_p: float, alpha_n: float, beta2: float) -> tuple[float, float]:
    """Seo2021's Fig. 7 map of (alpha_p, alpha_n, beta2) into the Tversky plane.

    GLF = 1 - 2 TP / (2 TP + a FP + b FN) with a = 2 alpha_p / (1 + beta2) and
    b = 2 beta2 alpha_n / (1 + beta2): Dice sits at (1, 1) and the Effectiveness losses on the
    line a + b = 2, as the caption says. (Seo2021 prints a = 2 alpha_p (1 + beta2) and
    b = 2 beta2 alpha_p / (1 + beta2) in the text, b = 2 beta2 alpha_p (1 + beta2) in the
    caption; neither puts Dice at (1, 1). We follow the algebra.) In MONAI's Tversky
    convention (TP weight 1) the same loss has alpha = a / 2 and beta = b / 2.
    """
    return 2 * alpha_p / (1 + beta2), 2 * beta2 * alpha_n / (1 + beta2)


class Trajectory:
    """Per-step records of the coefficients and the metrics that drive them.

    Each record holds ``step``, the coefficients after the step (``alpha_p``, ``alpha_n``,
    ``beta2``), their Tversky-plane projection (``alpha_p_tversky``, ``alpha_n_tversky``,
    Seo2021's Fig. 7), the multiplicative actions chosen (``factor_alpha_p`` ..., before the
    bounds apply), the step's
    ``loss`` and the driving metrics of :func:`driving_metrics` (Seo2021's Fig. 6), plus
    strategy-specific entries. All values are floats.
    """

    def __init__(self) -> None:
        self._rows: list[dict[str, float]] = []

    def append(
        self,
        coefficients: Sequence[float],
        factors: Sequence[float],
        metrics: Mapping[str, float],
        **extra: float,
    ) -> None:
        """Record one step: coefficients after it, factors applied, metrics, extras."""
        alpha_p, alpha_n, beta2 = (float(c) for c in coefficients)
        a, b = tversky_projection(alpha_p, alpha_n, beta2)
        row = {"step": float(len(self._rows)), "alpha_p": alpha_p, "alpha_n": alpha_n}
        row.update(beta2=beta2, alpha_p_tversky=a, alpha_n_tversky=b)
        for name, factor in zip(COEFFICIENTS, factors):
            row[f"factor_{name}"] = float(factor)
        row.update({k: float(v) for k, v in metrics.items()})
        row.update({k: float(v) for k, v in extra.items()})
        self._rows.append(row)

    def rows(self) -> list[dict[str, float]]:
        """Every record (a copy), oldest first."""
        return [dict(row) for row in self._rows]

    def column(self, name: str) -> list[float]:
        """One entry of every record, e.g. ``trajectory.column("alpha_p")`` for a plot."""
        if self._rows and name not in self._rows[0]:
            raise KeyError(f"no {name!r} in the trajectory; entries: {', '.join(self._rows[0])}")
        return [row[name] for row in self._rows]

    def clear(self) -> None:
        """Forget every record."""
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)
