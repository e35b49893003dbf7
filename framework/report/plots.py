"""Plots of any study: the best value so far against completed trials (with every trial's
value and the running median of all trials, as in Bertrand2019 Fig. 2.10) and against wall
time, the objective against each parameter (shaded by training budget; ordinal and categorical
parameters as evenly spaced categories in the space's order), and the learning curves that
trials reported (value per epoch or resource level, coloured by the loss or another
categorical parameter; a trial that reported one value is a dot)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune.report.source import study_space
from medtune.search.space import Categorical, Float, Int, Ordinal, SearchSpace
from medtune.study.store import StudyStore, Trial, TrialState
from medtune.tables import format_number
from medtune.tasks import pyplot

#: Learning curves are coloured by a categorical or ordinal parameter with at most this many
#: values among the trials (else by trial, with a colour bar).
MAX_CURVE_COLOURS = 10
#: Without a search space, an integer parameter taking at most this many values is drawn as
#: categories (it is most likely an ordinal one, e.g. widths 4, 8, 16).
MAX_INTEGER_CATEGORIES = 8
#: A category longer than this many characters is shortened (ending in "…") on a plot's axis
#: or legend.
MAX_LABEL = 24


def best_so_far(values: list[float | None], maximize: bool) -> list[float | None]:
    """Running best of ``values`` (None for failed trials is skipped)."""
    best, out = None, []
    for value in values:
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        out.append(best)
    return out


def running_median(values: list[float | None]) -> list[float | None]:
    """Median of all successful values up to each position."""
    seen, out = [], []
    for value in values:
        if value is not None:
            seen.append(value)
        out.append(statistics.median(seen) if seen else None)
    return out


def short_label(label: str) -> str:
    """``label`` cut to :data:`MAX_LABEL` characters (ending in "…" when cut)."""
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def save_figure(fig, folder: Path, name: str) -> str:
    """Lay out, write ``folder/name`` and close ``fig``; returns ``name``."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(folder / name, dpi=100)
    plt.close(fig)
    return name


def plot_study(store: StudyStore, trials: list[Trial], folder: Path) -> list[str]:
    """Write the plots of every study into ``folder`` (``trials``: the finished ones, in
    completion order); returns their file names."""
    plt = pyplot()
    maximize = store.direction == "maximize"
    values = [t.value if t.state == TrialState.COMPLETE else None for t in trials]
    order = list(range(1, len(trials) + 1))
    space = study_space(store)
    names = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ok = [(i, v) for i, v in zip(order, values) if v is not None]
    if ok:
        ax.scatter(*zip(*ok), s=14, color="0.6", label="trial value")
    ax.step(order, [float("nan") if b is None else b for b in best_so_far(values, maximize)],
            where="post", color="C0", label="best so far")
    ax.plot(order, [float("nan") if m is None else m for m in running_median(values)],
            color="C1", label="running median of all trials")
    failed = [i for i, t in zip(order, trials) if t.state == TrialState.FAIL]
    for i in failed:
        ax.axvline(i, color="C3", alpha=0.25, lw=1)
    ax.set_xlabel("completed trials")
    ax.set_ylabel("objective")
    ax.set_title(f"{store.name}: best so far ({'max' if maximize else 'min'}imize)"
                 + (f"; {len(failed)} failed (red)" if failed else ""))
    ax.legend(loc="best", fontsize=8)
    names.append(save_figure(fig, folder, "best_by_trial.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    if trials:
        start = min(t.started for t in trials)
        times = [((t.finished or t.started) - start).total_seconds() / 60 for t in trials]
        ax.step(times, [float("nan") if b is None else b for b in best_so_far(values, maximize)],
                where="post", color="C0")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("best objective so far")
    ax.set_title("best so far over time")
    names.append(save_figure(fig, folder, "best_by_time.png"))

    fig = parameters_figure(trials, space)
    if fig is not None:
        names.append(save_figure(fig, folder, "parameters.png"))
    fig = learning_curves_figure(trials, space)
    if fig is not None:
        names.append(save_figure(fig, folder, "learning_curves.png"))
    return names


def parameters_figure(trials: Sequence[Trial], space: SearchSpace | None = None):
    """The objective of the COMPLETE ``trials`` against each parameter, shaded by training
    budget (a matplotlib figure, None without a completed trial). Ordinal and categorical
    parameters of ``space`` are drawn as categories, evenly spaced in the space's order."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names_seen = sorted({name for t in complete for name in t.config})
    if not complete or not names_seen:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names_seen), figsize=(3.2 * len(names_seen), 3.2),
                             squeeze=False)
    for ax, name in zip(axes[0], names_seen):
        having = [t for t in complete if name in t.config]
        parameter = space[name] if space is not None and name in space.names else None
        _parameter_panel(ax, name, [(t.config[name], t.value) for t in having],
                         [t.resource or 0.0 for t in having], parameter)
    axes[0][0].set_ylabel("objective")
    budgets = sorted({t.resource for t in complete if t.resource is not None})
    note = (f"; darker = larger budget ({', '.join(f'{b:g}' for b in budgets)})"
            if len(budgets) > 1 else "")
    fig.suptitle("objective against each parameter (completed trials" + note + ")")
    return fig


def _colour_key(trials: Sequence[Trial], space: SearchSpace | None) -> tuple[str, list[str]] | None:
    """The parameter that colours the learning curves and its values as shown, in order: the
    ``loss`` if it varies, else the first categorical, else the first ordinal parameter that
    takes 2 to :data:`MAX_CURVE_COLOURS` values among ``trials``. Without a space, parameters
    whose values are all strings count as categorical. None when no parameter qualifies."""
    candidates = []
    if space is not None:
        for parameter in space.parameters:
            if isinstance(parameter, (Categorical, Ordinal)):
                categorical = isinstance(parameter, Categorical)
                values = parameter.choices if categorical else parameter.values
                rank = 0 if parameter.name == "loss" else 1 if categorical else 2
                candidates.append((rank, parameter.name, [format_number(v) for v in values]))
    else:
        for name in sorted({name for t in trials for name in t.config}):
            values = [t.config[name] for t in trials if name in t.config]
            if all(isinstance(v, str) for v in values):
                candidates.append((0 if name == "loss" else 1, name, sorted(set(values))))
    for _, name, values in sorted(candidates, key=lambda c: c[0]):
        seen = {format_number(t.config[name]) for t in trials if name in t.config}
        used = [v for v in dict.fromkeys(values) if v in seen]
        if 2 <= len(used) <= MAX_CURVE_COLOURS:
            return name, used
    return None


def learning_curves_figure(trials: Sequence[Trial], space: SearchSpace | None = None):
    """The value each trial reported per epoch or resource level (a matplotlib figure, None
    when no trial reported any). Curves are coloured by a parameter (see :func:`_colour_key`,
    with a legend) or else by trial (with a colour bar); a trial that reported one value is a
    marker; failed trials are dotted; a cross marks where a pruned trial was stopped."""
    curves = [t for t in trials if t.intermediate]
    if not curves:
        return None
    plt = pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7, 4))
    key = _colour_key(curves, space)
    if key is not None:
        name, values = key
        colours = {value: f"C{i}" for i, value in enumerate(values)}
        colour_of = [colours.get(format_number(t.config[name]), "0.5") if name in t.config
                     else "0.5" for t in curves]
    else:
        cmap = plt.get_cmap("viridis")
        colour_of = [cmap(i / max(len(curves) - 1, 1)) for i in range(len(curves))]
    for trial, colour in zip(curves, colour_of):
        steps = sorted(trial.intermediate)
        ax.plot(steps, [trial.intermediate[s] for s in steps], color=colour, alpha=0.7, lw=1,
                ls=":" if trial.state == TrialState.FAIL else "-",
                marker="o" if len(steps) == 1 else None, ms=4)
        stop = trial.pruned_at
        if stop is not None and stop in trial.intermediate:
            ax.plot([stop], [trial.intermediate[stop]], color=colour, marker="x", ms=7, mew=1.5,
                    ls="none")
    failed = any(t.state == TrialState.FAIL for t in curves)
    pruned = any(t.pruned_at is not None for t in curves)
    stopped = [Line2D([], [], color="0.3", marker="x", ls="none", label="pruned here")] \
        if pruned else []
    if key is not None:
        handles = [Line2D([], [], color=colours[value], marker="o", ms=4,
                          label=f"{name} = {short_label(value)}") for value in values]
        if any(name not in t.config for t in curves):
            handles.append(Line2D([], [], color="0.5", label=f"{name} not set"))
        if failed:
            handles.append(Line2D([], [], color="0.3", ls=":", label="failed trial"))
        ax.legend(handles=handles + stopped, fontsize=8, loc="best")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(1, max(len(curves), 2)), plt.get_cmap("viridis"))
        fig.colorbar(mappable, ax=ax, label="trial (in completion order)")
        if failed or pruned:
            ax.legend(handles=[Line2D([], [], color="0.3", ls=":", label="failed trial")]
                      * failed + stopped, fontsize=8, loc="best")
    ax.set_xlabel("epoch / resource")
    ax.set_ylabel("reported value")
    ax.set_title(f"learning curves reported by {len(curves)} trials"
                 + (" (a dot: a trial that reported one value)"
                    if any(len(t.intermediate) == 1 for t in curves) else ""))
    return fig


def _parameter_panel(ax, name: str, points: list[tuple[object, float]], budgets: list[float],
                     parameter: Any = None) -> None:
    """Objective against one parameter. An ordinal or categorical ``parameter``, integers
    taking few values and anything not a number are categories: evenly spaced, one labelled
    tick per value (an ordinal's or a categorical's every value, in the space's order; otherwise
    the values seen, sorted). Other numbers are a scatter, on a log axis when the parameter is
    log-scaled (or, without ``parameter``, when the values span more than a factor 100)."""
    values = [v for _, v in points]
    style = {"s": 14, "c": budgets, "cmap": "Blues", "vmin": -0.5 * max(budgets + [1.0]),
             "edgecolors": "0.3", "linewidths": 0.3}
    xs = [x for x, _ in points]
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    if isinstance(parameter, Ordinal):
        categories = [format_number(v) for v in parameter.values]
    elif isinstance(parameter, Categorical):
        categories = [format_number(v) for v in parameter.choices]
    elif parameter is None and numbers and all(isinstance(x, int) for x in xs) \
            and len(set(xs)) <= MAX_INTEGER_CATEGORIES:
        categories = [format_number(v) for v in sorted(set(xs))]
    elif parameter is None and not numbers:
        categories = sorted({format_number(x) for x in xs})
    else:
        categories = None
    if categories is None:
        floats = [float(x) for x in xs]
        ax.scatter(floats, values, **style)
        log = (parameter.log if isinstance(parameter, (Float, Int))
               else min(floats) > 0 and max(floats) / min(floats) > 100)
        if log and min(floats) > 0:
            ax.set_xscale("log")
            if max(floats) / min(floats) < 30:  # within a decade or so: label 1, 2, 5 x 10^k
                from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        categories = list(dict.fromkeys(categories))
        position = {c: i for i, c in enumerate(categories)}
        ax.scatter([position.get(format_number(x), math.nan) for x in xs], values, **style)
        ax.set_xticks(range(len(categories)), [short_label(c) for c in categories],
                      rotation=30 if any(len(c) > 3 for c in categories) else 0)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set_xlabel(name)
