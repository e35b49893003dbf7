"""Deep quality estimation (DQE, Kofler2022): a 2D DenseNet that predicts a segmentation's rating.

The estimator sees the centre-of-mass slices of a segmentation in the three views, each slice
holding the image contrasts and the segmentation (one tissue-label channel, ``"tissue"``, or
the three BraTS region channels, ``"brats"``), predicts a rating per view and averages them.
The network is MONAI's DenseNet121 or DenseNet201 regressing the standardised rating with the
MSE. After training the batch-norm statistics are re-estimated on the un-augmented training
slices (:meth:`DQE.recalibrate`), since the lagging running averages shift eval-mode ratings.
Checkpoints are read with ``torch.load(weights_only=True)``. Inputs, normalisation, optimisers
and where this departs from Kofler2022: docs/quality.md.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medtune.plugins.quality.augment import SliceAugmentation
from medtune.plugins.quality.cases import ENHANCING, NECROSIS, OEDEMA, Case, QualityError, region_mask
from medtune.plugins.quality.raters import MAX_RATING, MIN_RATING

ARCHITECTURES = ("densenet121", "densenet201")
NORMALISATIONS = ("minmax", "percentile")
#: Label encodings and their number of channels.
LABEL_ENCODINGS = {"tissue": 1, "brats": 3}
VIEWS = ("sagittal", "coronal", "axial")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "constant")
#: MONAI's dense-block configurations of DenseNet121 and DenseNet201.
BLOCK_CONFIGS = {"densenet121": (6, 12, 24, 16), "densenet201": (6, 12, 48, 32)}
#: The ``format`` entry of a DQE checkpoint header.
CHECKPOINT_FORMAT = "medtune-dqe"
CHECKPOINT_VERSION = 1

_MIDDLE = (MIN_RATING + MAX_RATING) / 2
_HALF_RANGE = (MAX_RATING - MIN_RATING) / 2


def _check(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise QualityError(f"DQE: {what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def normalise(image: np.ndarray, method: str) -> np.ndarray:
    """Each channel of ``image`` ``[C, ...]`` scaled to [0, 1] by its min/max (``"minmax"``) or
    by its 0.5/99.5 percentiles and clipped (``"percentile"``)."""
    _check(method, NORMALISATIONS, "normalisation")
    flat = image.reshape(len(image), -1)
    if method == "minmax":
        low, high = flat.min(1), flat.max(1)
    else:
        low, high = np.percentile(flat, [0.5, 99.5], axis=1)
    shape = (-1,) + (1,) * (image.ndim - 1)
    scaled = (image - low.reshape(shape)) / np.maximum(high - low, 1e-8).reshape(shape)
    return np.clip(scaled, 0, 1).astype(np.float32)


def encode_labels(segmentation: np.ndarray, encoding: str) -> np.ndarray:
    """A BraTS label map as float channels: ``[1, ...]`` for ``"tissue"``, ``[3, ...]`` (enhancing
    tumour, tumour core, whole tumour) for ``"brats"``."""
    _check(encoding, tuple(LABEL_ENCODINGS), "label_encoding")
    if encoding == "tissue":
        tissue = np.zeros(segmentation.shape, dtype=np.float32)
        for value, level in ((NECROSIS, 1 / 3), (OEDEMA, 2 / 3), (ENHANCING, 1.0)):
            tissue[segmentation == value] = level
        return tissue[None]
    return np.stack([region_mask(segmentation, r) for r in ("enhancing_tumour", "tumour_core", "whole_tumour")]
                    ).astype(np.float32)


def centre_of_mass(segmentation: np.ndarray) -> tuple[int, ...]:
    """The rounded centre of mass of the segmented voxels, or the volume centre when empty."""
    points = np.argwhere(segmentation > 0)
    if len(points) == 0:
        return tuple(s // 2 for s in segmentation.shape)
    return tuple(int(round(c)) for c in points.mean(0))


def _square(slice_: torch.Tensor, size: int) -> torch.Tensor:
    """``[C, H, W]`` zero-padded to a square and resized (bilinear) to ``size`` x ``size``."""
    height, width = slice_.shape[-2:]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padded = F.pad(slice_, (left, side - width - left, top, side - height - top))
    return F.interpolate(padded[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def view_slices(volume: torch.Tensor, centre: Sequence[int], size: int) -> torch.Tensor:
    """The three centre-of-mass slices of ``volume`` ``[C, D, H, W]`` (sagittal, coronal, axial),
    each resized to ``size`` x ``size``: ``[3, C, size, size]``."""
    slices = [volume[:, centre[0]], volume[:, :, centre[1]], volume[:, :, :, centre[2]]]
    return torch.stack([_square(s, size) for s in slices])


class DQE:
    """The DQE quality estimator (quality-estimator plugin ``dqe``).

    ``contrasts`` image channels per case; ``label_encoding`` ``"tissue"`` or ``"brats"``;
    ``normalisation`` ``"minmax"`` or ``"percentile"``; ``slice_size`` the side of the network's
    input slices; ``augment`` turns the training augmentation on; ``seed`` seeds the weights,
    the batches and the augmentation; ``init_features`` and ``growth_rate`` set the DenseNet's
    width (MONAI's defaults 64 and 32; the depth is the architecture's).
    """

    def __init__(self, architecture: str = "densenet121", contrasts: int = 4, label_encoding: str = "brats",
                 normalisation: str = "percentile", slice_size: int = 32, augment: bool = True,
                 seed: int = 0, init_features: int = 64, growth_rate: int = 32) -> None:
        from monai.networks.nets import DenseNet

        self.architecture = _check(architecture, ARCHITECTURES, "architecture")
        self.label_encoding = _check(label_encoding, tuple(LABEL_ENCODINGS), "label_encoding")
        self.normalisation = _check(normalisation, NORMALISATIONS, "normalisation")
        if contrasts < 1 or slice_size < 32:
            raise QualityError(f"DQE: contrasts must be >= 1 and slice_size >= 32 (the DenseNet halves "
                               f"it five times), got {contrasts} and {slice_size}")
        self.contrasts, self.slice_size = int(contrasts), int(slice_size)
        if init_features < 1 or growth_rate < 1:
            raise QualityError(f"DQE: init_features and growth_rate must be >= 1, got {init_features} and "
                               f"{growth_rate}")
        self.augment, self.seed = bool(augment), int(seed)
        self.init_features, self.growth_rate = int(init_features), int(growth_rate)
        #: rating = rating_mean + rating_scale * network output (both set by :meth:`train`)
        self.rating_mean, self.rating_scale = _MIDDLE, _HALF_RANGE
        torch.manual_seed(self.seed)
        self.network = DenseNet(spatial_dims=2, in_channels=self.in_channels, out_channels=1,
                                init_features=self.init_features, growth_rate=self.growth_rate,
                                block_config=BLOCK_CONFIGS[self.architecture])

    @property
    def in_channels(self) -> int:
        """Image contrasts plus label channels."""
        return self.contrasts + LABEL_ENCODINGS[self.label_encoding]

    def header(self) -> dict[str, Any]:
        """The settings that rebuild this estimator (JSON-able)."""
        return {"architecture": self.architecture, "contrasts": self.contrasts,
                "label_encoding": self.label_encoding, "normalisation": self.normalisation,
                "slice_size": self.slice_size, "augment": self.augment, "seed": self.seed,
                "init_features": self.init_features, "growth_rate": self.growth_rate}

    def slices(self, case: Case) -> torch.Tensor:
        """The network inputs of one case: ``[3 views, in_channels, slice_size, slice_size]``."""
        if case.image.shape[0] != self.contrasts:
            raise QualityError(f"case {case.name!r} has {case.image.shape[0]} image channels; this "
                               f"estimator was built for {self.contrasts} (contrasts=...)")
        volume = np.concatenate([normalise(case.image, self.normalisation),
                                 encode_labels(case.segmentation, self.label_encoding)])
        return view_slices(torch.from_numpy(volume), centre_of_mass(case.segmentation), self.slice_size)

    def _rate(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.rating_mean + self.rating_scale * self.network(inputs)[:, 0]

    def train(self, cases: Sequence[Case], ratings: Sequence[float], epochs: int = 5, optimizer: str = "adam",
              lr: float = 1e-3, batch_size: int = 32, progress: bool = True,
              report: Callable[[int, float], None] | None = None, schedule: str = "onecycle",
              weight_decay: float = 0.0) -> list[float]:
        """Fit the network to the mean ``ratings`` of ``cases`` (one per case) with the MSE loss
        on standardised ratings; every view of a case is a training sample. ``lr`` is the peak
        rate of the ``"onecycle"`` schedule or the rate of the ``"constant"`` one;
        ``weight_decay`` is passed to the optimiser. Returns the mean loss of each epoch (in
        squared stars); ``report(epoch, loss)`` is called after each epoch."""
        ratings = np.asarray(ratings, dtype=np.float32).reshape(-1)
        if len(cases) != len(ratings) or len(cases) == 0:
            raise QualityError(f"DQE.train: needs one rating per case, got {len(cases)} cases and "
                               f"{len(ratings)} ratings")
        if not np.isfinite(ratings).all():
            raise QualityError("DQE.train: a rating is NaN or infinite; pass each case's mean rating")
        if epochs < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
            raise QualityError(f"DQE.train: epochs, batch_size and lr must be positive and weight_decay >= 0, "
                               f"got {epochs}, {batch_size}, {lr}, {weight_decay}")
        _check(optimizer, OPTIMIZERS, "optimizer")
        _check(schedule, SCHEDULES, "schedule")
        inputs = torch.cat([self.slices(case) for case in cases])
        targets = torch.from_numpy(np.repeat(ratings, len(VIEWS)))
        # a constant rating set (std 0) keeps a unit scale rather than dividing by zero
        self.rating_mean, self.rating_scale = float(ratings.mean()), max(float(ratings.std()), 0.1)
        parameters = self.network.parameters()
        if optimizer == "sgd":
            step = torch.optim.SGD(parameters, lr=lr, momentum=0.95, weight_decay=weight_decay)
        else:
            step = (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)(
                parameters, lr=lr, weight_decay=weight_decay)
        augmentation = SliceAugmentation(self.contrasts, self.seed) if self.augment else None
        generator = torch.Generator().manual_seed(self.seed)
        batches = -(-len(inputs) // batch_size)
        scheduler = (torch.optim.lr_scheduler.OneCycleLR(step, max_lr=lr, total_steps=epochs * batches)
                     if schedule == "onecycle" else None)
        losses = []
        columns = (TextColumn("DQE {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task(f"{self.architecture} training", total=epochs * batches)
            self.network.train()
            for epoch in range(1, epochs + 1):
                order = torch.randperm(len(inputs), generator=generator)
                total = 0.0
                for start in range(0, len(inputs), batch_size):
                    index = order[start:start + batch_size]
                    if len(index) < 2:  # batch norm needs two samples
                        bar.advance(task)
                        continue
                    batch = inputs[index]
                    if augmentation is not None:
                        batch = augmentation.augment_batch(batch)
                    step.zero_grad(set_to_none=True)
                    output = self.network(batch)[:, 0]
                    loss = F.mse_loss(output, (targets[index] - self.rating_mean) / self.rating_scale)
                    loss.backward()
                    step.step()
                    if scheduler is not None:
                        scheduler.step()
                    total += loss.detach().item() * len(index) * self.rating_scale ** 2
                    bar.advance(task)
                losses.append(total / len(inputs))
                if report is not None:
                    report(epoch, losses[-1])
        self.recalibrate(inputs, batch_size)
        return losses

    @torch.no_grad()
    def recalibrate(self, inputs: torch.Tensor, batch_size: int = 32) -> None:
        """Re-estimate the batch-norm statistics on ``inputs`` (un-augmented training slices)
        as exact averages, then switch to eval mode: after a few hundred steps the running
        averages still lag the weights, which makes eval-mode predictions collapse."""
        norms = [m for m in self.network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the batches below
        self.network.train()
        for start in range(0, len(inputs), batch_size):
            self.network(inputs[start:start + batch_size])
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        self.network.eval()

    @torch.no_grad()
    def predict_views(self, cases: Sequence[Case], batch_size: int = 64) -> np.ndarray:
        """The rating of each case in each view: ``[cases, 3]`` (sagittal, coronal, axial)."""
        self.network.eval()
        inputs = torch.cat([self.slices(case) for case in cases]) if cases else torch.zeros(0)
        rated = [self._rate(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
        return torch.cat(rated).reshape(-1, len(VIEWS)).numpy() if rated else np.zeros((0, len(VIEWS)))

    def predict(self, cases: Sequence[Case]) -> np.ndarray:
        """The predicted rating of each case: the mean over the three views."""
        return self.predict_views(cases).mean(1)

    def rate_soft(self, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Ratings ``[B]`` of 2D slices, differentiable with respect to ``labels``.

        ``image`` ``[B, contrasts, H, W]`` is normalised per sample and channel as in training;
        ``labels`` ``[B, k, H, W]`` are soft label channels in this estimator's encoding (k = 1
        or 3, values in [0, 1]). Both are resized to ``slice_size``.
        """
        if image.ndim != 4 or labels.ndim != 4 or image.shape[0] != labels.shape[0]:
            raise QualityError(f"DQE.rate_soft: expected image [B, C, H, W] and labels [B, k, H, W], got "
                               f"{tuple(image.shape)} and {tuple(labels.shape)}")
        if image.shape[1] != self.contrasts or labels.shape[1] != LABEL_ENCODINGS[self.label_encoding]:
            raise QualityError(f"DQE.rate_soft: this estimator takes {self.contrasts} image channels and "
                               f"{LABEL_ENCODINGS[self.label_encoding]} label channel(s) "
                               f"({self.label_encoding} encoding), got {image.shape[1]} and {labels.shape[1]}")
        flat = image.detach().flatten(2)
        if self.normalisation == "minmax":
            low, high = flat.min(2).values, flat.max(2).values
        else:
            low, high = torch.quantile(flat, 0.005, dim=2), torch.quantile(flat, 0.995, dim=2)
        low, high = low[..., None, None], high[..., None, None]
        scaled = ((image.detach() - low) / (high - low).clamp_min(1e-8)).clamp(0, 1)
        inputs = torch.cat([scaled, labels.to(scaled.dtype)], dim=1)
        size = (self.slice_size, self.slice_size)
        return self._rate(F.interpolate(inputs, size=size, mode="bilinear", align_corners=False))

    def save(self, path: str | Path) -> None:
        """Write a checkpoint: the network's state dict, the settings header and the rating scale."""
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                    "header": json.dumps(self.header()), "state_dict": self.network.state_dict(),
                    "ratings": json.dumps({"mean": self.rating_mean, "scale": self.rating_scale})}, path)

    @classmethod
    def load(cls, path: str | Path) -> "DQE":
        """Rebuild an estimator from a checkpoint written by :meth:`save`."""
        path = Path(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise QualityError(f"{path}: no such checkpoint; write one with DQE.save") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise QualityError(f"{path}: not a medtune DQE checkpoint, or one holding objects other than "
                               f"tensors, which are refused ({type(exc).__name__}); write checkpoints with "
                               "DQE.save") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise QualityError(f"{path}: not a medtune DQE checkpoint (no {CHECKPOINT_FORMAT!r} header); "
                               "write checkpoints with DQE.save")
        if payload.get("version") != CHECKPOINT_VERSION:
            raise QualityError(f"{path}: DQE checkpoint version {payload.get('version')!r}; this medtune "
                               f"reads version {CHECKPOINT_VERSION}")
        estimator = cls(**json.loads(payload["header"]))
        estimator.network.load_state_dict(payload["state_dict"])
        if "ratings" in payload:
            scale = json.loads(payload["ratings"])
            estimator.rating_mean, estimator.rating_scale = float(scale["mean"]), float(scale["scale"])
        estimator.network.eval()
        return estimator
