"""Random-search theory (Bertrand2019, sec. 2.4.1): how many draws to hit one of the best models.

A space holds ``total`` (N) configurations, ``acceptable`` (M) of which satisfy the goal (the
best M, or the top alpha %). Random search draws uniformly *without replacement*; with
``replacement=True`` the formulas are those of independent draws. With n draws:

- eq. 2.20, :func:`prob_none_acceptable`: P(Y = n) = prod_{k=0}^{n-1} (1 - M / (N - k)), the
  probability that none of the first n draws is acceptable;
- eq. 2.21, :func:`prob_first_acceptable`: P(X = n) = M / (N - n) * P(Y = n), the probability
  that the first n draws are not acceptable and draw n + 1 is;
- eq. 2.22, :func:`prob_acceptable_within`: P(X <= n) = sum_{k=0}^{n-1} P(X = k)
  = 1 - P(Y = n), the probability that one of the first n draws is acceptable;
- :func:`draws_needed`: the smallest n with P(X <= n) > p, which :func:`table_2_2` tabulates
  for Bertrand2019's table 2.2 (N = 100 000).

:func:`expected_draws` and :func:`std_draws` give the mean and standard deviation of the
number of draws up to and including the first acceptable one, (N + 1) / (M + 1) without
replacement: 300.5 for the best of Bertrand2019's 600 models (sec. 2.4.3 quotes "300").
"""

from __future__ import annotations

import math

import numpy as np

from medtune.errors import MedtuneError

#: Bertrand2019, table 2.2: draws needed to have drawn a model in the top alpha % with probability
#: greater than p, in a space of 100 000 combinations; ``{alpha: {p: draws}}``.
TABLE_2_2_PRINTED: dict[float, dict[float, int]] = {
    0.01: {0.5: 69, 0.95: 298, 0.99: 458},
    0.05: {0.5: 14, 0.95: 59, 0.99: 90},
    0.10: {0.5: 7, 0.95: 29, 0.99: 44},
}


#: relative margin under which P(X <= n) = p counts as a tie, not as "greater than p"
_TIE_MARGIN = 1e-12


class TheoryError(MedtuneError, ValueError):
    """Arguments outside the domain of the random-search formulas."""


def _check(acceptable: int, total: int) -> None:
    for name, value in (("acceptable", acceptable), ("total", total)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TheoryError(f"{name} must be an integer, got {value!r}")
    if not 1 <= acceptable <= total:
        raise TheoryError(
            f"need 1 <= acceptable <= total, got acceptable={acceptable} and total={total}"
        )


def _check_draws(draws: int, total: int, replacement: bool) -> None:
    if not isinstance(draws, (int, np.integer)) or isinstance(draws, bool) or draws < 0:
        raise TheoryError(f"the number of draws must be an integer >= 0, got {draws!r}")
    if not replacement and draws > total:
        raise TheoryError(
            f"cannot draw {draws} distinct configurations from {total} (use replacement=True "
            "for independent draws)"
        )


def acceptable_count(fraction: float, total: int) -> int:
    """M for "the top ``fraction``" of ``total`` configurations: ceil(fraction * N), at least 1."""
    if not 0 < fraction <= 1:
        raise TheoryError(f"a top fraction is in (0, 1], got {fraction!r}")
    return max(1, math.ceil(fraction * total - 1e-9))


def log_prob_none_acceptable(
    draws: int, acceptable: int, total: int, replacement: bool = False
) -> float:
    """Natural log of :func:`prob_none_acceptable` (-inf when it is 0)."""
    _check(acceptable, total)
    _check_draws(draws, total, replacement)
    if replacement:
        if acceptable == total:
            return 0.0 if draws == 0 else -math.inf
        return draws * math.log1p(-acceptable / total)
    if draws > total - acceptable:
        return -math.inf
    return math.fsum(math.log1p(-acceptable / (total - k)) for k in range(draws))


def prob_none_acceptable(draws: int, acceptable: int, total: int, replacement: bool = False) -> float:
    """Eq. 2.20: probability that none of ``draws`` draws is one of the ``acceptable`` configurations."""
    return math.exp(log_prob_none_acceptable(draws, acceptable, total, replacement))


def prob_first_acceptable(
    draws: int, acceptable: int, total: int, replacement: bool = False
) -> float:
    """Eq. 2.21: probability that the first ``draws`` draws miss and draw ``draws + 1`` hits."""
    none = prob_none_acceptable(draws, acceptable, total, replacement)
    if replacement:
        return acceptable / total * none
    if draws >= total:
        return 0.0
    return acceptable / (total - draws) * none


def prob_acceptable_within(
    draws: int, acceptable: int, total: int, replacement: bool = False
) -> float:
    """Eq. 2.22: probability that one of the first ``draws`` draws is acceptable.

    Computed as 1 - eq. 2.20 (the sum of eq. 2.21 over the first ``draws`` draws).
    """
    return -math.expm1(log_prob_none_acceptable(draws, acceptable, total, replacement))


def draws_needed(
    probability: float, acceptable: int, total: int, replacement: bool = False
) -> int:
    """The fewest draws n such that P(X <= n) (eq. 2.22) is greater than ``probability``.

    A probability equal to ``probability`` up to rounding (e.g. 300 draws for the best of 600
    at p = 0.5) does not count as greater.
    """
    _check(acceptable, total)
    if not 0 <= probability < 1:
        raise TheoryError(f"probability must be in [0, 1), got {probability!r}")
    # need log P(Y = n) < log(1 - p); the margin makes exact ties (P = p) count as not enough
    target = math.log1p(-probability) - _TIE_MARGIN
    if replacement:
        if acceptable == total:
            return 1
        n = max(0, math.floor(target / math.log1p(-acceptable / total)) - 1)
        while log_prob_none_acceptable(n, acceptable, total, True) >= target:
            n += 1
        return n
    # log P(Y = n) for n = 0 .. N - M + 1 (the last one is -inf: every miss has been drawn)
    with np.errstate(divide="ignore"):
        remaining = total - np.arange(total - acceptable + 1, dtype=np.float64)
        steps = np.log1p(-acceptable / remaining)
    log_none = np.concatenate([[0.0], np.cumsum(steps)])
    return int(np.argmax(log_none < target))


def expected_draws(acceptable: int, total: int, replacement: bool = False) -> float:
    """Mean number of draws up to and including the first acceptable one.

    (N + 1) / (M + 1) without replacement, N / M with replacement.
    """
    _check(acceptable, total)
    if replacement:
        return total / acceptable
    return (total + 1) / (acceptable + 1)


def std_draws(acceptable: int, total: int, replacement: bool = False) -> float:
    """Standard deviation of the number of draws up to and including the first acceptable one.

    Without replacement, the first of M marked items in a random order of N sits at position
    X with variance M (N - M) (N + 1) / ((M + 1)^2 (M + 2)); with replacement X is geometric.
    """
    _check(acceptable, total)
    m, n = acceptable, total
    if replacement:
        q = m / n
        return math.sqrt(1 - q) / q
    return math.sqrt(m * (n - m) * (n + 1) / ((m + 1) ** 2 * (m + 2)))


def table_2_2(
    total: int = 100_000,
    fractions: tuple[float, ...] = (0.01, 0.05, 0.10),
    probabilities: tuple[float, ...] = (0.5, 0.95, 0.99),
    replacement: bool = False,
) -> dict[float, dict[float, int]]:
    """Bertrand2019, table 2.2: ``{fraction: {p: draws}}``, the draws needed to have drawn a
    configuration in the top ``fraction`` with probability greater than ``p``.

    The defaults reproduce the printed table (:data:`TABLE_2_2_PRINTED`) exactly.
    """
    return {
        fraction: {
            p: draws_needed(p, acceptable_count(fraction, total), total, replacement)
            for p in probabilities
        }
        for fraction in fractions
    }


def format_table_2_2(table: dict[float, dict[float, int]] | None = None) -> str:
    """Table 2.2 as aligned text, rows "Top x%" and columns "p > ..."."""
    table = table_2_2() if table is None else table
    probabilities = list(next(iter(table.values())))
    header = ["", *(f"p > {p:g}" for p in probabilities)]
    rows = [[f"Top {100 * f:g}%", *(str(table[f][p]) for p in probabilities)] for f in table]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    return "\n".join(lines)
