"""The small-lesion 2D phantom: CT-like slices with 0-3 small lesions of 20-2000 pixels.

Each slice is a body ellipse of soft tissue with a few organ-like ellipses of other densities,
Gaussian noise and a mild blur, in Hounsfield-like units scaled to roughly [-1, 1]. Lesions are
slightly brighter ellipses inside the body whose areas are drawn log-uniformly from
``lesion_area``; a slice holds 0 to ``max_lesions`` of them, so some slices have no lesion at
all (the Seo2021 evaluation scores those too); ``empty_fraction`` sets that share directly.
Everything is a deterministic function of ``(seed, index)``: the same dataset is rebuilt
identically anywhere, and a slice can be generated on its own. docs/datasets.md has the
settings of Seo2021's regime (lesions of a few pixels, low contrast, mostly empty slices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from medtune.errors import MedtuneError


@dataclass(frozen=True)
class Lesion:
    """One lesion of a slice: centre (row, column) in pixels and area in pixels."""

    row: float
    col: float
    area: int


class SmallLesionPhantom(Dataset):
    """``dataset[i] -> (image [1, H, W] float32, label [1, H, W] int64)``; label 1 = lesion.

    Args:
        size: number of slices.
        image_size: side of the square slices in pixels (128 to 512).
        seed: the dataset's seed; slice ``i`` depends only on ``(seed, i)``.
        max_lesions: at most this many lesions per slice (0 to ``max_lesions``, uniform,
            unless ``empty_fraction`` is set).
        lesion_area: (min, max) lesion area in pixels, drawn log-uniformly.
        contrast: lesion intensity above the surrounding tissue (in image units).
        noise: standard deviation of the Gaussian noise (in image units).
        empty_fraction: ``None`` (default): the number of lesions is uniform in
            0..``max_lesions``, so ``1 / (max_lesions + 1)`` of the slices are lesion-free; a
            number in [0, 1]: each slice is lesion-free with this probability and otherwise
            holds 1 to ``max_lesions`` lesions (uniform). A lesion that finds no free place
            is left out, so a few more slices may end up empty.
    """

    def __init__(
        self,
        size: int = 64,
        image_size: int = 128,
        seed: int = 0,
        max_lesions: int = 3,
        lesion_area: tuple[int, int] = (20, 2000),
        contrast: float = 0.35,
        noise: float = 0.08,
        empty_fraction: float | None = None,
    ) -> None:
        if int(size) < 1:
            raise MedtuneError(f"small_lesion: size must be >= 1, got {size}")
        if not 128 <= int(image_size) <= 512:
            raise MedtuneError(f"small_lesion: image_size must lie in [128, 512], got {image_size}")
        low, high = lesion_area
        if not 1 <= low <= high:
            raise MedtuneError(f"small_lesion: lesion_area must be (min, max) with 1 <= min <= max, got {lesion_area}")
        if high > 0.15 * image_size**2:
            raise MedtuneError(
                f"small_lesion: a lesion of {high} pixels does not fit a {image_size}-pixel slice; "
                "lower lesion_area or raise image_size"
            )
        if max_lesions < 0:
            raise MedtuneError(f"small_lesion: max_lesions must be >= 0, got {max_lesions}")
        if empty_fraction is not None:
            if not 0 <= float(empty_fraction) <= 1:
                raise MedtuneError(
                    f"small_lesion: empty_fraction must be None or lie in [0, 1], got {empty_fraction}")
            if max_lesions < 1 and float(empty_fraction) < 1:
                raise MedtuneError(
                    "small_lesion: empty_fraction < 1 needs max_lesions >= 1 (the other slices "
                    f"hold 1 to max_lesions lesions), got max_lesions={max_lesions}")
        self.size = int(size)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.max_lesions = int(max_lesions)
        self.lesion_area = (int(low), int(high))
        self.contrast = float(contrast)
        self.noise = float(noise)
        self.empty_fraction = None if empty_fraction is None else float(empty_fraction)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label, _ = self.generate(index)
        return torch.from_numpy(image)[None], torch.from_numpy(label.astype(np.int64))[None]

    def lesions(self, index: int) -> list[Lesion]:
        """The lesions of slice ``index`` (what the label map holds, with their areas)."""
        return self.generate(index)[2]

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, list[Lesion]]:
        """Slice ``index`` as (image float32 [H, W], label uint8 [H, W], lesions)."""
        if not 0 <= index < self.size:
            raise IndexError(f"small_lesion: index {index} out of range for {self.size} slices")
        rng = np.random.default_rng([self.seed, index])
        n = self.image_size
        rows, cols = np.mgrid[0:n, 0:n].astype(np.float32)
        image = np.full((n, n), -1.0, dtype=np.float32)  # air
        body = _ellipse(rows, cols, n / 2, n / 2, n * rng.uniform(0.36, 0.44),
                        n * rng.uniform(0.40, 0.47), rng.uniform(-0.3, 0.3))
        image[body] = 0.05
        for _ in range(rng.integers(2, 5)):  # organs of other densities
            organ = _ellipse(rows, cols, n * rng.uniform(0.3, 0.7), n * rng.uniform(0.3, 0.7),
                             n * rng.uniform(0.06, 0.16), n * rng.uniform(0.06, 0.16),
                             rng.uniform(0, math.pi)) & body
            image[organ] = rng.uniform(-0.25, 0.25)
        label = np.zeros((n, n), dtype=np.uint8)
        lesions = []
        if self.empty_fraction is None:
            count = rng.integers(0, self.max_lesions + 1)
        else:
            count = 0 if rng.random() < self.empty_fraction else rng.integers(1, self.max_lesions + 1)
        for _ in range(count):
            lesion = self._place_lesion(rng, rows, cols, body & (label == 0))
            if lesion is None:
                continue
            mask, centre = lesion
            image[mask] += self.contrast
            label[mask] = 1
            lesions.append(Lesion(centre[0], centre[1], int(mask.sum())))
        image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, self.noise, (n, n))
        return image.astype(np.float32), label, lesions

    def _place_lesion(self, rng, rows, cols, free) -> tuple[np.ndarray, tuple[float, float]] | None:
        low, high = self.lesion_area
        area = math.exp(rng.uniform(math.log(low), math.log(high)))
        elongation = rng.uniform(1.0, 1.8)
        semi_minor = math.sqrt(area / (math.pi * elongation))
        for _ in range(20):  # a few tries to land fully inside free tissue
            r, c = rng.uniform(0.2, 0.8, size=2) * self.image_size
            mask = _ellipse(rows, cols, r, c, semi_minor * elongation, semi_minor,
                            rng.uniform(0, math.pi))
            if low <= mask.sum() <= high and np.all(free[mask]):
                return mask, (float(r), float(c))
        return None


def _ellipse(rows, cols, r0, c0, a, b, angle) -> np.ndarray:
    dr, dc = rows - r0, cols - c0
    cos, sin = math.cos(angle), math.sin(angle)
    u = (dr * cos + dc * sin) / a
    v = (-dr * sin + dc * cos) / b
    return u * u + v * v <= 1.0
