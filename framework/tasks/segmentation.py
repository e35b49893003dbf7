"""The built-in segmentation task: train a MONAI UNet on a dataset plugin, score validation Dice.

``train_segmentation(config, resource, seed, report)`` is an objective for a study: ``config``
holds the hyper-parameters (learning rate, weight decay - the L2 term of seed 003 - network
width, loss plugin, optimiser) and fixed task settings (dataset, sizes, epochs);
``resource`` overrides the number of epochs (Hyperband's budget); ``report(epoch, dice)`` is
called after every epoch so a study can record the curve and stop the trial early. It returns
the final validation Dice over all pixels (higher is better) as ``value``, with metrics of the
last epoch on the validation set:

- the pixel-level and slice-level metrics of seed 002's tables (:func:`slice_metrics`):
  ``precision`` and ``recall`` over all pixels, ``dice_lesion_slices`` (the mean Dice of the
  slices that hold a lesion, Fig. 3) and ``dice_empty_slices`` (the mean Dice of the slices
  without any, Fig. 5, where a slice scores 1 when nothing is predicted on it and 0 otherwise);
- lesion-level metrics (seed 002, Fig. 4): for each validation lesion (a connected component
  of the label map) its Dice inside its neighbourhood, averaged per size bin
  (:data:`LESION_BINS`), and the fraction of the smallest lesions detected (at least one
  predicted pixel on the lesion);
- for an adaptive GLF loss, the coefficient trajectories (``glf_alpha_p``, ``glf_alpha_n``,
  ``glf_beta2``, one entry per training step, seed 002 Fig. 6) and their projection on the
  Tversky plane (``glf_alpha_p_tversky``, ``glf_alpha_n_tversky``, Fig. 7).

Losses. ``loss`` names a loss plugin, whose options come from ``loss_options`` and, per
plugin, ``options_by_loss`` (e.g. ``{glf = {adaptive = "deterministic"}}``, so that a searched
``loss`` categorical gets the right options). ``loss`` may also name an entry of
``loss_variants``, a table of named loss settings such as ``{tversky_a03 = {loss = "tversky",
alpha = 0.3, beta = 0.7}}``: one categorical can then hold several settings of one plugin
(seed 002 compares Tversky at a few alpha/beta and GLF with both adaptive strategies), each a
row of a results table. With ``adaptive = "exploratory"`` the GLF's
:class:`~medtune.plugins.losses.exploratory.GLFExploratory` performs every training step (its
lookahead uses ``lr``; the optimiser commits the chosen step; ``exploratory_options`` are its
keyword arguments, e.g. ``{gradients = "batch_sums"}`` for a cheaper approximate step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

import medtune
from medtune.errors import MedtuneError
from medtune.plugins.losses.exploratory import GLFExploratory
from medtune.tasks.threads import threaded

#: every key the task understands, with its default
SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "width": 8,
    "loss": "dice",
    "loss_options": {},
    "options_by_loss": {},
    "loss_variants": {},
    "exploratory_options": {},
    "optimizer": "adam",
    "epochs": 4,
    "batch_size": 8,
    "dataset": "small_lesion",
    "dataset_options": {},
    "train_size": 64,
    "val_size": 32,
    "threshold": 0.5,
    "threads": 0,  # torch threads per trial, 0 keeps PyTorch's (medtune.tasks.threads)
}

#: Lesion size bins in pixels, ``(name, lowest area, highest area)``: seed 002 sees the
#: differences between losses below about 100 pixels.
LESION_BINS = (("small", 0, 99), ("medium", 100, 499), ("large", 500, None))
#: Pixels around a lesion inside which its predicted pixels count for its Dice.
LESION_MARGIN = 3

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(SEGMENTATION_DEFAULTS))
    if unknown:
        raise MedtuneError(
            f"segmentation task: unknown setting(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(SEGMENTATION_DEFAULTS)}"
        )
    settings = {**SEGMENTATION_DEFAULTS, **config}
    if settings["optimizer"] not in OPTIMIZERS:
        raise MedtuneError(
            f"segmentation task: optimizer must be one of {sorted(OPTIMIZERS)}, got "
            f"{settings['optimizer']!r}"
        )
    for key in ("lr", "epochs", "batch_size", "train_size", "val_size", "width"):
        if not settings[key] > 0:
            raise MedtuneError(f"segmentation task: {key} must be > 0, got {settings[key]!r}")
    if not isinstance(settings["options_by_loss"], Mapping) or not all(
            isinstance(v, Mapping) for v in settings["options_by_loss"].values()):
        raise MedtuneError(
            "segmentation task: options_by_loss must map loss names to option tables, e.g. "
            f"{{glf = {{adaptive = \"deterministic\"}}}}, got {settings['options_by_loss']!r}"
        )
    variants = settings["loss_variants"]
    if not isinstance(variants, Mapping) or not all(
            isinstance(v, Mapping) and isinstance(v.get("loss"), str) for v in variants.values()):
        raise MedtuneError(
            "segmentation task: loss_variants must map variant names to tables naming a loss "
            f"plugin and its options, e.g. {{tversky_a03 = {{loss = \"tversky\", alpha = 0.3, "
            f"beta = 0.7}}}}, got {variants!r}"
        )
    if not isinstance(settings["exploratory_options"], Mapping):
        raise MedtuneError(
            "segmentation task: exploratory_options must be a table of GLFExploratory options, "
            f"e.g. {{gradients = \"batch_sums\"}}, got {settings['exploratory_options']!r}"
        )
    if settings["weight_decay"] < 0:
        raise MedtuneError(
            f"segmentation task: weight_decay must be >= 0, got {settings['weight_decay']!r}"
        )
    return settings


def resolve_loss(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The loss plugin and its options for a task ``config``.

    ``config["loss"]`` is a plugin name or a key of ``config["loss_variants"]``; the options
    are ``loss_options``, overridden by ``options_by_loss`` of the plugin, overridden by the
    variant's own entries.
    """
    settings = _settings(config)
    variant = dict(settings["loss_variants"].get(settings["loss"], {"loss": settings["loss"]}))
    plugin = variant.pop("loss")
    options = {**settings["loss_options"], **settings["options_by_loss"].get(plugin, {}), **variant}
    return plugin, options


def build_unet(width: int) -> torch.nn.Module:
    """A 2D MONAI UNet with ``width`` channels at full resolution, doubling at each of 3 levels."""
    from monai.networks.nets import UNet

    width = int(width)
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(width, 2 * width, 4 * width, 8 * width),
        strides=(2, 2, 2),
        num_res_units=1,
    )


def dice_score(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> tuple[float, float, float]:
    """Summed (TP, FP, FN) of thresholded sigmoid predictions against binary labels."""
    pred = torch.sigmoid(logits) > threshold
    truth = labels.bool()
    return (
        float((pred & truth).sum()),
        float((pred & ~truth).sum()),
        float((~pred & truth).sum()),
    )


def slice_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Seed 002's pixel- and slice-level metrics of boolean ``predictions`` against ``labels``.

    Both are [N, H, W] (any trailing shape per slice). Returns ``precision`` and ``recall``
    over all pixels, ``dice_lesion_slices`` (mean over the slices whose label holds a lesion
    of their Dice 2 TP / (2 TP + FP + FN)) and ``dice_empty_slices`` (mean over the slices
    without lesion of 1 when nothing is predicted on the slice, else 0: the Dice of an empty
    truth). A metric that is undefined is left out: ``precision`` when nothing is predicted,
    ``recall`` and ``dice_lesion_slices`` without any lesion pixel, ``dice_empty_slices``
    without an empty slice.
    """
    predicted = np.asarray(predictions).astype(bool).reshape(len(predictions), -1)
    truth = np.asarray(labels).reshape(len(labels), -1) > 0
    if predicted.shape != truth.shape:
        raise MedtuneError(
            f"slice_metrics: predictions {np.shape(predictions)} and labels "
            f"{np.shape(labels)} must have the same shape"
        )
    true_positives = (predicted & truth).sum(axis=1)
    false_positives = (predicted & ~truth).sum(axis=1)
    false_negatives = (~predicted & truth).sum(axis=1)
    found, predicted_pixels = true_positives.sum(), (true_positives + false_positives).sum()
    lesion_pixels = (true_positives + false_negatives).sum()
    metrics = {}
    if predicted_pixels > 0:
        metrics["precision"] = float(found / predicted_pixels)
    if lesion_pixels > 0:
        metrics["recall"] = float(found / lesion_pixels)
    with_lesion = truth.any(axis=1)
    if with_lesion.any():
        dice = 2 * true_positives / (2 * true_positives + false_positives + false_negatives).clip(1)
        metrics["dice_lesion_slices"] = float(dice[with_lesion].mean())
    if (~with_lesion).any():
        metrics["dice_empty_slices"] = float((~predicted[~with_lesion].any(axis=1)).mean())
    return metrics


def lesion_scores(prediction: np.ndarray, label: np.ndarray) -> list[tuple[int, float, bool]]:
    """``(area, Dice, detected)`` of each lesion (6-/4-connected component) of ``label``.

    A lesion's Dice counts the predicted pixels within :data:`LESION_MARGIN` pixels of it:
    ``2 |P ∩ L| / (|P ∩ N(L)| + |L|)``; it is detected when one predicted pixel lies on it.
    """
    components, count = ndimage.label(label > 0)
    scores = []
    for index in range(1, count + 1):
        lesion = components == index
        near = ndimage.binary_dilation(lesion, iterations=LESION_MARGIN)
        overlap = int((prediction & lesion).sum())
        area = int(lesion.sum())
        dice = 2 * overlap / (int((prediction & near).sum()) + area)
        scores.append((area, dice, overlap > 0))
    return scores


def lesion_metrics(scores: list[tuple[int, float, bool]]) -> dict[str, float]:
    """Mean lesion Dice per size bin (``lesion_dice_<bin>``) and the detected fraction of the
    smallest bin (``lesion_recall_small``); a bin without lesions is left out."""
    metrics = {}
    for name, low, high in LESION_BINS:
        members = [(dice, hit) for area, dice, hit in scores
                   if area >= low and (high is None or area <= high)]
        if members:
            metrics[f"lesion_dice_{name}"] = float(np.mean([dice for dice, _ in members]))
            if name == LESION_BINS[0][0]:
                metrics[f"lesion_recall_{name}"] = float(np.mean([hit for _, hit in members]))
    return metrics


@threaded("segmentation", SEGMENTATION_DEFAULTS)
def train_segmentation(
    config: Mapping[str, Any],
    resource: float | None = None,
    seed: int = 0,
    report: Callable[[float, float], None] | None = None,
) -> dict[str, float | list[float]]:
    """Train with ``config`` for ``resource`` epochs (default ``config["epochs"]``).

    Returns ``value``, the validation Dice over all validation pixels (2 TP / (2 TP + FP +
    FN)), and the metrics of the last epoch described in the module docstring.
    """
    settings = _settings(config)
    epochs = int(round(resource)) if resource is not None else int(settings["epochs"])
    if epochs < 1:
        raise MedtuneError(f"segmentation task: the budget must be at least one epoch, got {resource}")
    torch.manual_seed(seed)
    dataset_options = dict(settings["dataset_options"])
    train = medtune.create(
        "dataset", settings["dataset"], size=int(settings["train_size"]), seed=1000 + seed,
        **dataset_options,
    )
    val = medtune.create(
        "dataset", settings["dataset"], size=int(settings["val_size"]), seed=10**6,
        **dataset_options,
    )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=int(settings["batch_size"]), shuffle=True, generator=generator)
    val_loader = DataLoader(val, batch_size=int(settings["batch_size"]))
    model = build_unet(settings["width"])
    plugin, loss_options = resolve_loss(settings)
    loss_fn = medtune.create("loss", plugin, sigmoid=True, **loss_options)
    optimizer = OPTIMIZERS[settings["optimizer"]](
        model.parameters(), lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"])
    )
    explorer = (GLFExploratory(loss_fn, **settings["exploratory_options"])
                if getattr(loss_fn, "adaptive", None) == "exploratory" else None)
    dice, scores, last_metrics = 0.0, [], {}
    for epoch in range(1, epochs + 1):
        model.train()
        loss_fn.train()
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            if explorer is not None:
                explorer.step(model, images, labels, lr=float(settings["lr"]), optimizer=optimizer)
                continue
            loss = loss_fn(model(images), labels)
            if not torch.isfinite(loss):
                # a diverged training or a broken loss: the trial fails (reason "nan") rather
                # than scoring a network of NaN weights as Dice 0
                return {"value": math.nan}
            loss.backward()
            optimizer.step()
        model.eval()
        tp = fp = fn = 0.0
        last = epoch == epochs
        scores, predictions, truths = [], [], []
        with torch.no_grad():
            for images, labels in val_loader:
                logits = model(images)
                a, b, c = dice_score(logits, labels, float(settings["threshold"]))
                tp, fp, fn = tp + a, fp + b, fn + c
                if last:
                    predicted = (torch.sigmoid(logits) > float(settings["threshold"])).numpy()
                    predictions.append(predicted[:, 0])
                    truths.append(labels[:, 0].numpy())
                    for one, truth in zip(predicted[:, 0], labels[:, 0].numpy()):
                        scores.extend(lesion_scores(one, truth))
        dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 1.0
        if last:
            last_metrics = slice_metrics(np.concatenate(predictions), np.concatenate(truths))
        if report is not None:
            report(epoch, dice)
    metrics: dict[str, float | list[float]] = {"value": dice, **last_metrics,
                                               **lesion_metrics(scores)}
    trajectory = getattr(loss_fn, "trajectory", None)
    if trajectory is not None and len(trajectory):
        for name in ("alpha_p", "alpha_n", "beta2", "alpha_p_tversky", "alpha_n_tversky"):
            metrics[f"glf_{name}"] = trajectory.column(name)
    return metrics
