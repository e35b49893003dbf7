"""The ``segmentation`` task: a 2D MONAI UNet trained on a dataset plugin, scored by validation Dice.

``value`` is the Dice over all validation pixels after the last epoch (higher is better);
``resource`` overrides ``epochs`` and ``report(epoch, dice)`` follows every epoch. The metrics
beside it - pixel-, slice- and lesion-level (Seo2021, Fig. 3-5) and the adaptive GLF
coefficient trajectories (Seo2021, Fig. 6-7) - and the loss settings (``loss`` a plugin or a
``loss_variants`` entry, options by plugin) are described in docs/tasks.md. An exploratory GLF
loss performs each training step itself (its lookahead uses ``lr``).

Report figures: the lesion Dice by size of the best trial of each loss (Seo2021, Fig. 4), and
the GLF coefficient trajectories of the best trial that records them, over training steps
(Fig. 6) and in the Tversky plane (Fig. 7).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

import medtune
from medtune.errors import MedtuneError
from medtune.plugins.losses.exploratory import GLFExploratory
from medtune.study.store import Trial, TrialState
from medtune.tables import format_config
from medtune.tasks import Figure, Setting, Task, pyplot, stop_if_diverged

#: Lesion size bins in pixels, ``(name, lowest area, highest area)``: Seo2021 sees the
#: differences between losses below about 100 pixels.
LESION_BINS = (("small", 0, 99), ("medium", 100, 499), ("large", 500, None))
#: Pixels around a lesion inside which its predicted pixels count for its Dice.
LESION_MARGIN = 3
#: How the adaptive GLF coefficient series (Seo2021 Fig. 6 and 7) are labelled in plots.
GLF_LABELS = {
    "glf_alpha_p": r"$\alpha_P$",
    "glf_alpha_n": r"$\alpha_N$",
    "glf_beta2": r"$\beta^2$",
    "glf_alpha_p_tversky": r"$\alpha_P$ (Tversky plane)",
    "glf_alpha_n_tversky": r"$\alpha_N$ (Tversky plane)",
}

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
_POSITIVE = ("lr", "epochs", "batch_size", "train_size", "val_size", "width")


class SegmentationTask(Task):
    """Binary segmentation of a 2D dataset plugin (the small-lesion phantom by default)."""

    name = "segmentation"
    settings = {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "width": 8,
        "loss": "dice",
        "loss_options": {},
        "options_by_loss": Setting({}, example='{glf = {adaptive = "deterministic"}}'),
        "loss_variants": Setting({}, example='{tversky_a03 = {loss = "tversky", alpha = 0.3, beta = 0.7}}'),
        "exploratory_options": Setting({}, example='{gradients = "batch_sums"}'),
        "optimizer": "adam",
        "epochs": 4,
        "batch_size": 8,
        "dataset": "small_lesion",
        "dataset_options": {},
        "train_size": 64,
        "val_size": 32,
        "threshold": 0.5,
        "threads": 0,
    }

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        if settings["optimizer"] not in OPTIMIZERS:
            raise MedtuneError(f"segmentation task: optimizer must be one of {sorted(OPTIMIZERS)}, got "
                               f"{settings['optimizer']!r}")
        for key in _POSITIVE:
            if not settings[key] > 0:
                raise MedtuneError(f"segmentation task: {key} must be > 0, got {settings[key]!r}")
        if not all(isinstance(v, Mapping) for v in settings["options_by_loss"].values()):
            raise MedtuneError(
                "segmentation task: options_by_loss must map loss names to option tables, e.g. "
                f"{{glf = {{adaptive = \"deterministic\"}}}}, got {settings['options_by_loss']!r}")
        variants = settings["loss_variants"]
        if not all(isinstance(v, Mapping) and isinstance(v.get("loss"), str) for v in variants.values()):
            raise MedtuneError(
                "segmentation task: loss_variants must map variant names to tables naming a loss "
                f"plugin and its options, e.g. {{tversky_a03 = {{loss = \"tversky\", alpha = 0.3, "
                f"beta = 0.7}}}}, got {variants!r}")
        if settings["weight_decay"] < 0:
            raise MedtuneError(f"segmentation task: weight_decay must be >= 0, got {settings['weight_decay']!r}")
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float | list[float]]:
        epochs = self.budget(resource, settings["epochs"])
        torch.manual_seed(seed)
        dataset_options = dict(settings["dataset_options"])
        train = medtune.create("dataset", settings["dataset"], size=int(settings["train_size"]),
                               seed=1000 + seed, **dataset_options)
        val = medtune.create("dataset", settings["dataset"], size=int(settings["val_size"]), seed=10**6,
                             **dataset_options)
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(train, batch_size=int(settings["batch_size"]), shuffle=True, generator=generator)
        val_loader = DataLoader(val, batch_size=int(settings["batch_size"]))
        model = build_unet(settings["width"])
        plugin, loss_options = resolve_loss(settings)
        loss_fn = medtune.create("loss", plugin, sigmoid=True, **loss_options)
        optimizer = OPTIMIZERS[settings["optimizer"]](
            model.parameters(), lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"]))
        explorer = (GLFExploratory(loss_fn, **settings["exploratory_options"])
                    if getattr(loss_fn, "adaptive", None) == "exploratory" else None)
        threshold = float(settings["threshold"])
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
                stop_if_diverged(loss)
                loss.backward()
                optimizer.step()
            model.eval()
            tp = fp = fn = 0.0
            last = epoch == epochs
            scores, predictions, truths = [], [], []
            with torch.no_grad():
                for images, labels in val_loader:
                    logits = model(images)
                    a, b, c = dice_score(logits, labels, threshold)
                    tp, fp, fn = tp + a, fp + b, fn + c
                    if last:
                        predicted = (torch.sigmoid(logits) > threshold).numpy()
                        predictions.append(predicted[:, 0])
                        truths.append(labels[:, 0].numpy())
                        for one, truth in zip(predicted[:, 0], labels[:, 0].numpy()):
                            scores.extend(lesion_scores(one, truth))
            dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 1.0
            if last:
                last_metrics = slice_metrics(np.concatenate(predictions), np.concatenate(truths))
            if report is not None:
                report(epoch, dice)
        metrics: dict[str, float | list[float]] = {"value": dice, **last_metrics, **lesion_metrics(scores)}
        trajectory = getattr(loss_fn, "trajectory", None)
        if trajectory is not None and len(trajectory):
            for name in ("alpha_p", "alpha_n", "beta2", "alpha_p_tversky", "alpha_n_tversky"):
                metrics[f"glf_{name}"] = trajectory.column(name)
        return metrics

    def figures(self, trials: Sequence[Trial], folder: Path) -> list[Figure]:
        return lesion_size_figure(trials, Path(folder)) + glf_figures(trials, Path(folder))


def resolve_loss(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The loss plugin and its options for a task ``config``.

    ``config["loss"]`` is a plugin name or a key of ``config["loss_variants"]``; the options
    are ``loss_options``, overridden by ``options_by_loss`` of the plugin, overridden by the
    variant's own entries.
    """
    settings = SegmentationTask().validate(config)
    variant = dict(settings["loss_variants"].get(settings["loss"], {"loss": settings["loss"]}))
    plugin = variant.pop("loss")
    options = {**settings["loss_options"], **settings["options_by_loss"].get(plugin, {}), **variant}
    return plugin, options


def build_unet(width: int) -> torch.nn.Module:
    """A 2D MONAI UNet with ``width`` channels at full resolution, doubling at each of 3 levels."""
    from monai.networks.nets import UNet

    width = int(width)
    return UNet(spatial_dims=2, in_channels=1, out_channels=1,
                channels=(width, 2 * width, 4 * width, 8 * width), strides=(2, 2, 2), num_res_units=1)


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
    """The pixel- and slice-level metrics of Seo2021 of boolean ``predictions`` against ``labels``.

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
        raise MedtuneError(f"slice_metrics: predictions {np.shape(predictions)} and labels "
                           f"{np.shape(labels)} must have the same shape")
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


def lesion_size_figure(trials: Sequence[Trial], folder: Path) -> list[Figure]:
    """The lesion Dice per size bin of the best trial of each loss (Seo2021, Fig. 4), at its
    largest budget, written to ``lesion_sizes.png``; ``[]`` when no trial reports
    ``lesion_dice_<bin>``."""
    bins = [name for name, _, _ in LESION_BINS]
    by_loss: dict[str, Trial] = {}
    for trial in _best_first(trials):
        if any(f"lesion_dice_{b}" in trial.metrics for b in bins):
            by_loss.setdefault(str(trial.config.get("loss", "all trials")), trial)
    if not by_loss:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(by_loss)
    for k, (loss, trial) in enumerate(sorted(by_loss.items())):
        heights = [trial.metrics.get(f"lesion_dice_{b}", np.nan) for b in bins]
        ax.bar([i + k * width for i in range(len(bins))], heights, width, label=f"{loss} (trial {trial.id})")
    labels = [f"{name}\n{low}-{high} px" if high else f"{name}\n≥ {low} px" for name, low, high in LESION_BINS]
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(bins))], labels)
    ax.set_ylabel("mean lesion Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("lesion Dice by size: best trial of each loss")
    fig.tight_layout()
    fig.savefig(folder / "lesion_sizes.png", dpi=100)
    plt.close(fig)
    return [("lesion_sizes.png", "Lesion Dice by lesion size, best trial of each loss (at its largest budget)")]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _best_first(trials: Sequence[Trial]) -> list[Trial]:
    """The COMPLETE ``trials`` with a finite value, best first (Dice: higher is better); the
    largest budgets first, since a configuration trained longer says more than its early stop."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value)]
    return sorted(complete, key=lambda t: (-(t.resource or 0.0), -t.value))


def _trajectory(name: str, value: Any) -> bool:
    """A per-step series (the adaptive GLF coefficients), not a per-case or per-pixel list."""
    return isinstance(value, list) and name.startswith("glf_")


def glf_figures(trials: Sequence[Trial], folder: Path) -> list[Figure]:
    """The adaptive GLF coefficients of the best trial that records them: over training steps
    (``trajectories.png``, :func:`trajectories_figure`) and in the Tversky plane
    (``tversky_plane.png``); ``[]`` when no trial records them."""
    ranked = _best_first(trials)
    figures = []
    with_series = next((t for t in ranked if any(_trajectory(k, v) for k, v in t.metrics.items())),
                       None)
    if with_series is not None:
        plt = pyplot()
        fig = trajectories_figure(with_series)
        fig.tight_layout()
        fig.savefig(folder / "trajectories.png", dpi=100)
        plt.close(fig)
        figures.append(("trajectories.png", f"Per-step trajectories of trial {with_series.id}, "
                        "the best trial that records any (e.g. adaptive GLF coefficients)"))
    figures.extend(_tversky_plane_figure(ranked, folder))
    return figures


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


def glf_label(name: str) -> str:
    """How a ``glf_*`` series is labelled in plots: :data:`GLF_LABELS`, else the name without
    its prefix, in words."""
    return GLF_LABELS.get(name, name.removeprefix("glf_").replace("_", " "))


def trajectories_figure(trial: Trial):
    """The per-step series of ``trial`` (the adaptive GLF coefficients, Seo2021 Fig. 6) as a
    matplotlib figure: one labelled line each (a Tversky-plane projection dashed, in its
    coefficient's colour), on a log axis when every value is positive."""
    plt = pyplot()
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


def _tversky_plane_figure(ranked: Sequence[Trial], folder: Path) -> list[Figure]:
    """The adaptive GLF coefficients of the best trial that records them, projected on the
    Tversky plane (``glf_alpha_p_tversky`` against ``glf_alpha_n_tversky``, Seo2021 Fig. 7),
    coloured by training step, with the fixed points of the Dice loss (1, 1) and of the
    Effectiveness loss (the line alpha_p + alpha_n = 2), on log axes when the trajectory spans
    more than a factor 20. ``(file, caption)`` of the plot, or nothing when no trial in
    ``ranked`` (best first) has the series."""
    names = ("glf_alpha_p_tversky", "glf_alpha_n_tversky")
    trial = next((t for t in ranked if all(isinstance(t.metrics.get(n), list) and t.metrics[n]
                                           for n in names)), None)
    if trial is None:
        return []
    plt = pyplot()
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
             "that records them, mapped to the Tversky plane during training (Seo2021 Fig. 7; "
             "colour: training step). A fixed Dice loss sits at the red star, a fixed "
             "Effectiveness loss on the grey line, a fixed Tversky loss at one point.")]
