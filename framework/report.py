"""Study reports: PNG plots and one HTML page, written from a study file (read-only).

Plots: the best value so far against completed trials (with every trial's value and the
running median of all trials, as in seed 004 Fig. 2.10), the best value so far against wall
time, the objective against each parameter (shaded by training budget; ordinal and categorical
parameters as evenly spaced categories in the space's order), and the learning curves that
trials reported (value per epoch or resource level, coloured by the loss or another
categorical parameter; a trial that reported one value is a dot).

For model-based searchers (``bayes``, ``bohb``), whose suggestions carry the surrogate's
prediction in ``tag["model"]`` (``mean`` and ``std`` in the told units, ``relevance`` per
parameter), two more plots: the prediction made before each trial with its 95 % band against
the observed value (seed 004 Fig. 2.9), with the fraction of observed values inside the band,
and each parameter's relevance (the GP's inverse length-scale). Studies without model tags get
neither.

For trials that return metrics beside their value (see :mod:`medtune.study.executors`): the
lesion Dice per size bin of the best trial of each loss (seed 002 Fig. 4), when trials report
``lesion_dice_<bin>``, and the adaptive GLF coefficient trajectories (``glf_*`` series, seed
002 Fig. 6) of the best trial that reports them. Tasks whose trials carry their own metrics
(regions, regression, quality, nas) add their figures through :data:`TASK_FIGURES`.

For a study whose configuration has a ``[replay]`` table (see :mod:`medtune.config`): the
listed searchers replayed many times over the study's tabulated values (seed 004 sec. 2.4,
table 2.3, :mod:`medtune.search.replay`), as a table of draws per goal and a plot of the mean
regret after each draw. The result is kept in ``replay.json`` in the report folder and
recomputed only when the trials or the ``[replay]`` table change.

:func:`write_comparison` puts several studies side by side (seed 004 Fig. 2.10 across
methods): per searcher, over its studies (seeds), the best value so far and the running median
of all trials against trials and against wall time, and the best value per searcher.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.config import ConfigError, parse_config
from medtune.errors import MedtuneError
from medtune.search.replay import TabulatedObjective, format_table, replay
from medtune.search.space import Categorical, Float, Int, Ordinal, SearchSpace
from medtune.study.store import StudyStore, Trial, TrialState
from medtune.tasks.segmentation import LESION_BINS
from medtune.tables import ResultTable, format_config, format_number, study_table

#: The model plot appears once at least this many finished trials carry a model prediction.
MIN_MODEL_TRIALS = 3
#: Half-width of the prediction band in predictive standard deviations (a 95 % normal interval).
BAND_Z = 1.96
#: Learning curves are coloured by a categorical or ordinal parameter with at most this many
#: values among the trials (else by trial, with a colour bar).
MAX_CURVE_COLOURS = 10
#: Without a search space, an integer parameter taking at most this many values is drawn as
#: categories (it is most likely an ordinal one, e.g. widths 4, 8, 16).
MAX_INTEGER_CATEGORIES = 8
#: A category longer than this many characters is shortened (ending in "…") on a plot's axis
#: or legend.
MAX_LABEL = 24
#: How the adaptive GLF coefficient series (seed 002 Fig. 6 and 7) are labelled in plots.
GLF_LABELS = {
    "glf_alpha_p": r"$\alpha_P$",
    "glf_alpha_n": r"$\alpha_N$",
    "glf_beta2": r"$\beta^2$",
    "glf_alpha_p_tversky": r"$\alpha_P$ (Tversky plane)",
    "glf_alpha_n_tversky": r"$\alpha_N$ (Tversky plane)",
}


def _finished(store: StudyStore) -> list[Trial]:
    trials = [t for t in store.trials() if t.completion_order is not None]
    return sorted(trials, key=lambda t: t.completion_order)


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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _prediction(tag: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(mean, std)`` of the model prediction in a trial's tag, or None when it has none
    (a random initial suggestion, another searcher) or it is not a finite mean and std >= 0."""
    model = tag.get("model")
    if not isinstance(model, Mapping):
        return None
    mean, std = model.get("mean"), model.get("std")
    if not (_finite(mean) and _finite(std) and std >= 0):
        return None
    return float(mean), float(std)


def model_calibration(trials: Sequence[Trial], direction: str) -> dict[str, Any]:
    """How well the searcher's model predicted the trials, before they ran.

    ``trials`` in the order to plot (the report passes finished trials in completion order);
    ``direction`` is the study's. Predictions are stored in the units the searcher was told
    (the negated value for a ``maximize`` study) and returned in the objective's units.

    Returns a dict: ``predictions`` (trials with a model prediction), ``compared`` (those that
    completed with a value; failed and pruned trials are not compared), ``inside`` (observed
    values within mean ± 1.96 std), ``coverage`` (``inside / compared``, None when nothing was
    compared; a calibrated model gives about 0.95) and ``points``: per predicted trial a dict
    with ``position`` (1-based, in ``trials``), ``trial`` (id), ``mean``, ``std`` and
    ``observed`` (None when not compared).
    """
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', not {direction!r}")
    sign = -1.0 if direction == "maximize" else 1.0
    points = []
    for position, trial in enumerate(trials, start=1):
        prediction = _prediction(trial.tag)
        if prediction is None:
            continue
        observed = trial.value if (trial.state == TrialState.COMPLETE
                                   and _finite(trial.value)) else None
        points.append({"position": position, "trial": trial.id, "mean": sign * prediction[0],
                       "std": prediction[1], "observed": observed})
    compared = [p for p in points if p["observed"] is not None]
    inside = sum(abs(p["observed"] - p["mean"]) <= BAND_Z * p["std"] for p in compared)
    return {
        "predictions": len(points),
        "compared": len(compared),
        "inside": inside,
        "coverage": inside / len(compared) if compared else None,
        "points": points,
    }


def model_relevance(trials: Sequence[Trial]) -> dict[str, Any] | None:
    """Parameter relevance from the latest trial (highest id) whose tag has one.

    Relevance is the inverse length-scale of each parameter in the GP's ARD kernel (inputs
    scaled to the unit cube, so comparable across parameters). Returns ``trial`` (its id),
    ``observations`` (what the model was fitted on, None if the tag does not say) and
    ``relevance``: parameter name -> relevance normalised so the largest is 1, largest first
    (entries that are not finite numbers >= 0 are left out). None when no trial has a
    relevance with a positive entry.
    """
    for trial in sorted(trials, key=lambda t: t.id, reverse=True):
        model = trial.tag.get("model")
        if not isinstance(model, Mapping) or not isinstance(model.get("relevance"), Mapping):
            continue
        raw = {str(name): float(r) for name, r in model["relevance"].items()
               if _finite(r) and r >= 0}
        if not raw or max(raw.values()) <= 0:
            continue
        largest = max(raw.values())
        observations = model.get("observations")
        return {
            "trial": trial.id,
            "observations": int(observations) if _finite(observations) else None,
            "relevance": dict(sorted(((name, r / largest) for name, r in raw.items()),
                                     key=lambda item: (-item[1], item[0]))),
        }
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(label: str) -> str:
    """``label`` cut to :data:`MAX_LABEL` characters (ending in "…" when cut)."""
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _save(fig, folder: Path, name: str) -> str:
    """Lay out, write ``folder/name`` and close ``fig``; returns ``name``."""
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(folder / name, dpi=100)
    plt.close(fig)
    return name


def _study_space(store: StudyStore) -> SearchSpace | None:
    """The search space of the study's stored configuration (None without one that parses):
    the plots draw ordinal and categorical parameters as categories, in the space's order."""
    config = _stored_config(store)
    if config is None:
        return None
    try:
        return SearchSpace.from_dict(config.space)
    except MedtuneError:
        return None


def _plot(store: StudyStore, trials: list[Trial], folder: Path) -> list[str]:
    plt = _pyplot()
    maximize = store.direction == "maximize"
    values = [t.value if t.state == TrialState.COMPLETE else None for t in trials]
    order = list(range(1, len(trials) + 1))
    space = _study_space(store)
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
    names.append(_save(fig, folder, "best_by_trial.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    if trials:
        start = min(t.started for t in trials)
        times = [((t.finished or t.started) - start).total_seconds() / 60 for t in trials]
        ax.step(times, [float("nan") if b is None else b for b in best_so_far(values, maximize)],
                where="post", color="C0")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("best objective so far")
    ax.set_title("best so far over time")
    names.append(_save(fig, folder, "best_by_time.png"))

    fig = parameters_figure(trials, space)
    if fig is not None:
        names.append(_save(fig, folder, "parameters.png"))
    fig = learning_curves_figure(trials, space)
    if fig is not None:
        names.append(_save(fig, folder, "learning_curves.png"))
    return names


def parameters_figure(trials: Sequence[Trial], space: SearchSpace | None = None):
    """The objective of the COMPLETE ``trials`` against each parameter, shaded by training
    budget (a matplotlib figure, None without a completed trial). Ordinal and categorical
    parameters of ``space`` are drawn as categories, evenly spaced in the space's order."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names_seen = sorted({name for t in complete for name in t.config})
    if not complete or not names_seen:
        return None
    plt = _pyplot()
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
    marker; failed trials are dotted."""
    curves = [t for t in trials if t.intermediate]
    if not curves:
        return None
    plt = _pyplot()
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
    failed = any(t.state == TrialState.FAIL for t in curves)
    if key is not None:
        handles = [Line2D([], [], color=colours[value], marker="o", ms=4,
                          label=f"{name} = {_short(value)}") for value in values]
        if any(name not in t.config for t in curves):
            handles.append(Line2D([], [], color="0.5", label=f"{name} not set"))
        if failed:
            handles.append(Line2D([], [], color="0.3", ls=":", label="failed trial"))
        ax.legend(handles=handles, fontsize=8, loc="best")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(1, max(len(curves), 2)), plt.get_cmap("viridis"))
        fig.colorbar(mappable, ax=ax, label="trial (in completion order)")
        if failed:
            ax.legend(handles=[Line2D([], [], color="0.3", ls=":", label="failed trial")],
                      fontsize=8, loc="best")
    ax.set_xlabel("epoch / resource")
    ax.set_ylabel("reported value")
    ax.set_title(f"learning curves reported by {len(curves)} trials"
                 + (" (a dot: a trial that reported one value)"
                    if any(len(t.intermediate) == 1 for t in curves) else ""))
    return fig


def _ranked(trials: Sequence[Trial], direction: str) -> list[Trial]:
    """COMPLETE trials, best first; among equal budgets by value, larger budgets first (a
    configuration trained longer says more than its early stop)."""
    sign = -1.0 if direction == "maximize" else 1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value)]
    return sorted(complete, key=lambda t: (-(t.resource or 0.0), sign * t.value))


#: the figures of tasks and plugins whose trials carry their own metrics (each draws nothing
#: for trials without them): "module:function" taking (trials, folder)
TASK_FIGURES = (
    "medtune.tasks.regions:report_figures",
    "medtune.tasks.regression:report_figures",
    "medtune.tasks.quality:report_figures",
    "medtune.plugins.nas.analysis:report_figures",
)


def config_lines(config: Mapping[str, Any], width: int = 90, lines: int = 3) -> list[str]:
    """A trial's configuration as ``key=value`` lines for a plot title (see
    :func:`medtune.tables.format_config`): floats to three significant digits, wrapped at
    ``width`` characters, at most ``lines`` lines (the last ends in "..." when more would
    follow)."""
    wrapped = textwrap.wrap(format_config(config, digits=3), width)
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 3].rstrip(", ") + "..."
    return wrapped


def _trajectory(name: str, value: Any) -> bool:
    """A per-step series (the adaptive GLF coefficients), not a per-case or per-pixel list."""
    return isinstance(value, list) and name.startswith("glf_")


def _task_figures(trials: list[Trial], folder: Path) -> list[tuple[str, str]]:
    import importlib

    figures = []
    for reference in TASK_FIGURES:
        module, function = reference.split(":")
        figures += getattr(importlib.import_module(module), function)(trials, folder)
    return figures


def _plot_metrics(store: StudyStore, trials: list[Trial], folder: Path) -> list[tuple[str, str]]:
    """Plots of the metrics trials returned: lesion Dice by size per loss, and the series of
    the best trial that has any. ``(file, caption)`` for each plot written."""
    plt = _pyplot()
    ranked = _ranked(trials, store.direction)
    figures = []
    bins = [name for name, _, _ in LESION_BINS]
    by_loss: dict[str, Trial] = {}
    for trial in ranked:
        if any(f"lesion_dice_{b}" in trial.metrics for b in bins):
            by_loss.setdefault(str(trial.config.get("loss", "all trials")), trial)
    if by_loss:
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(by_loss)
        for k, (loss, trial) in enumerate(sorted(by_loss.items())):
            heights = [trial.metrics.get(f"lesion_dice_{b}", math.nan) for b in bins]
            ax.bar([i + k * width for i in range(len(bins))], heights, width,
                   label=f"{loss} (trial {trial.id})")
        labels = [f"{name}\n{low}-{high} px" if high else f"{name}\n≥ {low} px"
                  for name, low, high in LESION_BINS]
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(bins))], labels)
        ax.set_ylabel("mean lesion Dice")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title("lesion Dice by size: best trial of each loss")
        fig.tight_layout()
        fig.savefig(folder / "lesion_sizes.png", dpi=100)
        plt.close(fig)
        figures.append(("lesion_sizes.png", "Lesion Dice by lesion size, best trial of each loss "
                        "(at its largest budget)"))
    with_series = next((t for t in ranked if any(_trajectory(k, v) for k, v in t.metrics.items())),
                       None)
    if with_series is not None:
        _save(trajectories_figure(with_series), folder, "trajectories.png")
        figures.append(("trajectories.png", f"Per-step trajectories of trial {with_series.id}, "
                        "the best trial that records any (e.g. adaptive GLF coefficients)"))
    figures.extend(_plot_tversky_plane(ranked, folder))
    return figures


def glf_label(name: str) -> str:
    """How a ``glf_*`` series is labelled in plots: :data:`GLF_LABELS`, else the name without
    its prefix, in words."""
    return GLF_LABELS.get(name, name.removeprefix("glf_").replace("_", " "))


def trajectories_figure(trial: Trial):
    """The per-step series of ``trial`` (the adaptive GLF coefficients, seed 002 Fig. 6) as a
    matplotlib figure: one labelled line each (a Tversky-plane projection dashed, in its
    coefficient's colour), on a log axis when every value is positive."""
    plt = _pyplot()
    series = {k: v for k, v in trial.metrics.items() if _trajectory(k, v)}
    known = [name for name in GLF_LABELS if name in series]
    names = known + sorted(set(series) - set(known))
    fig, ax = plt.subplots(figsize=(7, 4))
    colours: dict[str, str] = {}
    for name in names:
        base = name.removesuffix("_tversky")
        colour = colours.setdefault(base, f"C{len(colours)}")
        values = series[name]
        ax.plot(range(1, len(values) + 1), values, color=colour,
                ls="--" if name.endswith("_tversky") else "-", label=glf_label(name))
    logarithmic = all(v > 0 for values in series.values() for v in values if _finite(v))
    if logarithmic:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("coefficient value" + (" (log scale)" if logarithmic else ""))
    ax.legend(fontsize=8)
    ax.set_title("\n".join([f"trajectories of trial {trial.id}", *config_lines(trial.config)]),
                 fontsize=8)
    return fig


def _plot_tversky_plane(ranked: Sequence[Trial], folder: Path) -> list[tuple[str, str]]:
    """The adaptive GLF coefficients of the best trial that records them, projected on the
    Tversky plane (``glf_alpha_p_tversky`` against ``glf_alpha_n_tversky``, seed 002 Fig. 7),
    coloured by training step, with the fixed points of the Dice loss (1, 1) and of the
    Effectiveness loss (the line alpha_p + alpha_n = 2), on log axes when the trajectory spans
    more than a factor 20. ``(file, caption)`` of the plot, or nothing when no trial in
    ``ranked`` (best first) has the series."""
    names = ("glf_alpha_p_tversky", "glf_alpha_n_tversky")
    trial = next((t for t in ranked if all(isinstance(t.metrics.get(n), list) and t.metrics[n]
                                           for n in names)), None)
    if trial is None:
        return []
    plt = _pyplot()
    alpha_p, alpha_n = (trial.metrics[n] for n in names)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    shown = [v for v in alpha_p + alpha_n if _finite(v)] + [0.5, 2.0]
    low, high = min(shown), max(shown)
    # log axes when the trajectory spans decades (the adaptive rules multiply the coefficients)
    logarithmic = low > 0 and high / low > 20
    line = [0.02 * k for k in range(1, 100)] if logarithmic else [0.0, 2.0]
    ax.plot(line, [2 - x for x in line], color="0.6", lw=1.5,
            label=r"Effectiveness ($\alpha_P + \alpha_N = 2$)")
    ax.plot(alpha_p, alpha_n, color="0.8", lw=0.8, zorder=1)
    points = ax.scatter(alpha_p, alpha_n, c=range(1, len(alpha_p) + 1), cmap="viridis", s=14,
                        zorder=2)
    ax.scatter([1], [1], marker="*", s=120, color="C3", zorder=3, label="Dice (1, 1)")
    fig.colorbar(points, ax=ax, label="training step")
    if logarithmic:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low / 1.5, high * 1.5)
        ax.set_ylim(low / 1.5, high * 1.5)
    else:
        ax.set_xlim(0, high * 1.05)
        ax.set_ylim(0, high * 1.05)
    ax.set_xlabel(glf_label(names[0]))
    ax.set_ylabel(glf_label(names[1]))
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"GLF coefficients in the Tversky plane: trial {trial.id} "
                 f"({trial.config.get('loss', '')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "tversky_plane.png", dpi=100)
    plt.close(fig)
    return [("tversky_plane.png", f"Adaptive GLF coefficients of trial {trial.id}, the best trial "
             "that records them, mapped to the Tversky plane during training (seed 002 Fig. 7; "
             "colour: training step). A fixed Dice loss sits at the red star, a fixed "
             "Effectiveness loss on the grey line, a fixed Tversky loss at one point.")]


def _plot_model(store: StudyStore, trials: list[Trial], folder: Path) -> list[tuple[str, str]]:
    """The model plots of a study whose searcher tagged its predictions: ``(file, caption)``
    for each plot written (none for a study without model tags)."""
    figures = []
    calibration = model_calibration(trials, store.direction)
    if calibration["predictions"] >= MIN_MODEL_TRIALS:
        figures.append(("model.png", _plot_calibration(calibration, trials, folder)))
    relevance = model_relevance(store.trials())
    if relevance is not None:
        figures.append(("relevance.png", _plot_relevance(relevance, folder)))
    return figures


def calibration_figure(calibration: dict[str, Any], trials: Sequence[Trial]):
    """Predicted values with their 95 % band against the observed values over ``trials`` (what
    :func:`model_calibration` returned for them), as a matplotlib figure. The value axis holds
    the whole band, however wide: a band cut at the axis would hide what the model did not
    know."""
    plt = _pyplot()
    points = calibration["points"]
    xs = [p["position"] for p in points]
    means = [p["mean"] for p in points]
    half = [BAND_Z * p["std"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(xs, [m - h for m, h in zip(means, half)], [m + h for m, h in zip(means, half)],
                    color="C3", alpha=0.2, lw=0, label="95 % band (mean ± 1.96 std)")
    ax.plot(xs, means, color="C3", marker=".", lw=1, label="predicted before the trial")
    compared = [p for p in points if p["observed"] is not None]
    if compared:
        ax.scatter([p["position"] for p in compared], [p["observed"] for p in compared],
                   s=16, color="C0", zorder=3, label="observed")
    predicted = {p["position"] for p in points}
    unpredicted = [(position, t.value) for position, t in enumerate(trials, start=1)
                   if position not in predicted and t.state == TrialState.COMPLETE
                   and _finite(t.value)]
    if unpredicted:
        ax.scatter(*zip(*unpredicted), s=12, color="0.7", zorder=2,
                   label="observed, no prediction (e.g. random)")
    for p in points:
        if p["observed"] is None:
            ax.axvline(p["position"], color="C3", alpha=0.25, lw=1)
    shown = ([m - h for m, h in zip(means, half)] + [m + h for m, h in zip(means, half)]
             + [p["observed"] for p in compared] + [value for _, value in unpredicted])
    low, high = min(shown), max(shown)
    margin = 0.05 * (high - low) or 0.1 * abs(high) or 1.0
    ax.set_ylim(low - margin, high + margin)
    ax.set_xlim(0.5, len(trials) + 0.5)
    ax.set_xlabel("completed trials")
    ax.set_ylabel("objective")
    coverage = calibration["coverage"]
    ax.set_title("model prediction against observed value" + (
        f" ({coverage:.0%} inside the band)" if coverage is not None else ""))
    ax.legend(loc="best", fontsize=8)
    return fig


def _plot_calibration(calibration: dict[str, Any], trials: list[Trial], folder: Path) -> str:
    """Write ``model.png`` (see :func:`calibration_figure`); returns its caption."""
    _save(calibration_figure(calibration, trials), folder, "model.png")
    coverage = calibration["coverage"]
    caption = ("The searcher's model: the value it predicted for each trial before the trial ran "
               "(red, with the shaded 95 % band, mean ± 1.96 predictive std) against the value "
               "observed (blue; grey: trials proposed without the model). ")
    if coverage is None:
        caption += "No predicted trial has completed yet, so none is compared."
    else:
        caption += (f"{calibration['inside']} of {calibration['compared']} observed values "
                    f"({coverage:.0%}) lie inside the band; a well-calibrated model has about "
                    "95 %.")
    skipped = calibration["predictions"] - calibration["compared"]
    if skipped:
        caption += (f" {skipped} predicted trial(s) failed or were pruned (red lines) and are "
                    "not counted.")
    return caption


def _plot_relevance(relevance: dict[str, Any], folder: Path) -> str:
    """Horizontal bars of each parameter's relevance, largest on top; returns the caption."""
    plt = _pyplot()
    names = list(relevance["relevance"])[::-1]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.35 * len(names)))
    ax.barh(names, [relevance["relevance"][name] for name in names], color="C0")
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("relevance (inverse length-scale, largest = 1)")
    ax.set_title(f"parameter relevance (model of trial {relevance['trial']})")
    fig.tight_layout()
    fig.savefig(folder / "relevance.png", dpi=100)
    plt.close(fig)
    fitted = (f", fitted on {relevance['observations']} observations"
              if relevance["observations"] is not None else "")
    return (f"Parameter relevance in the model that proposed trial {relevance['trial']}{fitted}: "
            "the inverse length-scale of each parameter in the Gaussian process's automatic "
            "relevance determination (ARD) kernel, normalised so the largest is 1. A long bar "
            "means the objective changes quickly along that parameter; a short one, that the "
            "model found it matters little.")


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
        ax.set_xticks(range(len(categories)), [_short(c) for c in categories],
                      rotation=30 if any(len(c) > 3 for c in categories) else 0)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set_xlabel(name)


def _figures_html(title: str, figures: list[tuple[str, str]]) -> str:
    if not figures:
        return ""
    return (f"\n<h2>{title}</h2>" if title else "") + "".join(
        f'\n<figure><img src="{name}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in figures
    )


def _results_html(table: ResultTable) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table.header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                     for row in table.text_rows())
    return (f"\n<h2>Results</h2>\n<p>{html.escape(table.title)} (mean ± standard deviation over "
            f"the completed trials of each row; n trials)</p>\n<table><tr>{head}</tr>\n{body}\n"
            "</table>")


#: The replay results kept in a report folder (see :func:`study_replay`).
REPLAY_FILE = "replay.json"


class ReportError(MedtuneError, ValueError):
    """A report or comparison was asked of studies that cannot give it."""


@dataclass(frozen=True)
class StudyReplay:
    """Searchers replayed over a finished study: ``table`` is seed 004's table 2.3 (draws per
    goal, mean ± std and worst, next to the random-search theory) as text; ``regret`` the mean
    regret after each draw per searcher; ``configurations`` the tabulated configurations with
    a valid value, of ``population`` in the space."""

    table: str
    runs: int
    configurations: int
    population: int
    regret: dict[str, list[float]]


def _stored_config(store: StudyStore):
    """The study's stored configuration, or None when it has none that parses."""
    if not store.config_text.strip():
        return None
    try:
        return parse_config(store.config_text, f"{store.path} (stored configuration)")
    except ConfigError:
        return None


def study_replay(store: StudyStore, folder: Path) -> StudyReplay | None:
    """Replay the searchers of the study's ``[replay]`` table over its completed trials.

    Each configuration's value is the mean of its completed trials; failed configurations and
    those never run count as failures. Reuses ``folder/replay.json`` when it was computed from
    the same trials and settings. None when the study has no ``[replay]`` table or no
    completed trial yet.
    """
    config = _stored_config(store)
    if config is None or config.replay is None:
        return None
    spec = config.replay
    trials = [t for t in store.trials() if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return None
    results = sorted((json.dumps(t.config, sort_keys=True),
                      t.value if t.state == TrialState.COMPLETE else None) for t in trials)
    fingerprint = hashlib.sha256(json.dumps(
        [results, config.space, store.direction, config.seed, list(spec.searchers), spec.runs,
         [g.label for g in spec.goals], spec.options], sort_keys=True, default=str,
    ).encode()).hexdigest()
    cache = folder / REPLAY_FILE
    if cache.exists():
        try:
            kept = json.loads(cache.read_text())
            if kept.get("fingerprint") == fingerprint:
                return StudyReplay(**kept["replay"])
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable or older cache is recomputed
    space = SearchSpace.from_dict(config.space, where=f"{store.path}: space")
    if not space.is_finite:
        raise ReportError(f"{store.path}: [replay] needs a finite space (ordinal and categorical "
                          "parameters, no floats); make the space finite or remove [replay]")
    objective = TabulatedObjective.from_results(
        space, [(t.config, t.value if t.state == TrialState.COMPLETE else None) for t in trials],
        direction=store.direction)
    reports = [replay(name, objective, runs=spec.runs, seed=config.seed, goals=spec.goals,
                      **spec.options.get(name, {}))
               for name in spec.searchers]
    result = StudyReplay(
        table=format_table(reports),
        runs=spec.runs,
        configurations=objective.total,
        population=objective.population,
        regret={r.searcher: [float(v) for v in r.mean_regret] for r in reports},
    )
    cache.write_text(json.dumps({"fingerprint": fingerprint, "replay": result.__dict__}))
    return result


def _plot_replay(result: StudyReplay, direction: str, folder: Path) -> list[tuple[str, str]]:
    """The mean regret after each draw of every replayed searcher; ``(file, caption)``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in result.regret.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("draws (configurations evaluated)")
    ax.set_ylabel("mean regret (gap to the best value)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"replayed searches: {result.runs} runs each over {result.configurations} "
                 "tabulated models")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "replay_regret.png", dpi=100)
    plt.close(fig)
    return [("replay_regret.png",
             f"Mean regret after each draw over {result.runs} replays of each searcher on the "
             f"study's {result.configurations} tabulated models (seed 004 sec. 2.4): the gap "
             f"between the best value of the space and the best value found so far "
             f"({'higher' if direction == 'maximize' else 'lower'} values are better, so the "
             "regret is their absolute difference). A run that reached every goal keeps its "
             "last regret.")]


def _replay_html(result: StudyReplay) -> str:
    return (f"\n<h2>Replay</h2>\n<p>Draws needed to reach each goal, mean ± std and worst over "
            f"{result.runs} replays per searcher over the {result.configurations} models the "
            f"study trained (of {result.population} in the space), with uniform random search "
            f"without replacement in theory (seed 004 table 2.3, eq. 2.20-2.22).</p>\n"
            f"<pre>{html.escape(result.table)}</pre>")


@dataclass(frozen=True)
class MethodSummary:
    """The best value each study of one searcher reached: ``best`` per study, in the order
    given, with their mean and sample standard deviation (0 for one study)."""

    searcher: str
    studies: tuple[str, ...]
    best: tuple[float, ...]
    mean: float
    std: float


def _curves(trials: list[Trial], maximize: bool) -> dict[str, list[float]]:
    """Per finished trial (completion order): best so far, running median, wall minutes."""
    values = [t.value if t.state == TrialState.COMPLETE else None for t in trials]
    start = min(t.started for t in trials)
    return {
        "best": [math.nan if b is None else b for b in best_so_far(values, maximize)],
        "median": [math.nan if m is None else m for m in running_median(values)],
        "minutes": [((t.finished or t.started) - start).total_seconds() / 60 for t in trials],
    }


def _band(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Median, minimum and maximum over curves of unequal length. A shorter curve (a study
    that stopped after fewer trials) holds its last value: otherwise the median would jump
    whenever a study drops out, and a median of best-so-far curves could fall."""
    length = max(len(c) for c in curves)
    median, low, high = [], [], []
    for i in range(length):
        column = [c[min(i, len(c) - 1)] for c in curves if c]
        column = [v for v in column if not math.isnan(v)]
        median.append(statistics.median(column) if column else math.nan)
        low.append(min(column) if column else math.nan)
        high.append(max(column) if column else math.nan)
    return median, low, high


def _on_grid(minutes: list[float], values: list[float], grid: list[float]) -> list[float]:
    """A step curve (value held from each time on, the last one to the end of the grid, as
    a stopped study keeps its result) sampled at ``grid``; NaN before its start."""
    out, j = [], -1
    for time in grid:
        while j + 1 < len(minutes) and minutes[j + 1] <= time:
            j += 1
        out.append(values[j] if 0 <= j else math.nan)
    return out


def write_comparison(study_paths: Sequence[str | Path], folder: str | Path) -> tuple[Path, list[MethodSummary]]:
    """Compare studies by searcher (seed 004 Fig. 2.10 across methods): write
    ``comparison.png`` and ``comparison.html`` into ``folder``; returns the HTML path and the
    best value per searcher over its studies.

    The figure has four panels: best value so far and running median of all trials, against
    completed trials and against wall time; per searcher the median over its studies (seeds)
    with the range between the lowest and highest shaded. A study that stopped earlier than
    others (fewer trials, or less time) keeps its last value to the end of the panel. All
    studies must share a direction.
    """
    if not study_paths:
        raise ReportError("compare needs at least one study file")
    folder = Path(folder)
    groups: dict[str, list[tuple[str, dict[str, list[float]], float]]] = {}
    directions = set()
    for path in study_paths:
        with StudyStore(path, read_only=True) as store:
            config = _stored_config(store)
            searcher = config.searcher if config is not None else "unknown searcher"
            trials = _finished(store)
            best = store.best_trial()
            if best is None:
                raise ReportError(f"{path}: no completed trial to compare; run or resume the "
                                  "study first, or leave it out")
            directions.add(store.direction)
            groups.setdefault(searcher, []).append(
                (store.name, _curves(trials, store.direction == "maximize"), best.value))
    if len(directions) > 1:
        raise ReportError("the studies do not share a direction (some maximise, some minimise); "
                          "compare studies of one objective")
    maximize = directions.pop() == "maximize"
    summaries = []
    for searcher, runs in groups.items():
        best = tuple(b for _, _, b in runs)
        summaries.append(MethodSummary(
            searcher, tuple(name for name, _, _ in runs), best, statistics.fmean(best),
            statistics.stdev(best) if len(best) > 1 else 0.0))

    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    end = max(c["minutes"][-1] for runs in groups.values() for _, c, _ in runs) or 1.0
    grid = [end * k / 200 for k in range(201)]
    for colour, (searcher, runs) in enumerate(groups.items()):
        style = {"color": f"C{colour}"}
        for row, key in enumerate(("best", "median")):
            median, low, high = _band([c[key] for _, c, _ in runs])
            order = list(range(1, len(median) + 1))
            axes[row][0].plot(order, median, label=f"{searcher} ({len(runs)} studies)", **style)
            axes[row][0].fill_between(order, low, high, alpha=0.2, lw=0, **style)
            timed = _band([_on_grid(c["minutes"], c[key], grid) for _, c, _ in runs])
            axes[row][1].plot(grid, timed[0], **style)
            axes[row][1].fill_between(grid, timed[1], timed[2], alpha=0.2, lw=0, **style)
    axes[0][0].set_ylabel("best value so far")
    axes[1][0].set_ylabel("running median of all trials")
    axes[1][0].set_xlabel("completed trials")
    axes[1][1].set_xlabel("wall time (minutes)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{', '.join(groups)}: median over studies, range shaded "
                 f"({'max' if maximize else 'min'}imize)")
    fig.tight_layout()
    fig.savefig(folder / "comparison.png", dpi=100)
    plt.close(fig)

    rows = "\n".join(
        f"<tr><td>{html.escape(m.searcher)}</td><td>{len(m.best)}</td>"
        f"<td>{format_number(m.mean)} ± {format_number(m.std, 2)}</td>"
        f"<td>{html.escape(', '.join(format_number(b) for b in m.best))}</td></tr>"
        for m in summaries)
    page = folder / "comparison.html"
    page.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medtune comparison</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Comparison of {len(study_paths)} studies</h1>
<table><tr><th>searcher</th><th>studies</th><th>best value, mean ± std</th><th>per study</th></tr>
{rows}
</table>
<figure><img src="comparison.png" alt="comparison"><figcaption>Per searcher, the median over
its studies (seeds) of the best value so far (top) and of the running median of all trials
(bottom), against completed trials (left) and wall time (right); the shaded band spans the
lowest to the highest study; a study that stopped earlier keeps its last value. Seed 004
Fig. 2.10.</figcaption></figure>
</body></html>
""")
    return page, summaries


def write_report(study_path: str | Path, folder: str | Path | None = None) -> Path:
    """Write ``index.html`` and the PNG plots of a study; returns the HTML path.

    ``folder`` defaults to ``<study file without suffix>_report`` next to the study.
    """
    study_path = Path(study_path)
    folder = Path(folder) if folder is not None else study_path.with_name(study_path.stem + "_report")
    # read-only: a report never changes the study; a missing or foreign file fails here,
    # before anything is written
    store = StudyStore(study_path, read_only=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        trials = _finished(store)
        plots = _plot(store, trials, folder)
        model_section = _figures_html("Model", _plot_model(store, trials, folder))
        metrics_section = _figures_html("Metrics", _plot_metrics(store, trials, folder)
                                        + _task_figures(trials, folder))
        results = study_table(store)
        results_section = _results_html(results) if results is not None else ""
        replayed = study_replay(store, folder)
        if replayed is not None:
            results_section += _replay_html(replayed) + _figures_html(
                "", _plot_replay(replayed, store.direction, folder))
            (folder / "replay_table.txt").write_text(replayed.table + "\n")
        best = store.best_trial()
        counts = {state.value: sum(t.state == state for t in store.trials()) for state in TrialState}
        rows = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
                t.id, t.state.value, "" if t.value is None else format_number(t.value),
                "" if t.resource is None else f"{t.resource:g}",
                "" if t.duration is None else f"{t.duration:.1f}",
                format_config(t.config),
                format_config(t.metrics) if t.metrics else "",
                (t.failure_reason.value if t.failure_reason else ""),
            )) + "</tr>"
            for t in sorted(store.trials(), key=lambda t: t.id)
        )
        best_text = (
            f"trial {best.id}: {format_number(best.value)} with "
            f"{html.escape(format_config(best.config))}"
            if best is not None else "no completed trial yet"
        )
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medtune study {html.escape(store.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Study {html.escape(store.name)}</h1>
<p>Direction: {store.direction}. Trials: {html.escape(json.dumps(counts))}.</p>
<p><b>Best:</b> {best_text}</p>{results_section}
{''.join(f'<p><img src="{name}" alt="{name}"></p>' for name in plots)}{metrics_section}{model_section}
<h2>Trials</h2>
<table><tr><th>id</th><th>state</th><th>value</th><th>resource</th><th>seconds</th><th>config</th><th>metrics</th><th>failure</th></tr>
{rows}
</table></body></html>
"""
        (folder / "index.html").write_text(page)
    finally:
        store.close()
    return folder / "index.html"
