"""The searcher's model in a report, for model-based searchers (``bayes``, ``bohb``), whose
suggestions carry the surrogate's prediction in ``tag["model"]`` (``mean`` and ``std`` in the
told units, ``relevance`` per parameter): the prediction made before each trial with its 95 %
band against the observed value (Bertrand2019 Fig. 2.9), with the fraction of observed values
inside the band, and each parameter's relevance (the GP's inverse length-scale). Studies
without model tags get neither plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medtune.report.plots import save_figure
from medtune.study.store import StudyStore, Trial, TrialState
from medtune.tasks import Figure, pyplot

#: The model plot appears once at least this many finished trials carry a model prediction.
MIN_MODEL_TRIALS = 3
#: Half-width of the prediction band in predictive standard deviations (a 95 % normal interval).
BAND_Z = 1.96


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


def plot_model(store: StudyStore, trials: list[Trial], folder: Path) -> list[Figure]:
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
    plt = pyplot()
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
    save_figure(calibration_figure(calibration, trials), folder, "model.png")
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
    plt = pyplot()
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
