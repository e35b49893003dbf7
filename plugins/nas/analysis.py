"""Statistics and figures of a weight-sharing study (Pourchot2022, sec. 4.3-4.4).

- :func:`spearman` - Spearman's rank correlation between proxy and standalone scores with a
  percentile-bootstrap confidence interval (table 4.3);
- :func:`regret_curve` - the test regret of Pourchot2022, eq. 4.1 after each evaluation;
- :func:`cohens_d` and :func:`welch` - effect size (mean difference over the pooled standard
  deviation) and Welch's t-test p-value between two samples of regrets (table 4.4);
- :func:`report_figures` - the proxy-vs-standalone scatter coloured by the number of nodes
  feeding the output (good practice "visualisation of correlations", Fig. 4.3) and the regret
  curves of weight-sharing and plain random search (Fig. 4.2), from the metrics of the
  ``nas`` task's trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from medtune.tasks import pyplot

__all__ = ["Correlation", "cohens_d", "report_figures", "spearman", "regret_curve", "welch"]


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho with its (1 - alpha) bootstrap confidence interval and p-value."""

    rho: float
    low: float
    high: float
    p_value: float


def spearman(proxy: Sequence[float], standalone: Sequence[float], bootstrap: int = 1000,
             alpha: float = 0.05, seed: int = 0) -> Correlation:
    """Spearman's rank correlation of ``proxy`` against ``standalone`` scores.

    The interval is the percentile bootstrap over architectures (``bootstrap`` resamples);
    ``bootstrap=0`` skips it (low = high = nan). A constant ``proxy`` (e.g. an untrained
    super-net scoring every architecture alike) ranks nothing: rho = 0, interval [0, 0],
    p-value 1.
    """
    x = np.asarray(proxy, dtype=np.float64)
    y = np.asarray(standalone, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise ValueError(f"spearman needs two 1-D score lists of equal length >= 3, got shapes {x.shape} and {y.shape}")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return Correlation(0.0, 0.0, 0.0, 1.0)
    result = scipy_stats.spearmanr(x, y)
    rho, p_value = float(result.statistic), float(result.pvalue)
    if bootstrap <= 0:
        return Correlation(rho, math.nan, math.nan, p_value)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        index = rng.integers(0, x.size, x.size)
        if np.all(x[index] == x[index[0]]) or np.all(y[index] == y[index[0]]):
            continue  # a constant resample has no rank correlation
        value = scipy_stats.spearmanr(x[index], y[index]).statistic
        if np.isfinite(value):
            draws.append(value)
    if not draws:
        return Correlation(rho, math.nan, math.nan, p_value)
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Correlation(rho, float(low), float(high), p_value)


def regret_curve(validation: Sequence[float], test: Sequence[float], best_test: float) -> np.ndarray:
    """Test regret after each evaluation (Pourchot2022, eq. 4.1).

    ``validation[t]`` and ``test[t]`` are the scores of the t-th evaluated architecture (the
    search sees only ``validation``; higher is better); the regret at t is ``best_test`` minus
    the test score of the best-validated architecture among the first t + 1.
    """
    validation = np.asarray(validation, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if validation.shape != test.shape or validation.ndim != 1 or validation.size == 0:
        raise ValueError("validation and test must be non-empty 1-D lists of equal length")
    curve = np.empty(validation.size)
    best = -np.inf
    chosen = math.nan
    for t, (value, held_out) in enumerate(zip(validation, test)):
        if value > best:
            best, chosen = value, held_out
        curve[t] = best_test - chosen
    return curve


def cohens_d(first: Sequence[float], second: Sequence[float]) -> float:
    """Mean of ``first`` minus mean of ``second`` over their pooled standard deviation."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Cohen's d needs at least two values per sample, got {a.size} and {b.size}")
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    difference = a.mean() - b.mean()
    if pooled == 0:
        return 0.0 if difference == 0 else math.copysign(math.inf, difference)
    return float(difference / pooled)


def welch(first: Sequence[float], second: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test that the two samples have equal means."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's t-test needs at least two values per sample, got {a.size} and {b.size}")
    if a.var() == 0 and b.var() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def report_figures(trials: list, folder: Path) -> list[tuple[str, str]]:
    """Figures of a ``nas`` study written into ``folder``, as ``(file, caption)``.

    ``nas_scatter.png``: BNS-FT and NO-FT proxy accuracy against the tabulated standalone
    validation accuracy for the first trial of each sub-space, coloured by the number of nodes
    feeding the output. ``nas_regret.png``: mean test regret against search seconds of plain
    random search and of weight-sharing random search, per sub-space. ``[]`` when the trials
    carry none of these metrics.
    """
    from medtune.study.store import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and "proxy_bnsft" in t.metrics]
    if not complete:
        return []
    plt = pyplot()
    folder = Path(folder)
    firsts: dict[str, object] = {}
    for trial in sorted(complete, key=lambda t: t.id):
        firsts.setdefault(str(trial.config.get("subspace", "-")), trial)
    figures = []
    fig, axes = plt.subplots(2, len(firsts), figsize=(3.4 * len(firsts) + 1, 6.4), squeeze=False,
                             layout="constrained")
    for column, (name, trial) in enumerate(firsts.items()):
        standalone = np.asarray(trial.metrics["standalone"])
        colours = np.asarray(trial.metrics["output_nodes"])
        for row, mode in enumerate(("bnsft", "noft")):
            ax = axes[row][column]
            points = ax.scatter(standalone, np.asarray(trial.metrics[f"proxy_{mode}"]), c=colours,
                                s=8, cmap="viridis", vmin=0, vmax=3)
            rho = trial.metrics.get(f"rho_{mode}", math.nan)
            ax.set_title(f"{name}, {'BNS-FT' if mode == 'bnsft' else 'NO-FT'} (rho {rho:.2f})", fontsize=9)
            ax.set_xlabel("standalone validation accuracy", fontsize=8)
            if column == 0:
                ax.set_ylabel("super-net proxy accuracy", fontsize=8)
    fig.colorbar(points, ax=axes, label="nodes feeding the output", shrink=0.8)
    fig.savefig(folder / "nas_scatter.png", dpi=100)
    plt.close(fig)
    figures.append(("nas_scatter.png", "Super-net proxy accuracy (BNS-FT top, NO-FT bottom) against "
                    "standalone accuracy from the shipped table, first super-net of each sub-space "
                    "(Pourchot2022, Fig. 4.3), coloured by the number of nodes feeding the output"))
    with_curves = [t for t in complete if "regret_curve_rs" in t.metrics]
    if with_curves:
        groups: dict[str, list] = {}
        for trial in with_curves:
            groups.setdefault(str(trial.config.get("subspace", "-")), []).append(trial)
        fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.2), squeeze=False)
        for ax, (name, members) in zip(axes[0], groups.items()):
            rs = np.mean([t.metrics["regret_curve_rs"] for t in members], axis=0)
            seconds = np.mean([t.metrics["rs_seconds_per_draw"] for t in members]) * np.arange(1, rs.size + 1)
            ax.plot(seconds, 100 * rs, label="random search (standalone)")
            ws = np.mean([t.metrics["regret_curve_ws"] for t in members], axis=0)
            fixed = np.mean([t.metrics["ws_seconds_fixed"] for t in members])
            per_eval = np.mean([t.metrics["ws_seconds_per_eval"] for t in members])
            ax.plot(fixed + per_eval * np.arange(1, ws.size + 1), 100 * ws, label="weight-sharing RS")
            ax.set_xscale("log")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("search seconds", fontsize=8)
        axes[0][0].set_ylabel("test regret (x100)", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "nas_regret.png", dpi=100)
        plt.close(fig)
        figures.append(("nas_regret.png", "Mean test regret (Pourchot2022, eq. 4.1, x100) against "
                        "search seconds of plain random search on the table and of weight-sharing random "
                        "search (super-net training and proxy evaluations included), per sub-space "
                        "(Pourchot2022, Fig. 4.2)"))
    return figures
