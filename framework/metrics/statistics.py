"""Regression errors, correlations, effect sizes, t-tests and bootstrap intervals.

MAE, RMSE and Pearson r score a quality regressor against ratings (Kofler2022); Spearman ρ and
Cohen's d compare rankings and groups (Pourchot2022, ch. 4.3); t-tests and bootstrap confidence
intervals report differences (Pourchot2022, table 2.1). ``scipy.stats`` does the heavy lifting
(``pearsonr``, ``spearmanr``, ``ttest_ind``, ``ttest_rel``, ``norm``); this module adds the
intervals and the checks.

Correlation intervals use the Fisher z transform: ``z = atanh(r)`` is near normal with
standard error ``1/sqrt(n-3)`` for Pearson and ``sqrt(1.06/(n-3))`` for Spearman (Fieller,
Hartley & Pearson 1957); with three pairs or fewer the interval is the uninformative (-1, 1).
Bootstrap intervals are percentile intervals from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from medtune.metrics.inputs import MetricError, as_array

Alternative = Literal["two-sided", "less", "greater"]


def _vector(values: Any, what: str, minimum: int = 1) -> np.ndarray:
    array = as_array(values, what).astype(np.float64).reshape(-1)
    if array.size < minimum:
        raise MetricError(f"{what} has {array.size} values; this statistic needs at least "
                          f"{minimum}")
    if not np.isfinite(array).all():
        raise MetricError(f"{what} contains NaN or infinity; drop or impute those values first")
    return array


def _pair(prediction: Any, target: Any, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    first = _vector(prediction, "prediction", minimum)
    second = _vector(target, "target", minimum)
    if first.shape != second.shape:
        raise MetricError(f"prediction has {first.size} values but target has {second.size}; "
                          "pass paired values of the same cases")
    return first, second


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise MetricError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return float(confidence)


def mean_absolute_error(prediction: Any, target: Any) -> float:
    """MAE: mean of ``|prediction - target|`` over paired values."""
    first, second = _pair(prediction, target)
    return float(np.mean(np.abs(first - second)))


def root_mean_squared_error(prediction: Any, target: Any) -> float:
    """RMSE: square root of the mean of ``(prediction - target)²`` over paired values."""
    first, second = _pair(prediction, target)
    return float(np.sqrt(np.mean((first - second) ** 2)))


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient with its p-value and a Fisher-z confidence interval."""

    coefficient: float
    p_value: float
    low: float
    high: float
    confidence: float

    def __float__(self) -> float:
        return self.coefficient


def _fisher_interval(coefficient: float, n: int, standard_error_squared: float,
                     confidence: float) -> tuple[float, float]:
    if n <= 3:
        return -1.0, 1.0
    if abs(coefficient) >= 1:
        return coefficient, coefficient
    z = math.atanh(coefficient)
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt(standard_error_squared / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def _correlation(method: Callable[..., Any], prediction: Any, target: Any,
                 standard_error_squared: float, confidence: float) -> Correlation:
    first, second = _pair(prediction, target, minimum=2)
    level = _check_confidence(confidence)
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        raise MetricError("a correlation is undefined when prediction or target is constant; "
                          "pass values that vary")
    result = method(first, second)
    coefficient = float(result.statistic)
    low, high = _fisher_interval(coefficient, first.size, standard_error_squared, level)
    return Correlation(coefficient, float(result.pvalue), low, high, level)


def pearson(prediction: Any, target: Any, *, confidence: float = 0.95) -> Correlation:
    """Pearson r (``scipy.stats.pearsonr``) with a Fisher-z interval, SE = 1/sqrt(n-3)."""
    return _correlation(stats.pearsonr, prediction, target, 1.0, confidence)


def spearman(prediction: Any, target: Any, *, confidence: float = 0.95) -> Correlation:
    """Spearman ρ (``scipy.stats.spearmanr``) with a Fisher-z interval, SE = sqrt(1.06/(n-3))."""
    return _correlation(stats.spearmanr, prediction, target, 1.06, confidence)


def cohens_d(first: Any, second: Any) -> float:
    """Cohen's d: ``(mean(first) - mean(second))`` over the pooled standard deviation.

    Pooled variance ``((n1-1)s1² + (n2-1)s2²) / (n1+n2-2)`` with sample variances (ddof=1).
    """
    a = _vector(first, "first", minimum=2)
    b = _vector(second, "second", minimum=2)
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    if pooled == 0:
        raise MetricError("Cohen's d is undefined when both groups are constant (pooled "
                          "standard deviation 0)")
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


@dataclass(frozen=True)
class TTestResult:
    """A t-test: the statistic, its p-value and degrees of freedom."""

    statistic: float
    p_value: float
    degrees_of_freedom: float


def t_test(first: Any, second: Any, *, equal_variance: bool = False, paired: bool = False,
           alternative: Alternative = "two-sided") -> TTestResult:
    """Welch's (default), Student's (``equal_variance=True``) or the paired t-test (scipy).

    ``alternative="greater"`` tests ``mean(first) > mean(second)`` (Pourchot2022 reports
    one-sided tests).
    """
    a = _vector(first, "first", minimum=2)
    b = _vector(second, "second", minimum=2)
    if alternative not in ("two-sided", "less", "greater"):
        raise MetricError(f"alternative must be 'two-sided', 'less' or 'greater', got "
                          f"{alternative!r}")
    if paired:
        if a.shape != b.shape:
            raise MetricError(f"a paired t-test needs as many values in both groups, got "
                              f"{a.size} and {b.size}")
        result = stats.ttest_rel(a, b, alternative=alternative)
    else:
        result = stats.ttest_ind(a, b, equal_var=equal_variance, alternative=alternative)
    return TTestResult(float(result.statistic), float(result.pvalue), float(result.df))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    confidence: float


def bootstrap_ci(statistic: Callable[..., float], *samples: Any, n_resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0, paired: bool = True) -> Interval:
    """Percentile bootstrap confidence interval of ``statistic(*samples)``.

    With ``paired=True`` (default) all samples have one length and are resampled with the same
    indices, keeping pairs together (e.g. ``bootstrap_ci(pearson_r, predictions, ratings)``);
    with ``paired=False`` each sample is resampled on its own (e.g. a difference of means).
    Resamples where the statistic is undefined (raises :class:`MetricError` or returns NaN)
    are skipped; at least half must succeed. Seeded: one seed gives one interval.
    """
    if not samples:
        raise MetricError("bootstrap_ci needs at least one sample after the statistic")
    level = _check_confidence(confidence)
    if n_resamples < 10:
        raise MetricError(f"n_resamples must be at least 10, got {n_resamples}")
    arrays = [as_array(sample, f"sample {index}") for index, sample in enumerate(samples)]
    if any(array.ndim == 0 for array in arrays):
        raise MetricError("a sample is a single number; pass arrays whose first axis holds the "
                          "values to resample")
    sizes = {len(array) for array in arrays}
    if min(sizes) == 0:
        raise MetricError("a sample is empty; the bootstrap needs values to resample")
    if paired and len(sizes) > 1:
        raise MetricError(f"paired samples must have one length, got {sorted(sizes)}; pass "
                          "paired=False to resample each sample on its own")
    estimate = float(statistic(*arrays))
    generator = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        if paired:
            index = generator.integers(0, len(arrays[0]), len(arrays[0]))
            resampled = [array[index] for array in arrays]
        else:
            resampled = [array[generator.integers(0, len(array), len(array))] for array in arrays]
        try:
            value = float(statistic(*resampled))
        except MetricError:
            continue
        if math.isfinite(value):
            values.append(value)
    if len(values) < n_resamples / 2:
        raise MetricError(f"the statistic was undefined on {n_resamples - len(values)} of "
                          f"{n_resamples} resamples; use more data or a statistic defined on "
                          "every resample")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), level)


def pearson_r(prediction: Any, target: Any) -> float:
    """Pearson r alone, as a float (for :func:`bootstrap_ci` and metric plugins)."""
    return pearson(prediction, target).coefficient


def spearman_rho(prediction: Any, target: Any) -> float:
    """Spearman ρ alone, as a float (for :func:`bootstrap_ci` and metric plugins)."""
    return spearman(prediction, target).coefficient
