"""The ``segmentation`` task: a 2D MONAI UNet trained on a dataset plugin, scored by validation Dice.

``value`` is the Dice over all validation pixels after the last epoch (higher is better);
``resource`` overrides ``epochs`` and ``report(epoch, dice)`` follows every epoch. The metrics
beside it - pixel-, slice- and lesion-level (Seo2021, Fig. 3-5) and the adaptive GLF
coefficient trajectories (Seo2021, Fig. 6-7) - and the loss settings (``loss`` a plugin or a
``loss_variants`` entry, options by plugin) are described in docs/tasks.md. An exploratory GLF
loss performs each training step itself (its lookahead uses ``lr``).

Trials with a ``replicate`` setting train on the data, initialisation and batch order of that
replicate, whatever their seed: trials of several losses on one replicate are paired.

Report figures: the paired t-tests of each loss against the Dice loss over the replicates
(Seo2021, Figs. 3-5), the lesion Dice by size of the best trial of each loss (Fig. 4), and the
GLF coefficient trajectories of the best trial of each adaptive loss, over training steps with
their driving metrics (Fig. 6) and in the Tversky plane (Fig. 7).
"""

from __future__ import annotations

import math
import textwrap
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

import medtune
from medtune.errors import MedtuneError
from medtune.metrics.statistics import t_test
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

#: The per-step series of an adaptive GLF loss a trial returns (as ``glf_<name>``): the
#: coefficients and their Tversky-plane projection (Seo2021 Fig. 6 left, Fig. 7) and the
#: batch-averaged metrics that drive them (Fig. 6 right).
TRAJECTORY_SERIES = ("alpha_p", "alpha_n", "beta2", "alpha_p_tversky", "alpha_n_tversky",
                     "precision", "recall", "recall_over_precision")

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
#: Learning-rate schedules: ``constant`` keeps ``lr``; ``cosine`` anneals it from ``lr`` to 0
#: over the training steps (a steadier last epoch, which is what the metrics score).
SCHEDULES = ("constant", "cosine")
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
        "schedule": "constant",
        "epochs": 4,
        "batch_size": 8,
        "dataset": "small_lesion",
        "dataset_options": {},
        "train_size": 64,
        "val_size": 32,
        "threshold": 0.5,
        "threads": 0,
        "replicate": Setting(None, type="integer", optional=True, example="0"),
    }

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        if settings["optimizer"] not in OPTIMIZERS:
            raise MedtuneError(f"segmentation task: optimizer must be one of {sorted(OPTIMIZERS)}, got "
                               f"{settings['optimizer']!r}")
        if settings["schedule"] not in SCHEDULES:
            raise MedtuneError(f"segmentation task: schedule must be one of {list(SCHEDULES)}, got "
                               f"{settings['schedule']!r}")
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
        if settings["replicate"] is not None and settings["replicate"] < 0:
            raise MedtuneError(f"segmentation task: replicate must be >= 0 or unset, got {settings['replicate']!r}")
        if settings["weight_decay"] < 0:
            raise MedtuneError(f"segmentation task: weight_decay must be >= 0, got {settings['weight_decay']!r}")
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float | list[float]]:
        epochs = self.budget(resource, settings["epochs"])
        if settings["replicate"] is not None:  # paired replicates: same data and start per seed
            seed = int(settings["replicate"])
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
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
                     if settings["schedule"] == "cosine" else None)
        explorer = (GLFExploratory(loss_fn, **settings["exploratory_options"])
                    if getattr(loss_fn, "adaptive", None) == "exploratory" else None)
        threshold = float(settings["threshold"])
        dice, scores, last_metrics, training_seconds = 0.0, [], {}, 0.0
        for epoch in range(1, epochs + 1):
            model.train()
            loss_fn.train()
            started = time.perf_counter()
            for images, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                if explorer is not None:
                    explorer.step(model, images, labels, lr=optimizer.param_groups[0]["lr"],
                                  optimizer=optimizer)
                else:
                    loss = loss_fn(model(images), labels)
                    stop_if_diverged(loss)
                    loss.backward()
                    optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            training_seconds += time.perf_counter() - started
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
        metrics: dict[str, float | list[float]] = {"value": dice, **last_metrics, **lesion_metrics(scores),
                                                   "seconds_per_epoch": training_seconds / epochs,
                                                   "parameters": float(sum(p.numel() for p in model.parameters()))}
        trajectory = getattr(loss_fn, "trajectory", None)
        if trajectory is not None and len(trajectory):
            for name in TRAJECTORY_SERIES:
                metrics[f"glf_{name}"] = trajectory.column(name)
        return metrics

    def tables(self, trials: Sequence[Trial]) -> list[PairedComparison]:
        """The paired t-tests of every loss against the Dice loss (:func:`paired_comparison`),
        when the trials carry paired replicates."""
        comparison = paired_comparison(trials)
        return [comparison] if comparison is not None and comparison.rows else []

    def figures(self, trials: Sequence[Trial], folder: Path) -> list[Figure]:
        folder = Path(folder)
        return (paired_figure(trials, folder) + lesion_size_figure(trials, folder)
                + glf_figures(trials, folder))


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


#: The metrics each loss is compared on against the baseline loss (Seo2021, Figs. 3-5).
PAIRED_METRICS = ("value", "precision", "recall", "dice_lesion_slices", "dice_empty_slices",
                  "lesion_dice_small", "lesion_dice_medium", "lesion_dice_large",
                  "lesion_recall_small")
#: The p-value below which a paired difference is marked in the comparison table.
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class PairedComparison:
    """Every loss against a baseline loss trained on the same replicates (``replicate``).

    ``rows``: per loss other than the baseline, its name, the number of replicates both
    completed, and per metric of ``metrics`` the mean difference (loss minus baseline) over
    those replicates with the two-sided paired t-test's p-value (NaN where undefined: fewer
    than two pairs, or a metric missing in a pair; 1 when every difference is 0).
    """

    baseline: str
    metrics: tuple[str, ...]
    rows: tuple[tuple[str, int, tuple[tuple[float, float], ...]], ...]

    @property
    def title(self) -> str:
        return (f"paired t-tests against {self.baseline}: mean difference over the shared "
                f"replicates (two-sided p; * p < {SIGNIFICANCE:g})")

    @property
    def header(self) -> tuple[str, ...]:
        return ("loss", *self.metrics, "pairs")

    def text_rows(self) -> list[list[str]]:
        """Every row as the strings a table shows: ``+0.123 (p 0.004)*`` per metric."""
        def cell(difference: float, p_value: float) -> str:
            if math.isnan(difference):
                return "-"
            if math.isnan(p_value):
                return f"{difference:+.3f}"
            mark = "*" if p_value < SIGNIFICANCE else ""
            return f"{difference:+.3f} (p {p_value:.2g}){mark}"

        return [[loss, *(cell(*pair) for pair in cells), str(pairs)]
                for loss, pairs, cells in self.rows]

    def text(self) -> str:
        """The table as aligned plain text, title first."""
        rows = [list(self.header), *self.text_rows()]
        widths = [max(len(row[k]) for row in rows) for k in range(len(self.header))]
        lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip()
                 for row in rows]
        return "\n".join([self.title, *lines])


def paired_comparison(trials: Sequence[Trial], baseline: str = "dice",
                      metrics: Sequence[str] = PAIRED_METRICS) -> PairedComparison | None:
    """The :class:`PairedComparison` of the COMPLETE ``trials`` against the loss ``baseline``.

    Trials pair when their configurations hold the same ``replicate`` (searched, so that each
    loss is trained on the same replicates: same training data, initialisation and order);
    only the largest budget of each loss counts, and a loss trained twice on one replicate
    keeps its first trial. None when no trial of ``baseline`` carries a ``replicate``.
    """
    runs: dict[str, dict[Any, Trial]] = {}
    largest: dict[str, float] = {}
    for trial in trials:
        if trial.state != TrialState.COMPLETE or "replicate" not in trial.config:
            continue
        loss = str(trial.config.get("loss", ""))
        largest[loss] = max(largest.get(loss, -math.inf), trial.resource or 0.0)
    for trial in trials:
        if trial.state != TrialState.COMPLETE or "replicate" not in trial.config:
            continue
        loss = str(trial.config.get("loss", ""))
        if (trial.resource or 0.0) == largest[loss]:
            runs.setdefault(loss, {}).setdefault(trial.config["replicate"], trial)
    if baseline not in runs:
        return None
    reference = runs[baseline]
    rows = []
    for loss, by_replicate in runs.items():
        if loss == baseline:
            continue
        shared = [r for r in by_replicate if r in reference]
        cells = []
        for metric in metrics:
            pairs = [(_value(by_replicate[r], metric), _value(reference[r], metric)) for r in shared]
            cells.append(_paired_test([(a, b) for a, b in pairs if a is not None and b is not None]))
        rows.append((loss, len(shared), tuple(cells)))
    return PairedComparison(baseline, tuple(metrics), tuple(rows))


def _value(trial: Trial, metric: str) -> float | None:
    value = trial.value if metric == "value" else trial.metrics.get(metric)
    return float(value) if _finite(value) else None


def _paired_test(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """(mean difference, two-sided paired t-test p-value) of ``pairs`` (first minus second)."""
    if not pairs:
        return math.nan, math.nan
    differences = [a - b for a, b in pairs]
    mean = float(np.mean(differences))
    if len(pairs) < 2:
        return mean, math.nan
    if all(d == 0 for d in differences):
        return 0.0, 1.0
    first, second = zip(*pairs)
    with warnings.catch_warnings():  # nearly constant differences: scipy warns, p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return mean, t_test(first, second, paired=True).p_value


def paired_figure(trials: Sequence[Trial], folder: Path) -> list[Figure]:
    """The :func:`paired_comparison` against the Dice loss drawn as a table
    (``paired_tests.png``) and written as text (``paired_tests.txt``); ``[]`` when the trials
    have no paired replicates of a ``dice`` loss."""
    comparison = paired_comparison(trials)
    if comparison is None or not comparison.rows:
        return []
    (folder / "paired_tests.txt").write_text(comparison.text() + "\n")
    plt = pyplot()
    header = [name.replace("_", "\n") for name in comparison.header]
    rows = comparison.text_rows()
    fig, ax = plt.subplots(figsize=(2.0 + 1.35 * len(header), 0.9 + 0.42 * len(rows)))
    ax.axis("off")
    table = ax.table(cellText=[[c.replace(" (", "\n(") for c in row] for row in rows],
                     colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1, 2.2)
    ax.set_title(comparison.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "paired_tests.png", dpi=100)
    plt.close(fig)
    return [("paired_tests.png", f"Each loss against the {comparison.baseline} loss, trained on the "
             "same replicates: mean difference (loss minus baseline) and two-sided paired t-test "
             f"p-value per metric (* p < {SIGNIFICANCE:g}); as text in paired_tests.txt")]


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


def _series(trial: Trial, name: str) -> list[float] | None:
    """The per-step series ``glf_<name>`` of ``trial`` as floats (a stored NaN, None, as NaN);
    None when the trial has no such series."""
    values = trial.metrics.get(f"glf_{name}")
    if not isinstance(values, list) or not values:
        return None
    return [float(v) if _finite(v) else math.nan for v in values]


def _adaptive_trials(trials: Sequence[Trial]) -> list[Trial]:
    """The best trial of each loss whose trials record GLF coefficient series (best first, the
    largest budgets first), in the order of the losses' names."""
    by_loss: dict[str, Trial] = {}
    for trial in _best_first(trials):
        if all(_series(trial, name) is not None for name in ("alpha_p", "alpha_n", "beta2")):
            by_loss.setdefault(str(trial.config.get("loss", "all trials")), trial)
    return [by_loss[loss] for loss in sorted(by_loss)]


def _trial_name(trial: Trial) -> str:
    return f"{trial.config.get('loss', 'trial')} (trial {trial.id})"


def glf_figures(trials: Sequence[Trial], folder: Path) -> list[Figure]:
    """The adaptive GLF coefficients of the best trial of each loss that records them (for
    Seo2021's comparison: each reading of the deterministic freeze rule and the exploratory
    rule): over training steps with the metrics that drive them (``trajectories.png``,
    :func:`trajectories_figure`, Fig. 6) and in the Tversky plane (``tversky_plane.png``,
    :func:`tversky_plane_figure`, Fig. 7); ``[]`` when no trial records them."""
    shown = _adaptive_trials(trials)
    if not shown:
        return []
    plt = pyplot()
    names = ", ".join(_trial_name(t) for t in shown)
    figures = []
    for file, draw, caption in (
        ("trajectories.png", trajectories_figure,
         f"Seo2021 Fig. 6: adaptive GLF coefficients over training steps (left) and the "
         f"batch-averaged metrics that drive them (right), best trial of each adaptive loss: "
         f"{names}. Dice is alpha_P = alpha_N = beta^2 = 1."),
        ("tversky_plane.png", tversky_plane_figure,
         f"Seo2021 Fig. 7: the same coefficients mapped to the Tversky plane (colour: training "
         f"step) for {names}. A fixed Dice loss sits at the red star, a fixed Effectiveness loss "
         "on the grey line, a fixed Tversky loss at one point."),
    ):
        fig = draw(shown)
        fig.savefig(folder / file, dpi=100)
        plt.close(fig)
        figures.append((file, caption))
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


def trajectories_figure(trials: Sequence[Trial]):
    """Seo2021's Fig. 6 for each of ``trials`` (one row each): the coefficients alpha_P,
    alpha_N, beta^2 over training steps on a log axis (left) and the batch-averaged soft
    precision and recall with the ratio R_aN / P_aP that drives beta^2 (right; the ratio on its
    own log axis), as a matplotlib figure. Series a trial lacks are left out."""
    plt = pyplot()
    fig, axes = plt.subplots(len(trials), 2, figsize=(11, 3.2 * len(trials)), squeeze=False)
    for (left, right), trial in zip(axes, trials):
        for k, name in enumerate(("alpha_p", "alpha_n", "beta2")):
            values = _series(trial, name)
            if values is not None:
                left.plot(range(1, len(values) + 1), values, color=f"C{k}", lw=1,
                          label=glf_label(f"glf_{name}"))
        left.axhline(1.0, color="0.6", lw=0.8, ls=":")
        left.set_yscale("log")
        left.set_xlabel("training step")
        left.set_ylabel("coefficient value (log scale)")
        left.legend(fontsize=8, loc="best")
        left.set_title("\n".join([f"coefficients: {_trial_name(trial)}",
                                  *config_lines(trial.config, lines=2)]), fontsize=8)
        for k, name in enumerate(("precision", "recall")):
            values = _series(trial, name)
            if values is not None:
                right.plot(range(1, len(values) + 1), values, color=f"C{k + 3}", lw=0.8,
                           label=f"{name} (batch, soft)")
        right.set_ylim(0, 1)
        right.set_xlabel("training step")
        right.set_ylabel("precision, recall")
        ratio = _series(trial, "recall_over_precision")
        handles, labels = right.get_legend_handles_labels()
        if ratio is not None and any(v > 0 for v in ratio):
            twin = right.twinx()
            twin.plot(range(1, len(ratio) + 1), ratio, color="C9", lw=0.8, alpha=0.8,
                      label=r"$R_{\alpha_N} / P_{\alpha_P}$")
            twin.set_yscale("log")
            twin.set_ylabel("weighted recall / weighted precision (log)")
            extra_handles, extra_labels = twin.get_legend_handles_labels()
            handles, labels = handles + extra_handles, labels + extra_labels
        if handles:
            right.legend(handles, labels, fontsize=8, loc="best")
        right.set_title(f"driving metrics: {_trial_name(trial)}", fontsize=8)
    fig.tight_layout()
    return fig


def tversky_plane_figure(trials: Sequence[Trial]):
    """Seo2021's Fig. 7 for each of ``trials`` (one panel each): ``glf_alpha_p_tversky``
    against ``glf_alpha_n_tversky`` coloured by training step, with the fixed points of the
    Dice loss (1, 1) and of the Effectiveness loss (the line alpha_p + alpha_n = 2), on log
    axes when the trajectories span more than a factor 20, as a matplotlib figure."""
    plt = pyplot()
    names = ("alpha_p_tversky", "alpha_n_tversky")
    pairs = [(trial, *(_series(trial, n) or [] for n in names)) for trial in trials]
    shown = [v for _, a, b in pairs for v in a + b if _finite(v) and v > 0] + [0.5, 2.0]
    low, high = min(shown), max(shown)
    logarithmic = high / low > 20  # the adaptive rules multiply the coefficients
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.8), squeeze=False)
    for ax, (trial, alpha_p, alpha_n) in zip(axes[0], pairs):
        line = [0.02 * k for k in range(1, 100)] if logarithmic else [0.0, 2.0]
        ax.plot(line, [2 - x for x in line], color="0.6", lw=1.5,
                label=r"Effectiveness ($\alpha_P + \alpha_N = 2$)")
        ax.plot(alpha_p, alpha_n, color="0.8", lw=0.8, zorder=1)
        points = ax.scatter(alpha_p, alpha_n, c=range(1, len(alpha_p) + 1), cmap="viridis",
                            s=10, zorder=2)
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
        ax.set_xlabel(glf_label(f"glf_{names[0]}"))
        ax.set_ylabel(glf_label(f"glf_{names[1]}"))
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title(f"Tversky plane: {_trial_name(trial)}", fontsize=9)
    fig.tight_layout()
    return fig
