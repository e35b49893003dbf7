"""The bone-age regression task of seed 001, ch. 6: does density weighting fix a skewed label
distribution?

``train_regression(config, resource, seed, report)`` trains a small CNN on the bone-age
phantom (:mod:`medtune.plugins.datasets.bone_age`) to predict the bone age from the image,
with the sex and the chronological age concatenated to the image features before the
regression head (seed 001's "+CA" model). The training cases have the skewed age distribution
of the seed's RSNA training data, the validation cases uniform ages in [5, 17] years as its
clinical test set, so that rare ages weigh in the evaluation as much as common ones.

Training uses Adam with a cosine-annealed learning rate (from ``lr`` to 0 over the epochs, as
the seed's schedule). ``weighting`` picks the training loss: ``"none"`` is the plain L1 loss
(or MSE with ``base = "mse"``; computed as the density-weighted loss with ``alpha = 0``, every
weight 1), ``"inverse_density"`` the density-weighted loss
(:class:`~medtune.plugins.losses.density.DensityWeightedLoss`): every training sample weighs
``f(y)^-alpha`` normalised to mean 1, ``f`` the Gaussian KDE of the training labels and
``alpha`` the damping exponent (0.5, sec. 6.3.5). ``density_on`` chooses the density's labels:
``"bone_age"`` (W(BA), sec. 6.3.3), ``"age_difference"`` (bone age minus chronological age,
W(DA), sec. 6.3.5) or ``"joint"`` (both, W(BA,DA)). ``resource`` overrides the number of epochs
and ``report(epoch, mae)`` is called after every epoch with the validation MAE in months.

It returns the validation MAE in months (lower is better) as ``value`` and, as metrics
(tables 6.1-6.3):

- ``mae_female`` and ``mae_male``: the MAE of each sex, in months;
- ``mae_<range>`` and ``bias_<range>`` for the bone-age ranges of :data:`LABEL_RANGES`
  (``low``, ``middle``, ``high``): the MAE and the mean signed error (prediction - truth,
  months) of the cases in the range - a network pulled towards the common ages over-estimates
  the low range (positive bias) and under-estimates the high one;
- ``sensitivity`` and ``specificity`` of the detection of pathological cases: a case is
  predicted pathological when ``|predicted bone age - chronological age|`` exceeds
  :data:`~medtune.plugins.datasets.bone_age.PATHOLOGICAL_THRESHOLD` (2 years), as the truth is
  defined; either is left out when the validation set has no case of its class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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
from medtune.tasks.threads import threaded

#: every key the task understands, with its default
REGRESSION_DEFAULTS: dict[str, Any] = {
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
    "dataset_options": {},
    "threads": 0,  # torch threads per trial, 0 keeps PyTorch's (medtune.tasks.threads)
}
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


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(REGRESSION_DEFAULTS))
    if unknown:
        raise MedtuneError(
            f"regression task: unknown setting(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(REGRESSION_DEFAULTS)}"
        )
    settings = {**REGRESSION_DEFAULTS, **config}
    for key in ("lr", "epochs", "batch_size", "train_size", "val_size", "width"):
        if not isinstance(settings[key], (int, float)) or not settings[key] > 0:
            raise MedtuneError(f"regression task: {key} must be a number > 0, got {settings[key]!r}")
    for key, choices in (("weighting", WEIGHTINGS), ("density_on", DENSITY_LABELS),
                         ("base", ("l1", "mse"))):
        if settings[key] not in choices:
            raise MedtuneError(
                f"regression task: {key} must be one of {', '.join(choices)}, got {settings[key]!r}"
            )
    if not isinstance(settings["alpha"], (int, float)) or settings["alpha"] < 0:
        raise MedtuneError(
            f"regression task: alpha (the damping exponent) must be a number >= 0, got "
            f"{settings['alpha']!r}"
        )
    covariates = settings["covariates"]
    if not isinstance(covariates, Sequence) or isinstance(covariates, str) or \
            not set(covariates) <= set(COVARIATES):
        raise MedtuneError(
            f"regression task: covariates must be a list of {', '.join(COVARIATES)} (possibly "
            f"empty), got {covariates!r}"
        )
    if not isinstance(settings["dataset_options"], Mapping) or "distribution" in settings["dataset_options"]:
        raise MedtuneError(
            "regression task: dataset_options must be a table of bone_age options other than "
            "distribution (training is skewed, validation uniform), e.g. {noise = 0.05}, got "
            f"{settings['dataset_options']!r}"
        )
    return settings


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
    """Tables 6.1-6.3 of seed 001 for predicted bone ages (years) against the truth: MAE in
    months overall (``mae``), by sex and by bone-age range, the bias by range and the
    sensitivity and specificity of pathological cases (see the module docstring)."""
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


@threaded("regression", REGRESSION_DEFAULTS)
def train_regression(
    config: Mapping[str, Any],
    resource: float | None = None,
    seed: int = 0,
    report: Callable[[float, float], None] | None = None,
) -> dict[str, float]:
    """Train with ``config`` for ``resource`` epochs (default ``config["epochs"]``).

    Returns ``value``, the validation MAE in months, and the metrics of the module docstring;
    a training whose loss turns NaN or infinite returns ``value`` NaN (a failed trial).
    """
    settings = _settings(config)
    epochs = int(round(resource)) if resource is not None else int(settings["epochs"])
    if epochs < 1:
        raise MedtuneError(f"regression task: the budget must be at least one epoch, got {resource}")
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
            if not torch.isfinite(loss):
                return {"value": math.nan}
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def report_figures(trials: list[Trial], folder: Path) -> list[tuple[str, str]]:
    """The MAE by bone-age range of each weighting (mean ± std over its completed trials),
    written to ``mae_by_range.png`` in ``folder``; ``[]`` when no trial carries these metrics."""
    ranges = [name for name, _, _ in LABEL_RANGES]
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE and all(f"mae_{r}" in trial.metrics for r in ranges):
            groups.setdefault(str(trial.config.get("weighting", "none")), []).append(trial)
    if not groups:
        return []
    plt = _pyplot()
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
             "rare high), mean ± std over the trials of each loss weighting (seed 001, tables "
             "6.2-6.3)")]
