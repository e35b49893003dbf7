"""The ``regions`` task: the weight decay (L2) study of Rukundo2021 on the three-class ring phantom.

A 2D MONAI UNet with a softmax over background, ring ("myocardium") and cavity ("blood pool")
trains with MONAI's Dice + cross-entropy loss and Adam, whose ``weight_decay`` is the L2
term. ``value`` is the global validation accuracy; the per-region accuracy, IoU and boundary F1
and their means (Rukundo2021, Fig. 1) come beside it (names in docs/tasks.md), with the
difference images of the first ``difference_cases`` validation slices (Fig. 2) as flat lists of
:data:`DIFFERENCE_CODES`: kept with the trial in the study, whichever executor ran it, so that
the report draws them without files of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import medtune
from medtune.errors import MedtuneError
from medtune.metrics import accuracy, boundary_f1, iou, per_class_accuracy
from medtune.plugins.datasets.ring_phantom import CLASSES
from medtune.study.store import Trial, TrialState
from medtune.tasks import Figure, Setting, Task, pyplot, stop_if_diverged

#: the regions of the ring phantom by label value (0, 1, 2), named as in its module
REGIONS = CLASSES
#: the label of the region whose difference images are kept (Rukundo2021, Fig. 2 shows the myocardium)
MYOCARDIUM = REGIONS.index("myocardium")

#: pixel codes of a difference image: where both agree, outside and on the myocardium, where the
#: network adds myocardium (false positive), misses it (false negative), or confuses the
#: other two regions
DIFFERENCE_CODES = {"agree_other": 0, "agree_myocardium": 1, "false_positive": 2,
                    "false_negative": 3, "other_error": 4}
#: RGB colour of each code in the report's difference images
_DIFFERENCE_COLOURS = np.array([[0.0, 0.0, 0.0], [0.6, 0.6, 0.6], [0.9, 0.15, 0.1],
                                [0.15, 0.45, 0.95], [0.95, 0.8, 0.1]])
_POSITIVE = ("lr", "epochs", "batch_size", "train_size", "val_size", "width")


class RegionsTask(Task):
    """Multi-class region segmentation of the ring phantom, scored per region and globally."""

    name = "regions"
    settings = {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "width": 8,
        "epochs": 4,
        "batch_size": 8,
        "image_size": 128,
        "train_size": 64,
        "val_size": 32,
        "dataset_options": Setting({}, example="{noise = 0.05}"),
        "difference_cases": 2,
        "threads": 0,
    }

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        for key in _POSITIVE:
            if not settings[key] > 0:
                raise MedtuneError(f"regions task: {key} must be a number > 0, got {settings[key]!r}")
        if settings["weight_decay"] < 0:
            raise MedtuneError(f"regions task: weight_decay (the L2 factor) must be a number >= 0, got "
                               f"{settings['weight_decay']!r}")
        cases = settings["difference_cases"]
        if not 0 <= cases <= settings["val_size"]:
            raise MedtuneError(f"regions task: difference_cases must be an integer between 0 and val_size "
                               f"({settings['val_size']}), got {cases!r}")
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float | list[float]]:
        from monai.losses import DiceCELoss

        epochs = self.budget(resource, settings["epochs"])
        torch.manual_seed(seed)
        options = {"image_size": int(settings["image_size"]), **settings["dataset_options"]}
        train = medtune.create("dataset", "ring_phantom", size=int(settings["train_size"]),
                               seed=1000 + seed, **options)
        val = medtune.create("dataset", "ring_phantom", size=int(settings["val_size"]), seed=10**6,
                             **options)
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(train, batch_size=int(settings["batch_size"]), shuffle=True,
                            generator=generator)
        val_loader = DataLoader(val, batch_size=int(settings["batch_size"]))
        model = build_region_unet(settings["width"])
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=float(settings["lr"]),
                                     weight_decay=float(settings["weight_decay"]))
        for epoch in range(1, epochs + 1):
            model.train()
            for images, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(images), labels)
                stop_if_diverged(loss)
                loss.backward()
                optimizer.step()
            model.eval()
            predictions, truths = [], []
            with torch.no_grad():
                for images, labels in val_loader:
                    predictions.append(model(images).argmax(1).numpy())
                    truths.append(labels[:, 0].numpy())
            prediction, truth = np.concatenate(predictions), np.concatenate(truths)
            if report is not None:
                report(epoch, accuracy(prediction, truth))
        metrics: dict[str, float | list[float]] = {**region_metrics(prediction, truth)}
        for k in range(int(settings["difference_cases"])):
            metrics[f"difference_{k}"] = difference_image(prediction[k], truth[k]).ravel().tolist()
        return {"value": metrics["global_accuracy"], **metrics}

    def figures(self, trials: Sequence[Trial], folder: Path) -> list[Figure]:
        return report_figures(trials, folder)


def build_region_unet(width: int, classes: int = len(REGIONS)) -> torch.nn.Module:
    """A 2D MONAI UNet with ``classes`` output logits, ``width`` channels at full resolution,
    doubling at each of 3 levels."""
    from monai.networks.nets import UNet

    width = int(width)
    return UNet(spatial_dims=2, in_channels=1, out_channels=classes,
                channels=(width, 2 * width, 4 * width, 8 * width), strides=(2, 2, 2),
                num_res_units=1)


def difference_image(prediction: np.ndarray, truth: np.ndarray,
                     region: int = MYOCARDIUM) -> np.ndarray:
    """The difference between a predicted and a manual label map [H, W] as codes of
    :data:`DIFFERENCE_CODES` (uint8 [H, W]), for the region of label ``region``."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape or prediction.ndim != 2:
        raise MedtuneError(
            f"difference_image: prediction {prediction.shape} and truth {truth.shape} must be "
            "label maps of the same [H, W] shape"
        )
    predicted, manual = prediction == region, truth == region
    codes = np.full(truth.shape, DIFFERENCE_CODES["agree_other"], dtype=np.uint8)
    codes[predicted & manual] = DIFFERENCE_CODES["agree_myocardium"]
    codes[predicted & ~manual] = DIFFERENCE_CODES["false_positive"]
    codes[~predicted & manual] = DIFFERENCE_CODES["false_negative"]
    codes[~predicted & ~manual & (prediction != truth)] = DIFFERENCE_CODES["other_error"]
    return codes


def region_metrics(predictions: np.ndarray, truths: np.ndarray) -> dict[str, float]:
    """The local and global metrics of Rukundo2021 of label maps ``predictions`` against
    ``truths`` ([N, H, W], labels 0..2): ``accuracy_<region>``, ``iou_<region>``,
    ``bf_<region>``, ``global_accuracy`` and ``mean_<accuracy|iou|bf>`` (docs/tasks.md)."""
    predictions, truths = np.asarray(predictions), np.asarray(truths)
    labels = range(len(REGIONS))
    class_accuracy = per_class_accuracy(predictions, truths, labels=labels)
    metrics: dict[str, float] = {"global_accuracy": accuracy(predictions, truths)}
    for label, region in enumerate(REGIONS):
        metrics[f"accuracy_{region}"] = class_accuracy[label]
        metrics[f"iou_{region}"] = iou(predictions, truths, label=label)
        metrics[f"bf_{region}"] = float(np.mean([
            boundary_f1(prediction, truth, label=label)
            for prediction, truth in zip(predictions, truths)
        ]))
    for name in ("accuracy", "iou", "bf"):
        metrics[f"mean_{name}"] = float(np.mean([metrics[f"{name}_{r}"] for r in REGIONS]))
    return metrics


def _by_weight_decay(trials: Sequence[Trial], metric: str) -> dict[float, list[Trial]]:
    """Completed trials that carry ``metric``, grouped by weight decay (largest first)."""
    groups: dict[float, list[Trial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE and metric in trial.metrics \
                and "weight_decay" in trial.config:
            groups.setdefault(float(trial.config["weight_decay"]), []).append(trial)
    return dict(sorted(groups.items(), reverse=True))


def _panel_metric(name: str, panel: str) -> str:
    """The metric of bar ``name`` in a panel of Fig. 1: a region's own, or the global ones."""
    if panel != "global":
        return f"{name}_{panel}"
    return "global_accuracy" if name == "accuracy" else f"mean_{name}"


def report_figures(trials: Sequence[Trial], folder: Path) -> list[Figure]:
    """The figures of a weight decay study, written into ``folder``: the per-region metrics by
    weight decay (Rukundo2021, Fig. 1, ``regions.png``) and the difference images of the first
    trial of each weight decay (Fig. 2, ``differences.png``). ``(file, caption)`` of each;
    ``[]`` when the trials carry none of these metrics."""
    plt = pyplot()
    folder = Path(folder)
    figures = []
    groups = _by_weight_decay(trials, "iou_myocardium")
    if groups:
        panels = [*REGIONS, "global"]
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), sharey=True)
        width = 0.8 / len(groups)
        for ax, panel in zip(axes, panels):
            for k, (decay, members) in enumerate(groups.items()):
                heights = [np.mean([t.metrics[_panel_metric(name, panel)] for t in members])
                           for name in ("accuracy", "iou", "bf")]
                ax.bar([i + k * width for i in range(3)], heights, width, label=f"L2 = {decay:g}")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(3)], ["accuracy", "IoU", "BF score"])
            ax.set_title(panel.replace("_", " ") if panel != "global"
                         else "global (accuracy; IoU, BF: region means)")
            ax.set_ylim(0, 1)
        axes[0].legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        fig.savefig(folder / "regions.png", dpi=100)
        plt.close(fig)
        figures.append(("regions.png", "Local (per region) and global validation metrics by "
                        "weight decay, mean over repeats (Rukundo2021, Fig. 1)"))
    groups = _by_weight_decay(trials, "difference_0")
    if groups:
        first = {decay: min(members, key=lambda t: t.id) for decay, members in groups.items()}
        cases = min(sum(1 for key in t.metrics if key.startswith("difference_"))
                    for t in first.values())
        fig, axes = plt.subplots(len(first), cases, figsize=(2.6 * cases, 2.6 * len(first)),
                                 squeeze=False)
        for row, (decay, trial) in enumerate(first.items()):
            for case in range(cases):
                codes = np.asarray(trial.metrics[f"difference_{case}"], dtype=int)
                side = math.isqrt(codes.size)
                ax = axes[row][case]
                ax.imshow(_DIFFERENCE_COLOURS[codes.reshape(side, side)], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if case == 0:
                    ax.set_ylabel(f"L2 = {decay:g}\n(trial {trial.id})")
                if row == 0:
                    ax.set_title(f"validation image {case + 1}")
        fig.tight_layout()
        fig.savefig(folder / "differences.png", dpi=100)
        plt.close(fig)
        figures.append(("differences.png", "Difference between network and manual myocardium "
                        "by weight decay (Rukundo2021, Fig. 2): grey where both agree, red where the "
                        "network adds myocardium, blue where it misses it, yellow where it "
                        "confuses background and blood pool"))
    return figures
