"""The ``transfer`` task: adapt an organ-segmentation network trained on adults to children
(Bertrand2019, sec. 3.3-3.5, table 3.1).

``method`` picks a row of the table: the baselines ``adults``, ``children`` and ``joint``
(children oversampled), trained from scratch, and the transfer methods, which start from the
adults network and train on children only: ``fine_tuning``, ``partial_first`` /
``partial_last`` (the layers before / after the split, by default the first up-sampling layer),
``fixed_convolutions``, ``geometric``, ``intensity`` and ``geometric_intensity``; added layers
train alone, the adults network stays frozen. The trial's seed draws the train/test split of
each population and the initial weights, as the thesis' five seeds do. ``value`` is the mean of
the two populations' Dice; the other metrics are listed in docs/tasks.md. ``threads`` defaults
to 1 here: networks this small gain nothing from more.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

import medtune
from medtune.errors import MedtuneError
from medtune.tasks import Task, stop_if_diverged

#: the rows of the table: ``{method: what it trains}``
METHODS: dict[str, str] = {
    "adults": "adults baseline: a network trained on adults only",
    "children": "children baseline: a network trained on children only",
    "joint": "joint baseline: trained on adults and oversampled children",
    "fine_tuning": "the adults network, every layer fine-tuned on children",
    "partial_first": "the adults network, its first layers fine-tuned on children",
    "partial_last": "the adults network, its last layers fine-tuned on children",
    "fixed_convolutions": "the adults network with new convolutions after its sampling layers, trained on children",
    "geometric": "the adults network behind a geometric transfer layer trained on children",
    "intensity": "the adults network with an intensity transfer layer trained on children",
    "geometric_intensity": "the adults network with geometric and intensity layers trained on children",
}

_POSITIVE = ("image_size", "train_adults", "test_adults", "train_children", "test_children", "width",
             "epochs", "source_epochs", "batch_size", "lr", "transfer_lr", "hidden")

#: methods that start from the adults network
_TRANSFERS = ("fine_tuning", "partial_first", "partial_last", "fixed_convolutions", "geometric", "intensity",
              "geometric_intensity")

Volumes = tuple[torch.Tensor, torch.Tensor]  # images [M, 1, D, H, W] float32, labels [M, 1, D, H, W] float32


class TransferTask(Task):
    """One row of table 3.1: a baseline or a transfer method, scored on adults and children."""

    name = "transfer"
    settings = {
        "method": "geometric_intensity",
        "image_size": 48,
        "train_adults": 24,
        "test_adults": 8,
        "train_children": 8,
        "test_children": 8,
        "width": 4,
        "epochs": 30,
        "source_epochs": 30,
        "batch_size": 4,
        "lr": 1e-2,
        "transfer_lr": 1e-3,
        "partial_layers": 0,
        "hidden": 4,
        "threshold": 0.5,
        "dataset_seed": 0,
        "dataset_options": {},
        "threads": 1,
    }
    table = {"rows": ["method"],
             "columns": ["value", "dice_adult", "dice_child", "parameters_added", "seconds_per_epoch"]}

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        if settings["method"] not in METHODS:
            raise MedtuneError(f"transfer task: method must be one of {', '.join(METHODS)}, got "
                               f"{settings['method']!r}")
        for key in _POSITIVE:
            if not settings[key] > 0:
                raise MedtuneError(f"transfer task: {key} must be a number > 0, got {settings[key]!r}")
        if settings["partial_layers"] < 0:
            raise MedtuneError(f"transfer task: partial_layers must be an integer >= 0 (0: split at the first "
                               f"up-sampling layer), got {settings['partial_layers']!r}")
        if not 0.0 < settings["threshold"] < 1.0:
            raise MedtuneError(f"transfer task: threshold must lie in (0, 1), got {settings['threshold']!r}")
        reserved = sorted(set(settings["dataset_options"]) & {"size", "image_size", "seed", "child_fraction"})
        if reserved:
            raise MedtuneError(
                f"transfer task: dataset_options may not set {', '.join(reserved)}: the task sets them from "
                "image_size, dataset_seed and the population sizes (train_adults, test_adults, ...); "
                "do not set child_fraction, size or seed there")
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float]:
        """Run one row of table 3.1 (``method``) for ``resource`` epochs (default ``epochs``) and
        score it on held-out adults and children."""
        epochs = self.budget(resource, settings["epochs"])
        method = settings["method"]
        volumes = _phantom(
            int(settings["train_adults"]) + int(settings["test_adults"]),
            int(settings["train_children"]) + int(settings["test_children"]),
            int(settings["image_size"]), int(settings["dataset_seed"]),
            tuple(sorted((key, tuple(value) if isinstance(value, list) else value)
                         for key, value in settings["dataset_options"].items())),
        )
        generator = torch.Generator().manual_seed(seed)
        train_adults, test_adults = _split(volumes["adult"], int(settings["train_adults"]), generator)
        train_children, test_children = _split(volumes["child"], int(settings["train_children"]), generator)
        torch.manual_seed(seed)
        batch_size, threshold = int(settings["batch_size"]), float(settings["threshold"])
        lr, transfer_lr = float(settings["lr"]), float(settings["transfer_lr"])

        def scores(model: nn.Module) -> tuple[float, float]:
            return (_evaluate(model, test_adults, threshold, batch_size),
                    _evaluate(model, test_children, threshold, batch_size))

        def reporter(model: nn.Module) -> Callable[[int], None] | None:
            if report is None:
                return None
            return lambda epoch: report(epoch, sum(scores(model)) / 2)

        if method in _TRANSFERS:
            source = build_unet3d(settings["width"])
            _train(source, list(source.parameters()), lambda: train_adults, int(settings["source_epochs"]), lr,
                   batch_size, generator)
            model, trained, added = _transfer_model(method, source, settings)
            data, rate = (lambda: train_children), transfer_lr
        else:
            model = build_unet3d(settings["width"])
            trained = list(model.parameters())
            added = sum(p.numel() for p in trained)
            data = {"adults": lambda: train_adults, "children": lambda: train_children,
                    "joint": _oversampled(train_adults, train_children, generator)}[method]
            rate = lr
        seconds = _train(model, trained, data, epochs, rate, batch_size, generator, reporter(model))
        dice_adult, dice_child = scores(model)
        return {
            "value": (dice_adult + dice_child) / 2,
            "dice_adult": dice_adult,
            "dice_child": dice_child,
            "parameters_added": float(added),
            "parameters_trained": float(sum(p.numel() for p in trained)),
            "seconds_per_epoch": seconds,
        }


def build_unet3d(width: int) -> nn.Module:
    """A 3D MONAI UNet with ``width`` channels at full resolution, doubling at each of 3 levels."""
    from monai.networks.nets import UNet

    width = int(width)
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(width, 2 * width, 4 * width, 8 * width),
        strides=(2, 2, 2),
        num_res_units=0,
    )


@functools.lru_cache(maxsize=2)
def _phantom(adults: int, children: int, image_size: int, seed: int,
             options: tuple[tuple[str, Any], ...]) -> dict[str, Volumes]:
    """Every volume of the phantom, by population (kept in memory: the task runs it per trial)."""
    size = adults + children
    dataset = medtune.create(
        "dataset", "organ_phantom", size=size, image_size=image_size, seed=seed,
        child_fraction=children / size, **dict(options),
    )
    volumes = {}
    for population, wanted in (("adult", adults), ("child", children)):
        indices = dataset.indices(population)
        if len(indices) != wanted:
            raise MedtuneError(
                f"transfer task: the phantom holds {len(indices)} {population} volumes, {wanted} wanted; "
                "the organ_phantom plugin spreads its populations differently than this task expects"
            )
        items = [dataset[i] for i in indices]
        images = torch.stack([image for image, _ in items])
        mean, std = images.mean((1, 2, 3, 4), keepdim=True), images.std((1, 2, 3, 4), keepdim=True)
        volumes[population] = (
            (images - mean) / std.clamp(min=1e-6),
            torch.stack([label for _, label in items]).float(),
        )
    return volumes


def _split(volumes: Volumes, train: int, generator: torch.Generator) -> tuple[Volumes, Volumes]:
    order = torch.randperm(volumes[0].shape[0], generator=generator)
    first, rest = order[:train], order[train:]
    return (volumes[0][first], volumes[1][first]), (volumes[0][rest], volumes[1][rest])


def dice_per_volume(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice (eq. 3.1) of each volume's thresholded sigmoid prediction; 1 where both are empty."""
    pred = (torch.sigmoid(logits) > threshold).flatten(1)
    truth = labels.bool().flatten(1)
    overlap = (pred & truth).sum(1).double()
    total = (pred.sum(1) + truth.sum(1)).double()
    return torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))


def _evaluate(model: nn.Module, test: Volumes, threshold: float, batch_size: int) -> float:
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, test[0].shape[0], batch_size):
            images, labels = test[0][start:start + batch_size], test[1][start:start + batch_size]
            scores.append(dice_per_volume(model(images), labels, threshold))
    return float(torch.cat(scores).mean())


def _train(model: nn.Module, parameters: list[nn.Parameter], epoch_data: Callable[[], Volumes], epochs: int,
           lr: float, batch_size: int, generator: torch.Generator,
           after_epoch: Callable[[int], None] | None = None) -> float:
    """Adam on the Dice loss, each batch flipped at random along H and W (the axes across the
    depth attenuation); returns the mean wall time of a training epoch."""
    loss_fn = medtune.create("loss", "dice", sigmoid=True)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        images, labels = epoch_data()
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            flips = [axis for axis in (3, 4) if torch.rand(1, generator=generator).item() < 0.5]
            batch_images, batch_labels = images[batch], labels[batch]
            if flips:
                batch_images, batch_labels = batch_images.flip(flips), batch_labels.flip(flips)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch_images), batch_labels)
            stop_if_diverged(loss)
            loss.backward()
            optimizer.step()
        seconds += time.perf_counter() - started
        if after_epoch is not None:
            after_epoch(epoch)
    return seconds / epochs


def _oversampled(adults: Volumes, children: Volumes, generator: torch.Generator) -> Callable[[], Volumes]:
    """Each epoch: every adult and as many children, each child drawn ``ceil(A / C)`` times or
    fewer (sec. 3.3.2)."""
    count = adults[0].shape[0]

    def epoch() -> Volumes:
        repeats = math.ceil(count / children[0].shape[0])
        drawn = torch.cat([torch.randperm(children[0].shape[0], generator=generator)
                           for _ in range(repeats)])[:count]
        return torch.cat([adults[0], children[0][drawn]]), torch.cat([adults[1], children[1][drawn]])

    return epoch


def _transfer_model(method: str, source: nn.Module,
                    settings: Mapping[str, Any]) -> tuple[nn.Module, list[nn.Parameter], int]:
    """``(model, parameters to train, parameters added)`` of a transfer method on ``source``."""
    if method == "fine_tuning":
        return source, list(source.parameters()), 0
    if method in ("partial_first", "partial_last"):
        k = int(settings["partial_layers"]) or None
        model = medtune.create("transfer_layer", "partial", backbone=source, k=k, end=method.split("_")[1])
        return model, [p for p in source.parameters() if p.requires_grad], 0
    for p in source.parameters():
        p.requires_grad_(False)
    if method == "fixed_convolutions":
        model = medtune.create("transfer_layer", "fixed_convolutions", backbone=source)
        return model, model.added_parameters(), model.parameters_added
    hidden = int(settings["hidden"])
    model = source
    if method in ("intensity", "geometric_intensity"):
        model = medtune.create("transfer_layer", "intensity", backbone=model, hidden=hidden)
    if method in ("geometric", "geometric_intensity"):
        model = medtune.create("transfer_layer", "geometric", backbone=model, hidden=hidden)
    return model, model.added_parameters(), model.parameters_added
