"""The ``template`` task: the rows of Bertrand2019's table 4.2 on the two-population organ phantom.

``method`` picks a row: ``baseline`` (a 3D MONAI UNet with the Dice loss), ``deformation``
(the template network, local field only), ``template`` (global transform and local field) or
``template+implicit`` (each validation prediction then refined by the implicit template
deformation, eq. 4.3). Training is joint on both populations with the children oversampled and
the augmentation of table 4.1 (``augment``); the template is the training label closest to the
mean shape, left out of the training set (sec. 4.6). Adam's learning rate defaults per method
(:data:`LEARNING_RATES`). ``value`` is the mean validation Dice over volumes, with
``dice_adult``, ``dice_child``, ``components``, ``seconds_per_epoch`` and ``parameters``
(docs/tasks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

import medtune
from medtune.errors import MedtuneError
from medtune.kernels import warp3d
from medtune.plugins.deformations.template import choose_template, count_components
from medtune.plugins.deformations.transforms import similarity_matrix
from medtune.tasks import Setting, Task, stop_if_diverged

#: the rows of table 4.2 this task can train
METHODS = ("baseline", "deformation", "template", "template+implicit")

#: Adam's learning rate per method when ``lr`` is absent: the UNet learns slowly at the template
#: network's rate, and the template network can push the template out of the volume at the UNet's
LEARNING_RATES = {"baseline": 1e-2, "deformation": 2e-3, "template": 2e-3, "template+implicit": 2e-3}

#: standard deviations of table 4.1's augmentation; translation in normalised units (3 voxels of
#: 80), noise relative to the image's standard deviation (5 on 8-bit intensities)
AUGMENTATION = {"translation": 2 * 3 / 80, "rotation": 0.05, "scale": 0.05, "noise": 0.1}

_POSITIVE_INTEGERS = ("epochs", "batch_size", "train_size", "val_size", "width", "image_size")


class TemplateTask(Task):
    """Organ segmentation by deep template deformation, or by its baseline, on adults and children."""

    name = "template"
    settings = {
        "method": "template",
        "image_size": 48,
        "train_size": 24,
        "val_size": 15,
        "epochs": 20,
        "batch_size": 2,
        "lr": Setting(None, "number", optional=True),
        "width": 8,
        "regularization": 0.01,
        "augment": True,
        "threshold": 0.5,
        "threads": 0,
        "dataset_options": {},
        "template_options": {},
        "implicit_options": {"global_iterations": 20, "local_iterations": 20, "widths": [1.0],
                             "image_sigma": 2.0, "lr": 0.005},
    }
    table = {"rows": ["method"],
             "columns": ["value", "dice_adult", "dice_child", "components", "parameters", "seconds_per_epoch"]}

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        if settings["method"] not in METHODS:
            raise MedtuneError(f"template task: method must be one of {', '.join(METHODS)}, got "
                               f"{settings['method']!r}")
        for key in _POSITIVE_INTEGERS:
            if settings[key] < 1:
                raise MedtuneError(f"template task: {key} must be a positive integer, got {settings[key]!r}")
        if settings["image_size"] % 16:
            raise MedtuneError(f"template task: image_size must be a multiple of 16 (the networks halve it 3 "
                               f"times and the field is a quarter of it), got {settings['image_size']}")
        if settings["train_size"] < 3:
            raise MedtuneError(f"template task: train_size must be >= 3 (one label becomes the template), got "
                               f"{settings['train_size']}")
        if settings["lr"] is None:
            settings["lr"] = LEARNING_RATES[settings["method"]]
        for key in ("lr", "regularization", "threshold"):
            if not settings[key] >= 0:
                raise MedtuneError(f"template task: {key} must be a number >= 0, got {settings[key]!r}")
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float]:
        epochs = self.budget(resource, settings["epochs"])
        method = settings["method"]
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        options = {"image_size": settings["image_size"], **settings["dataset_options"]}
        train = medtune.create("dataset", "organ_phantom", size=settings["train_size"], seed=1000 + seed, **options)
        val = medtune.create("dataset", "organ_phantom", size=settings["val_size"], seed=10**6, **options)
        images, labels, populations = _materialise(train)
        val_images, val_labels, val_populations = _materialise(val)
        for population in ("adult", "child"):
            if population not in val_populations:
                raise MedtuneError(f"template task: the {settings['val_size']} validation volumes hold no "
                                   f"{population}; raise val_size (or the dataset's child_fraction)")

        template, index = choose_template(list(labels))
        keep = [i for i in range(len(labels)) if i != index]  # the template's volume is not trained on
        images, labels, populations = images[keep], labels[keep], [populations[i] for i in keep]
        counts = {p: populations.count(p) for p in set(populations)}
        weights = torch.tensor([1.0 / counts[p] for p in populations], dtype=torch.float64)
        sampler = WeightedRandomSampler(weights, num_samples=len(populations), replacement=True, generator=generator)
        loader = DataLoader(TensorDataset(images, labels), batch_size=settings["batch_size"], sampler=sampler)

        if method == "baseline":
            model = build_unet3d(settings["width"])
            dice_loss = medtune.create("loss", "dice", sigmoid=True)
            loss_fn = lambda batch, target: dice_loss(model(batch), target)  # noqa: E731
            predict = lambda batch: torch.sigmoid(model(batch))  # noqa: E731
        else:
            model = medtune.create("deformation", "template", template=template, width=settings["width"],
                                   regularization=float(settings["regularization"]),
                                   global_transform=method != "deformation", **settings["template_options"])
            loss_fn = lambda batch, target: model.loss(model(batch), target)  # noqa: E731
            predict = lambda batch: model(batch).segmentation  # noqa: E731
        optimizer = torch.optim.Adam(model.parameters(), lr=float(settings["lr"]))

        def validate() -> torch.Tensor:
            model.eval()
            with torch.no_grad():
                return torch.cat([predict(val_images[i:i + settings["batch_size"]])
                                  for i in range(0, len(val_images), settings["batch_size"])])

        training_seconds = 0.0
        threshold = float(settings["threshold"])
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            for batch, target in loader:
                if settings["augment"]:
                    batch, target = augment(batch, target, generator)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(batch, target)
                stop_if_diverged(loss)
                loss.backward()
                optimizer.step()
            training_seconds += time.perf_counter() - start
            probabilities = validate()
            if report is not None:
                report(epoch, float(np.mean(_dice_per_volume((probabilities > threshold).float(), val_labels))))

        if method == "template+implicit":
            with torch.no_grad():
                output = model(val_images)
            refine = medtune.create("deformation", "implicit", template=template, **settings["implicit_options"])
            probabilities = refine(val_images, output.params, output.displacement).segmentation
        prediction = (probabilities > threshold).float()
        dice = _dice_per_volume(prediction, val_labels)
        components = [count_components(volume[0]) for volume in prediction]
        by_population = {p: [d for d, q in zip(dice, val_populations) if q == p] for p in ("adult", "child")}
        return {
            "value": float(np.mean(dice)),
            "dice_adult": float(np.mean(by_population["adult"])),
            "dice_child": float(np.mean(by_population["child"])),
            "components": float(np.mean(components)),
            "seconds_per_epoch": training_seconds / epochs,
            "parameters": float(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        }


def build_unet3d(width: int) -> torch.nn.Module:
    """The baseline: a 3D MONAI UNet with ``width`` channels at full resolution, doubling at each of 3 levels."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=1,
                channels=(width, 2 * width, 4 * width, 8 * width), strides=(2, 2, 2), num_res_units=1)


def augment(images: torch.Tensor, labels: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Table 4.1's augmentation: one random similarity per volume (image and label) and Gaussian noise."""
    n = images.shape[0]
    draw = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    params = torch.cat([AUGMENTATION["translation"] * draw(n, 3), AUGMENTATION["rotation"] * draw(n, 3),
                        1 + AUGMENTATION["scale"] * draw(n, 3)], dim=1)
    affine = similarity_matrix(params)
    images = warp3d(images, None, affine, padding_mode="border")
    labels = warp3d(labels, None, affine, mode="nearest")
    noise = AUGMENTATION["noise"] * images.flatten(1).std(1).view(-1, 1, 1, 1, 1) * draw(*images.shape)
    return images + noise, labels


def _materialise(dataset: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All (images, float labels, populations) of an organ phantom as tensors."""
    pairs = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([image for image, _ in pairs])
    labels = torch.stack([label for _, label in pairs]).float()
    return images, labels, list(dataset.populations)


def _dice_per_volume(prediction: torch.Tensor, labels: torch.Tensor) -> list[float]:
    overlap = (prediction * labels).flatten(1).sum(1)
    total = prediction.flatten(1).sum(1) + labels.flatten(1).sum(1)
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total)).tolist()
