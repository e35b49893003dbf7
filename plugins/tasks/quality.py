"""The ``quality`` task: a DQE estimator trained on rated phantom segmentations (Kofler2022).

Three sets of brain-tumour phantom exams, each with ``segmentations`` segmentations of
controlled quality rated by ``raters`` simulated raters: the estimator learns the mean rating
of the training exams, is scored on the held-out test exams (Kofler2022, table 1) and, on
unrated external exams, by the correlation of its predicted rating with Dice and surface Dice
(sec. 3.2). The data depend on ``data_seed`` only, so every trial sees the same exams and
ratings; the trial's seed sets the initial weights, the batch order and the augmentation.
``value`` is the test MAE (lower is better); the other metrics, and the per-segmentation lists
:func:`report_figures` draws, are listed in docs/tasks.md.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import medtune
from medtune.errors import MedtuneError
from medtune.metrics import (
    MetricError,
    bootstrap_ci,
    dice,
    mean_absolute_error,
    pearson_r,
    root_mean_squared_error,
    surface_dice,
)
from medtune.plugins.quality.cases import REGIONS, Case, region_mask
from medtune.plugins.quality.raters import RaterPanel, rater_mae, segmentation_quality
from medtune.study.store import Trial, TrialState
from medtune.tasks import Figure, Task, pyplot, stop_if_diverged

_POSITIVE = ("init_features", "growth_rate", "lr", "epochs", "batch_size", "slice_size", "image_size",
             "train_exams", "test_exams", "external_exams", "segmentations", "raters", "bootstrap")


class QualityTask(Task):
    """Deep quality estimation: a rating regressor trained and scored on rated segmentations."""

    name = "quality"
    settings = {
        "architecture": "densenet121",
        "optimizer": "adam",
        "normalisation": "percentile",
        "label_encoding": "brats",
        "init_features": 64,
        "growth_rate": 32,
        "lr": 1e-3,
        "schedule": "onecycle",
        "weight_decay": 0.0,
        "epochs": 6,
        "batch_size": 32,
        "slice_size": 32,
        "augment": True,
        "image_size": 48,
        "train_exams": 24,
        "test_exams": 8,
        "external_exams": 8,
        "segmentations": 4,
        "raters": 5,
        "data_seed": 0,
        "bootstrap": 1000,
        "threads": 0,
    }

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        for key in _POSITIVE:
            if not settings[key] > 0:
                raise MedtuneError(f"quality task: {key} must be > 0, got {settings[key]!r}")
        if settings["segmentations"] < 2:
            raise MedtuneError("quality task: segmentations must be at least 2 (the truth and one degraded copy)")
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float | list[float]]:
        epochs = self.budget(resource, settings["epochs"])
        data = (int(settings["image_size"]), int(settings["segmentations"]))
        data_seed = int(settings["data_seed"])
        raters = int(settings["raters"])
        train_cases, train_ratings, _ = _rated_exams(data[0], int(settings["train_exams"]), data[1], raters,
                                                     data_seed)
        test_cases, test_ratings, _ = _rated_exams(data[0], int(settings["test_exams"]), data[1], raters,
                                                   data_seed + 1)
        external_cases, external_dice, external_surface = _external(
            data[0], int(settings["external_exams"]), data[1], data_seed + 2)
        estimator = medtune.create(
            "quality_estimator", "dqe", architecture=settings["architecture"],
            contrasts=train_cases[0].image.shape[0], label_encoding=settings["label_encoding"],
            normalisation=settings["normalisation"], slice_size=int(settings["slice_size"]),
            augment=bool(settings["augment"]), seed=seed, init_features=int(settings["init_features"]),
            growth_rate=int(settings["growth_rate"]),
        )
        started = time.perf_counter()
        losses = estimator.train(train_cases, train_ratings.mean(1), epochs=epochs, optimizer=settings["optimizer"],
                                 lr=float(settings["lr"]), batch_size=int(settings["batch_size"]), report=report,
                                 schedule=str(settings["schedule"]), weight_decay=float(settings["weight_decay"]))
        seconds = time.perf_counter() - started
        stop_if_diverged(losses[-1])
        predicted = estimator.predict(test_cases)
        rated = test_ratings.mean(1)
        metrics: dict[str, float | list[float]] = {
            "mae": mean_absolute_error(predicted, rated),
            "rmse": root_mean_squared_error(predicted, rated),
            "rater_mae": rater_mae(test_ratings),
            "seconds_training": seconds,
        }
        r = _correlation(predicted, rated)
        if r is not None:
            metrics["pearson_r"] = r
            interval = bootstrap_ci(pearson_r, predicted, rated, n_resamples=int(settings["bootstrap"]), seed=seed)
            metrics["pearson_low"], metrics["pearson_high"] = interval.low, interval.high
        external = estimator.predict(external_cases)
        for name, reference in (("external_r_dice", external_dice),
                                ("external_r_surface_dice", external_surface)):
            r = _correlation(external, reference)
            if r is not None:
                metrics[name] = r
        metrics.update(predicted=predicted.tolist(), rated=rated.tolist(),
                       rated_min=test_ratings.min(1).tolist(), rated_max=test_ratings.max(1).tolist())
        return {"value": metrics["mae"], **metrics}

    def figures(self, trials: Sequence[Trial], folder: Path) -> list[Figure]:
        return report_figures(trials, folder)


@functools.lru_cache(maxsize=2)
def _rated_exams(image_size: int, exams: int, segmentations: int, raters: int, seed: int
                 ) -> tuple[list[Case], np.ndarray, np.ndarray]:
    """Cases of ``exams`` phantom exams, their ratings ``[cases, raters]`` and qualities."""
    phantom = medtune.create("dataset", "brain_tumour", size=exams, seed=seed, image_size=image_size,
                             segmentations=segmentations)
    cases, qualities = [], []
    for index in range(exams):
        exam = phantom.exam(index)
        cases.extend(exam.cases())
        qualities.extend(segmentation_quality(s, exam.truth) for s in exam.segmentations)
    qualities = np.asarray(qualities)
    return cases, RaterPanel(raters, seed=0).rate(qualities, seed=seed), qualities


@functools.lru_cache(maxsize=2)
def _external(image_size: int, exams: int, segmentations: int, seed: int) -> tuple[list[Case], np.ndarray, np.ndarray]:
    """Unrated external cases with the mean Dice and surface Dice of the BraTS regions."""
    phantom = medtune.create("dataset", "brain_tumour", size=exams, seed=seed, image_size=image_size,
                             segmentations=segmentations)
    cases, dices, surface = [], [], []
    for index in range(exams):
        exam = phantom.exam(index)
        cases.extend(exam.cases())
        for segmentation in exam.segmentations:
            pairs = [(region_mask(segmentation, r), region_mask(exam.truth, r)) for r in REGIONS]
            dices.append(np.mean([dice(p, t) for p, t in pairs]))
            surface.append(np.mean([surface_dice(p, t, tolerance=2.0) for p, t in pairs]))
    return cases, np.asarray(dices), np.asarray(surface)


def _correlation(first: np.ndarray, second: np.ndarray) -> float | None:
    try:
        return pearson_r(first, second)
    except MetricError:  # a constant prediction: r is undefined
        return None


def report_figures(trials: Sequence[Trial], folder: Path) -> list[Figure]:
    """Kofler2022's Fig. 2 and 3 for the best trial (lowest test MAE) that carries per-case
    predictions: predicted vs mean rating (``quality_scatter.png``, with the raters' range and a
    fitted line) and the Bland-Altman plot (``quality_bland_altman.png``). ``(file, caption)``
    of each; ``[]`` when no completed trial carries ``predicted`` and ``rated``."""
    rated_trials = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                    and isinstance(t.metrics.get("predicted"), list) and isinstance(t.metrics.get("rated"), list)]
    if not rated_trials:
        return []
    best = min(rated_trials, key=lambda t: t.value)
    predicted, rated = np.asarray(best.metrics["predicted"]), np.asarray(best.metrics["rated"])
    plt = pyplot()
    folder = Path(folder)
    name = ", ".join(f"{key}={value}" for key, value in best.config.items())
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    if isinstance(best.metrics.get("rated_min"), list) and isinstance(best.metrics.get("rated_max"), list):
        low, high = np.asarray(best.metrics["rated_min"]), np.asarray(best.metrics["rated_max"])
        ax.errorbar(rated, predicted, xerr=[rated - low, high - rated], fmt="none", ecolor="0.8", zorder=1)
    ax.scatter(rated, predicted, s=14, zorder=2)
    ax.plot([1, 6], [1, 6], color="0.5", linestyle="--", linewidth=1, label="identity")
    if np.ptp(rated) > 0:
        slope, intercept = np.polyfit(rated, predicted, 1)
        ax.plot([1, 6], [intercept + slope, intercept + 6 * slope], color="c", linestyle=":", label="linear fit")
    ax.set_xlabel("mean simulated rating (stars; bars: rater range)")
    ax.set_ylabel("predicted rating (stars)")
    ax.set_xlim(0.8, 6.2)
    ax.set_ylim(0.8, 6.2)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(folder / "quality_scatter.png", dpi=100)
    plt.close(fig)
    mean, difference = (predicted + rated) / 2, predicted - rated
    bias, spread = float(difference.mean()), 1.96 * float(difference.std(ddof=1)) if len(difference) > 1 else 0.0
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.scatter(mean, difference, s=14)
    for level, style in ((bias, "-"), (bias + spread, "--"), (bias - spread, "--")):
        ax.axhline(level, color="0.4", linestyle=style, linewidth=1)
    ax.set_xlabel("mean of predicted and rated (stars)")
    ax.set_ylabel("predicted - rated (stars)")
    fig.tight_layout()
    fig.savefig(folder / "quality_bland_altman.png", dpi=100)
    plt.close(fig)
    return [
        ("quality_scatter.png", f"Predicted vs mean simulated rating of the held-out segmentations, best "
                                f"trial {best.id} ({name}; Kofler2022, Fig. 2)"),
        ("quality_bland_altman.png", f"Bland-Altman plot of the best trial {best.id}: bias {bias:+.2f} stars, "
                                     f"limits of agreement ±{spread:.2f} (Kofler2022, Fig. 3)"),
    ]
