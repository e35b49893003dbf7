"""The two-population 3D organ phantom: bean-shaped organs in ultrasound-like volumes.

A stand-in for the kidney dataset of Bertrand2019 (sec. 3.2.3, 4.5): a large, well-represented
population (``"adult"``) and a small one (``"child"``) whose organs are smaller (``child_scale``)
and whose contrast differs. Volumes are cubes of ``image_size`` voxels (48 by default so that
CPU runs stay fast; Bertrand2019's 80 is available); the label is one 6-connected component.
Everything is a deterministic function of ``(seed, index)``, and an item's population depends
only on its index and ``child_fraction``, so a longer dataset extends a shorter one. The shape,
the image model and the documented population differences: docs/datasets.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from medtune.errors import MedtuneError

#: The population names, large population first.
POPULATIONS = ("adult", "child")

#: Adults' organ semi-axes (long, middle, short) as fractions of ``image_size``.
_ADULT_SEMI_AXES = (0.26, 0.14, 0.11)


@dataclass(frozen=True)
class Organ:
    """The organ of one volume: population, centre ``(d, h, w)`` in voxels, semi-axes in voxels
    (before the indentation), rotation angles in radians, bend, and volume in voxels."""

    population: str
    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    angles: tuple[float, float, float]
    bend: float
    volume: int


class OrganPhantom(Dataset):
    """``dataset[i] -> (image [1, D, H, W] float32, label [1, D, H, W] int64)``; label 1 = organ.

    Args:
        size: number of volumes (both populations together).
        image_size: side of the cubic volumes in voxels (32 to 128; 48 default, 80 in Bertrand2019).
        seed: the dataset's seed; volume ``i`` depends only on ``(seed, i)``.
        child_fraction: share of the small population (0.2: four adults to one child).
        child_scale: (min, max) linear size of a child's organ relative to an adult's, uniform.
        contrast: organ echogenicity relative to the surrounding tissue, minus 1, for
            ``(adults, children)``; each above -1.
        speckle: multiply by Rayleigh speckle of mean 1 (ultrasound-like); ``False`` for clean
            images.
        noise: standard deviation of the additive Gaussian noise.
        attenuation: (min, max) depth attenuation over the whole depth, drawn per volume.
    """

    def __init__(
        self,
        size: int = 40,
        image_size: int = 48,
        seed: int = 0,
        child_fraction: float = 0.2,
        child_scale: tuple[float, float] = (0.6, 0.8),
        contrast: tuple[float, float] = (-0.4, -0.2),
        speckle: bool = True,
        noise: float = 0.03,
        attenuation: tuple[float, float] = (0.3, 0.9),
    ) -> None:
        if int(size) < 1:
            raise MedtuneError(f"organ_phantom: size must be >= 1, got {size}")
        if not 32 <= int(image_size) <= 128:
            raise MedtuneError(f"organ_phantom: image_size must lie in [32, 128], got {image_size}")
        if not 0.0 <= child_fraction <= 1.0:
            raise MedtuneError(f"organ_phantom: child_fraction must lie in [0, 1], got {child_fraction}")
        low, high = child_scale
        if not 0.3 <= low <= high <= 1.2:
            raise MedtuneError(
                f"organ_phantom: child_scale must be (min, max) with 0.3 <= min <= max <= 1.2, got {child_scale}"
            )
        if len(contrast) != 2 or any(not value > -1.0 for value in contrast):
            raise MedtuneError(
                f"organ_phantom: contrast must be (adults, children), each > -1, got {contrast}"
            )
        if not noise >= 0:
            raise MedtuneError(f"organ_phantom: noise must be >= 0, got {noise}")
        if not 0.0 <= attenuation[0] <= attenuation[1]:
            raise MedtuneError(
                f"organ_phantom: attenuation must be (min, max) with 0 <= min <= max, got {attenuation}"
            )
        self.size = int(size)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.child_fraction = float(child_fraction)
        self.child_scale = (float(low), float(high))
        self.contrast = (float(contrast[0]), float(contrast[1]))
        self.speckle = bool(speckle)
        self.noise = float(noise)
        self.attenuation = (float(attenuation[0]), float(attenuation[1]))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label, _ = self.generate(index)
        return torch.from_numpy(image)[None], torch.from_numpy(label.astype(np.int64))[None]

    @property
    def populations(self) -> tuple[str, ...]:
        """The population of each volume, ``"adult"`` or ``"child"``."""
        return tuple(self.population(i) for i in range(self.size))

    def population(self, index: int) -> str:
        """The population of volume ``index`` (children spread evenly, see the module doc)."""
        self._check_index(index)
        f = self.child_fraction
        return "child" if math.floor((index + 1) * f + 1e-9) > math.floor(index * f + 1e-9) else "adult"

    def indices(self, population: str) -> list[int]:
        """The indices of one population's volumes (e.g. to oversample the children)."""
        if population not in POPULATIONS:
            raise MedtuneError(f"organ_phantom: population must be one of {POPULATIONS}, got {population!r}")
        return [i for i in range(self.size) if self.population(i) == population]

    def organ(self, index: int) -> Organ:
        """The organ of volume ``index`` (what its label holds, with its pose and volume)."""
        return self.generate(index)[2]

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, Organ]:
        """Volume ``index`` as (image float32 [D, H, W], label uint8 [D, H, W], organ)."""
        population = self.population(index)
        rng = np.random.default_rng([self.seed, index])
        n = self.image_size
        grid = np.mgrid[0:n, 0:n, 0:n].astype(np.float32)  # (d, h, w) voxel coordinates
        label, organ = self._organ(rng, population, grid)
        image = self._ultrasound(rng, population, label, grid[0])
        return image, label, organ

    def _organ(self, rng: np.random.Generator, population: str,
               grid: np.ndarray) -> tuple[np.ndarray, Organ]:
        n = self.image_size
        scale = rng.uniform(*self.child_scale) if population == "child" else 1.0
        semi_axes = np.array(_ADULT_SEMI_AXES) * n * scale * rng.uniform(0.9, 1.1, size=3)
        angles = rng.uniform(-math.pi / 6, math.pi / 6, size=3) + np.array([0.0, 0.0, rng.uniform(0, math.pi)])
        center = n / 2 - 0.5 + rng.uniform(-0.06, 0.06, size=3) * n
        bend = rng.uniform(0.3, 0.6)
        rotation = _rotation(angles)
        # organ-frame coordinates (p, q, r) = Rᵀ (x - centre), long axis p
        offsets = grid.reshape(3, -1) - center[:, None]
        p, q, r = (rotation.T @ offsets).reshape(3, n, n, n)
        a, b, c = semi_axes
        q_bent = q - bend * b * (p / a) ** 2  # curved centre line: the ends bend towards +q
        mask = (p / a) ** 2 + (q_bent / b) ** 2 + (r / c) ** 2 <= 1.0
        hilum = (p / (0.35 * a)) ** 2 + ((q - b) / (0.5 * b)) ** 2 + (r / (0.6 * c)) ** 2 <= 1.0
        mask &= ~hilum
        components, count = ndimage.label(mask)
        if count > 1:  # keep the largest 6-connected component: one organ
            sizes = np.bincount(components.ravel())[1:]
            mask = components == 1 + int(np.argmax(sizes))
        label = mask.astype(np.uint8)
        organ = Organ(population, tuple(float(v) for v in center), tuple(float(v) for v in semi_axes),
                      tuple(float(v) for v in angles), float(bend), int(label.sum()))
        return label, organ

    def _ultrasound(self, rng: np.random.Generator, population: str, label: np.ndarray,
                    depth: np.ndarray) -> np.ndarray:
        n = self.image_size
        shape = (n, n, n)
        texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.0)
        tissue = 0.5 * (1.0 + 0.15 * texture / max(float(texture.std()), 1e-6))
        contrast = self.contrast[POPULATIONS.index(population)]
        echogenicity = np.where(label > 0, tissue * (1.0 + contrast), tissue)
        image = echogenicity * np.exp(-rng.uniform(*self.attenuation) * depth / n)
        if self.speckle:
            real = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.8)
            imaginary = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.8)
            amplitude = np.sqrt(real**2 + imaginary**2)  # Rayleigh
            image = image * amplitude / amplitude.mean()
        image = image + rng.normal(0.0, self.noise, shape)
        return image.astype(np.float32)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"organ_phantom: index {index} out of range for {self.size} volumes")


def _rotation(angles: np.ndarray) -> np.ndarray:
    """``Rz·Ry·Rx`` for angles about the (d, h, w) axes, in radians."""
    a, b, c = angles
    rot_a = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rot_b = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rot_c = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rot_c @ rot_b @ rot_a
