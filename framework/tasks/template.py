"""The template-deformation task: the rows of seed 004's table 4.2 on the two-population organ phantom.

``train_template(config, resource, seed, report)`` is an objective for a study. ``config["method"]``
picks a row of table 4.2:

- ``"baseline"``: a 3D MONAI UNet trained with the Dice loss (the seed's "3D U-Net");
- ``"deformation"``: the template network with the local field only (``G`` fixed to the identity,
  the seed's "Deformation" row);
- ``"template"``: the template network predicting ``G`` and ``L`` (the seed's "Geometric transfo +
  Deformation" row);
- ``"template+implicit"``: the same network, each validation prediction then refined by the
  classical implicit template deformation (eq. 4.3) from the network's ``G`` and ``L``.

As in the seed (sec. 4.6), training is joint on both populations with the children oversampled
(each epoch draws ``train_size`` volumes with replacement, both populations equally likely) and
with the augmentation of table 4.1 (``augment``, on by default; the seed's "no data augmentation"
row is ``augment = false``): per volume a random similarity (translation 3/80 of the field of
view, rotation 0.05 rad, scale 5 %, all standard deviations) and Gaussian noise. The template is
the training label closest to the mean shape, removed from the training set.

Adam's learning rate defaults per method (:data:`LEARNING_RATES`); ``resource`` overrides the
number of epochs; ``report(epoch, dice)`` is called after every epoch with the mean validation
Dice (before refinement for ``"template+implicit"``). ``threads`` sets torch's intra-op threads
for the trial (0, the default: PyTorch's setting; :mod:`medtune.tasks.threads`); 1 avoids the
many-fold slowdown of several threads per process when other jobs share a few cores. The return
value is a dict of floats: ``value`` (mean validation Dice over volumes), ``dice_adult``,
``dice_child``, ``components`` (mean number of 26-connected components of the thresholded
predictions, :func:`medtune.plugins.deformations.template.count_components`),
``seconds_per_epoch`` (training only) and ``parameters`` (trainable).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

import medtune
from medtune.errors import MedtuneError
from medtune.kernels import warp3d
from medtune.plugins.deformations.template import choose_template, count_components
from medtune.plugins.deformations.transforms import similarity_matrix
from medtune.tasks.threads import threaded

#: the rows of table 4.2 this task can train
METHODS = ("baseline", "deformation", "template", "template+implicit")

#: every key the task understands, with its default
TEMPLATE_DEFAULTS: dict[str, Any] = {
    "method": "template",
    "image_size": 48,
    "train_size": 24,
    "val_size": 15,
    "epochs": 20,
    "batch_size": 2,
    "lr": None,
    "width": 8,
    "regularization": 0.01,
    "augment": True,
    "threshold": 0.5,
    "threads": 0,
    "dataset_options": {},
    "template_options": {},
    "implicit_options": {"global_iterations": 20, "local_iterations": 20, "widths": [1.0], "image_sigma": 2.0,
                         "lr": 0.005},
}

#: Adam's learning rate per method when ``lr`` is absent: the UNet learns slowly at the template
#: network's rate, and the template network can push the template out of the volume at the UNet's
LEARNING_RATES = {"baseline": 1e-2, "deformation": 2e-3, "template": 2e-3, "template+implicit": 2e-3}

#: standard deviations of table 4.1's augmentation; translation in normalised units (3 voxels of
#: 80), noise relative to the image's standard deviation (5 on 8-bit intensities)
AUGMENTATION = {"translation": 2 * 3 / 80, "rotation": 0.05, "scale": 0.05, "noise": 0.1}


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(TEMPLATE_DEFAULTS))
    if unknown:
        raise MedtuneError(f"template task: unknown setting(s) {', '.join(map(repr, unknown))}; known: "
                           f"{', '.join(TEMPLATE_DEFAULTS)}")
    settings = {**TEMPLATE_DEFAULTS, **config}
    if settings["method"] not in METHODS:
        raise MedtuneError(f"template task: method must be one of {', '.join(METHODS)}, got {settings['method']!r}")
    for key in ("epochs", "batch_size", "train_size", "val_size", "width", "image_size"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MedtuneError(f"template task: {key} must be a positive integer, got {value!r}")
    if settings["image_size"] % 16:
        raise MedtuneError(f"template task: image_size must be a multiple of 16 (the networks halve it 3 times "
                           f"and the field is a quarter of it), got {settings['image_size']}")
    if settings["train_size"] < 3:
        raise MedtuneError(f"template task: train_size must be >= 3 (one label becomes the template), got "
                           f"{settings['train_size']}")
    if settings["lr"] is None:
        settings["lr"] = LEARNING_RATES[settings["method"]]
    for key in ("lr", "regularization", "threshold"):
        if isinstance(settings[key], bool) or not isinstance(settings[key], (int, float)) or not settings[key] >= 0:
            raise MedtuneError(f"template task: {key} must be a number >= 0, got {settings[key]!r}")
    for key in ("dataset_options", "template_options", "implicit_options"):
        if not isinstance(settings[key], Mapping):
            raise MedtuneError(f"template task: {key} must be a table of options, got {settings[key]!r}")
    return settings


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


@threaded("template", TEMPLATE_DEFAULTS)
def train_template(
    config: Mapping[str, Any],
    resource: float | None = None,
    seed: int = 0,
    report: Callable[[float, float], None] | None = None,
) -> dict[str, float]:
    """Train ``config["method"]`` for ``resource`` epochs (default ``config["epochs"]``) and score it.

    Returns ``{"value", "dice_adult", "dice_child", "components", "seconds_per_epoch",
    "parameters"}`` (see the module docstring).
    """
    settings = _settings(config)
    epochs = int(round(resource)) if resource is not None else settings["epochs"]
    if epochs < 1:
        raise MedtuneError(f"template task: the budget must be at least one epoch, got {resource}")
    return _train(settings, epochs, seed, report)


def _train(settings: dict[str, Any], epochs: int, seed: int,
           report: Callable[[float, float], None] | None) -> dict[str, float]:
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
            raise MedtuneError(f"template task: the {settings['val_size']} validation volumes hold no {population}; "
                               "raise val_size (or the dataset's child_fraction)")

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
            if not torch.isfinite(loss):
                raise MedtuneError(f"template task: the {method} loss became {float(loss)} at epoch {epoch}; "
                                   "lower lr")
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
