"""The ``regression`` task: bone age from the bone-age phantom, and whether density weighting
fixes a skewed label distribution (Pourchot2022, ch. 6).

A small CNN predicts the bone age from the image, with the sex and the chronological age
joined to the image features before its head (the thesis' "+CA" model). Training cases follow
the skewed age distribution of the thesis' RSNA data, validation cases uniform ages, so that
rare ages weigh in the evaluation as much as common ones. ``weighting = "inverse_density"``
trains with :class:`~medtune.plugins.losses.density.DensityWeightedLoss` on the density of
``density_on`` (W(BA), W(DA) or both, sec. 6.3.3-6.3.5); ``"none"`` is the same loss with every
weight 1. ``value`` is the validation MAE in months; the metrics by sex and by age range and the
detection of pathological cases (tables 6.1-6.3) are listed in docs/tasks.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtune.errors import MedtuneError
from medtune.metrics import mean_absolute_error, recall
from medtune.plugins.datasets.bone_age import PATHOLOGICAL_THRESHOLD, BoneAgePhantom
from medtune.plugins.losses.density import DensityWeightedLoss
from medtune.study.store import Trial, TrialState
from medtune.tasks import Figure, Setting, Task, pyplot, stop_if_diverged

WEIGHTINGS = ("none", "inverse_density")
DENSITY_LABELS = ("bone_age", "age_difference", "joint")
COVARIATES = ("sex", "chronological_age")
#: bone-age ranges in years ``(name, lowest included, highest excluded)``: the rare young, the
#: common middle and the rare old of the skewed training distribution (about 12 %, 76 % and
#: 12 % of its cases)
LABEL_RANGES = (("low", 0.0, 8.0), ("middle", 8.0, 14.0), ("high", 14.0, math.inf))
#: the centre and spread (years) the network's inputs and output are normalised with
_AGE_CENTRE, _AGE_SPREAD = 11.0, 4.0
MONTHS = 12.0
_POSITIVE = ("lr", "epochs", "batch_size", "train_size", "val_size", "width")


class RegressionTask(Task):
    """Bone-age regression with or without density weighting of the training loss."""

    name = "regression"
    settings = {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "width": 8,
        "epochs": 10,
        "batch_size": 16,
        "image_size": 64,
        "train_size": 256,
        "val_size": 128,
        "weighting": "none",
        "alpha": 0.5,
        "density_on": "bone_age",
        "base": "l1",
        "covariates": ["sex", "chronological_age"],
        "dataset_options": Setting({}, example="{noise = 0.05}"),
        "threads": 0,
    }

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        for key in _POSITIVE:
            if not settings[key] > 0:
                raise MedtuneError(f"regression task: {key} must be a number > 0, got {settings[key]!r}")
        for key, choices in (("weighting", WEIGHTINGS), ("density_on", DENSITY_LABELS),
                             ("base", ("l1", "mse"))):
            if settings[key] not in choices:
                raise MedtuneError(
                    f"regression task: {key} must be one of {', '.join(choices)}, got {settings[key]!r}")
        if settings["alpha"] < 0:
            raise MedtuneError(f"regression task: alpha (the damping exponent) must be a number >= 0, got "
                               f"{settings['alpha']!r}")
        if not set(settings["covariates"]) <= set(COVARIATES):
            raise MedtuneError(f"regression task: covariates must be a list of {', '.join(COVARIATES)} "
                               f"(possibly empty), got {settings['covariates']!r}")
        if "distribution" in settings["dataset_options"]:
            raise MedtuneError(
                "regression task: dataset_options must be a table of bone_age options other than "
                "distribution (training is skewed, validation uniform), e.g. {noise = 0.05}, got "
                f"{settings['dataset_options']!r}")
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float]:
        epochs = self.budget(resource, settings["epochs"])
        torch.manual_seed(seed)
        options = {"image_size": int(settings["image_size"]), **settings["dataset_options"]}
        train = BoneAgePhantom(size=int(settings["train_size"]), seed=1000 + seed,
                               distribution="skewed", **options)
        val = BoneAgePhantom(size=int(settings["val_size"]), seed=10**6, distribution="uniform",
                             **options)
        images, covariates, bone_age = _tensors(train)
        val_images, val_covariates, val_bone_age = _tensors(val)
        on = settings["density_on"]
        alpha = float(settings["alpha"]) if settings["weighting"] == "inverse_density" else 0.0
        loss_fn = DensityWeightedLoss(_density_labels(bone_age, covariates, on), alpha=alpha,
                                      base=settings["base"])
        model = BoneAgeRegressor(settings["width"], settings["covariates"])
        optimizer = torch.optim.Adam(model.parameters(), lr=float(settings["lr"]),
                                     weight_decay=float(settings["weight_decay"]))
        generator = torch.Generator().manual_seed(seed)
        batch = int(settings["batch_size"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs * math.ceil(len(train) / batch))
        for epoch in range(1, epochs + 1):
            model.train()
            for indices in torch.randperm(len(train), generator=generator).split(batch):
                optimizer.zero_grad(set_to_none=True)
                labels = bone_age[indices]
                loss = loss_fn(model(images[indices], covariates[indices]), labels,
                               _density_labels(labels, covariates[indices], on))
                stop_if_diverged(loss)
                loss.backward()
                optimizer.step()
                schedule.step()
            model.eval()
            with torch.no_grad():
                predicted = torch.cat([model(images_, covariates_) for images_, covariates_ in zip(
                    val_images.split(batch), val_covariates.split(batch))]).numpy()
            metrics = regression_metrics(predicted, val_bone_age.numpy(), val_covariates[:, 1].numpy(),
                                         val_covariates[:, 0].numpy() > 0.5)
            if report is not None:
                report(epoch, metrics["mae"])
        return {"value": metrics.pop("mae"), **metrics}

    def figures(self, trials: Sequence[Trial], folder: Path) -> list[Figure]:
        return report_figures(trials, folder)


class BoneAgeRegressor(nn.Module):
    """A small CNN regressor: four conv-ReLU-max-pool blocks (``width``, 2, 4, 4 ``width``
    channels), global average pooling, the ``covariates`` (sex, chronological age) concatenated,
    and a two-layer head predicting the bone age in years."""

    def __init__(self, width: int = 8, covariates: Sequence[str] = COVARIATES) -> None:
        super().__init__()
        width = int(width)
        channels = (1, width, 2 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = []
        for inputs, outputs in zip(channels, channels[1:]):
            layers += [nn.Conv2d(inputs, outputs, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.columns = [COVARIATES.index(name) for name in covariates]
        self.head = nn.Sequential(nn.Linear(channels[-1] + len(self.columns), 32), nn.ReLU(),
                                  nn.Linear(32, 1))

    def forward(self, images: torch.Tensor, covariates: torch.Tensor) -> torch.Tensor:
        """Bone ages [N] in years of images [N, 1, H, W] with covariates [N, 2] (sex, age)."""
        extra = covariates[:, self.columns].clone()
        if 1 in self.columns:
            position = self.columns.index(1)
            extra[:, position] = (extra[:, position] - _AGE_CENTRE) / _AGE_SPREAD
        if 0 in self.columns:
            extra[:, self.columns.index(0)] -= 0.5
        out = self.head(torch.cat([self.features(images), extra], dim=1))[:, 0]
        return _AGE_CENTRE + _AGE_SPREAD * out


def _density_labels(bone_age: torch.Tensor, covariates: torch.Tensor, on: str) -> torch.Tensor:
    difference = bone_age - covariates[:, 1]
    if on == "bone_age":
        return bone_age
    if on == "age_difference":
        return difference
    return torch.stack([bone_age, difference], dim=1)


def regression_metrics(predicted: np.ndarray, bone_age: np.ndarray, chronological_age: np.ndarray,
                       male: np.ndarray) -> dict[str, float]:
    """Tables 6.1-6.3 of Pourchot2022 for predicted bone ages (years) against the truth: MAE in
    months overall (``mae``), by sex and by bone-age range, the bias by range and the
    sensitivity and specificity of pathological cases (a case is pathological when its bone
    and chronological ages differ by more than
    :data:`~medtune.plugins.datasets.bone_age.PATHOLOGICAL_THRESHOLD`); a metric the cases
    cannot define is left out."""
    predicted, bone_age = np.asarray(predicted, float), np.asarray(bone_age, float)
    chronological_age, male = np.asarray(chronological_age, float), np.asarray(male, bool)
    metrics = {"mae": MONTHS * mean_absolute_error(predicted, bone_age)}
    for name, members in (("female", ~male), ("male", male)):
        if members.any():
            metrics[f"mae_{name}"] = MONTHS * mean_absolute_error(predicted[members], bone_age[members])
    for name, low, high in LABEL_RANGES:
        members = (bone_age >= low) & (bone_age < high)
        if members.any():
            metrics[f"mae_{name}"] = MONTHS * mean_absolute_error(predicted[members], bone_age[members])
            metrics[f"bias_{name}"] = MONTHS * float(np.mean(predicted[members] - bone_age[members]))
    truth = np.abs(bone_age - chronological_age) > PATHOLOGICAL_THRESHOLD
    flagged = np.abs(predicted - chronological_age) > PATHOLOGICAL_THRESHOLD
    if truth.any():
        metrics["sensitivity"] = recall(flagged, truth)
    if (~truth).any():
        metrics["specificity"] = recall(~flagged, ~truth)
    return metrics


def _tensors(dataset: BoneAgePhantom) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, covariates, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.stack(covariates), torch.cat(labels)


def report_figures(trials: Sequence[Trial], folder: Path) -> list[Figure]:
    """The MAE by bone-age range of each weighting (mean ± std over its completed trials),
    written to ``mae_by_range.png`` in ``folder``; ``[]`` when no trial carries these metrics."""
    ranges = [name for name, _, _ in LABEL_RANGES]
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE and all(f"mae_{r}" in trial.metrics for r in ranges):
            groups.setdefault(str(trial.config.get("weighting", "none")), []).append(trial)
    if not groups:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(groups)
    for k, (weighting, members) in enumerate(sorted(groups.items())):
        values = np.array([[t.metrics[f"mae_{r}"] for r in ranges] for t in members])
        ax.bar([i + k * width for i in range(len(ranges))], values.mean(0), width,
               yerr=values.std(0) if len(members) > 1 else None, capsize=3,
               label=f"{weighting} ({len(members)} trials)")
    labels = [f"{name}\n{low:g}-{high:g} y" if math.isfinite(high) else f"{name}\n≥ {low:g} y"
              for name, low, high in LABEL_RANGES]
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ranges))], labels)
    ax.set_ylabel("validation MAE (months)")
    ax.set_title("MAE by bone-age range and loss weighting")
    ax.legend(fontsize=8)
    fig.tight_layout()
    folder = Path(folder)
    fig.savefig(folder / "mae_by_range.png", dpi=100)
    plt.close(fig)
    return [("mae_by_range.png", "Validation MAE by bone-age range (rare low, common middle, "
             "rare high), mean ± std over the trials of each loss weighting (Pourchot2022, "
             "tables 6.2-6.3)")]
