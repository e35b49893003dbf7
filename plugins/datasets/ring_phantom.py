"""The three-class ring phantom: short-axis cardiac MR-like slices, myocardium as a ring.

A stand-in for the LGE-MRI data of Rukundo2021 (128x128 slices, three classes): label 0 is the
background, 1 the ring ("myocardium"), 2 the cavity it encloses ("blood pool"); the ring
separates the cavity from the background everywhere. Intensities mimic late gadolinium
enhancement, with an optional bright scar sector (still labelled 1), a bias field and Rician
noise. Everything is a deterministic function of ``(seed, index)``. Geometry and intensities
in detail: docs/datasets.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from medtune.errors import MedtuneError

#: Class names by label value.
CLASSES = ("background", "myocardium", "blood_pool")

#: Mean intensity of background tissue, healthy myocardium, blood pool and scar.
_INTENSITIES = {"background": 0.4, "myocardium": 0.1, "blood_pool": 0.8, "scar": 0.7}


@dataclass(frozen=True)
class Ring:
    """The ring of one slice: centre (row, column) and mean outer radius in pixels, mean wall
    thickness in pixels, axis ratio, orientation in radians, whether it has scar, and the pixel
    counts of the myocardium (label 1) and the blood pool (label 2)."""

    row: float
    col: float
    radius: float
    thickness: float
    ellipticity: float
    angle: float
    scar: bool
    myocardium_area: int
    blood_pool_area: int


class RingPhantom(Dataset):
    """``dataset[i] -> (image [1, H, W] float32, label [1, H, W] int64)``; labels 0/1/2 =
    background / ring ("myocardium") / cavity ("blood pool").

    Args:
        size: number of slices.
        image_size: side of the square slices in pixels (64 to 512; 128 as in Rukundo2021).
        seed: the dataset's seed; slice ``i`` depends only on ``(seed, i)``.
        radius: (min, max) mean outer radius as a fraction of ``image_size``, uniform.
        thickness: (min, max) mean wall thickness as a fraction of ``image_size``, uniform.
        ellipticity: (min, max) ratio of the long to the short axis, uniform (1 = circle).
        scar: probability that a slice has an enhanced (bright) sector of myocardium.
        noise: standard deviation of each Gaussian component of the Rician noise.
        bias: largest relative change of the smooth multiplicative bias field.
    """

    def __init__(
        self,
        size: int = 64,
        image_size: int = 128,
        seed: int = 0,
        radius: tuple[float, float] = (0.16, 0.26),
        thickness: tuple[float, float] = (0.05, 0.075),
        ellipticity: tuple[float, float] = (1.0, 1.25),
        scar: float = 0.3,
        noise: float = 0.05,
        bias: float = 0.2,
    ) -> None:
        if int(size) < 1:
            raise MedtuneError(f"ring_phantom: size must be >= 1, got {size}")
        if not 64 <= int(image_size) <= 512:
            raise MedtuneError(f"ring_phantom: image_size must lie in [64, 512], got {image_size}")
        if not 0.05 <= radius[0] <= radius[1] <= 0.3:
            raise MedtuneError(
                f"ring_phantom: radius must be (min, max) with 0.05 <= min <= max <= 0.3 "
                f"(fractions of image_size), got {radius}"
            )
        if not 0.0 < thickness[0] <= thickness[1]:
            raise MedtuneError(f"ring_phantom: thickness must be (min, max) with 0 < min <= max, got {thickness}")
        if 1.25 * thickness[1] > 0.6 * radius[0]:
            raise MedtuneError(
                f"ring_phantom: a wall of thickness up to {thickness[1]} leaves no cavity in a ring "
                f"of radius {radius[0]}; lower thickness or raise radius (the thickest wall must "
                "stay under 60 % of the smallest radius)"
            )
        if not 1.0 <= ellipticity[0] <= ellipticity[1] <= 1.5:
            raise MedtuneError(
                f"ring_phantom: ellipticity must be (min, max) with 1 <= min <= max <= 1.5, got {ellipticity}"
            )
        if 0.75 * thickness[0] * image_size / math.sqrt(ellipticity[1]) < 2.0:
            raise MedtuneError(
                f"ring_phantom: the thinnest walls ({thickness[0]} of {image_size} pixels, 25 % "
                "thinner on the free wall) would be under 2 pixels and let the cavity touch the "
                "background; raise thickness or image_size"
            )
        if not 0.0 <= scar <= 1.0:
            raise MedtuneError(f"ring_phantom: scar is a probability in [0, 1], got {scar}")
        if not noise >= 0:
            raise MedtuneError(f"ring_phantom: noise must be >= 0, got {noise}")
        if not 0.0 <= bias < 1.0:
            raise MedtuneError(f"ring_phantom: bias must lie in [0, 1), got {bias}")
        self.size = int(size)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.radius = (float(radius[0]), float(radius[1]))
        self.thickness = (float(thickness[0]), float(thickness[1]))
        self.ellipticity = (float(ellipticity[0]), float(ellipticity[1]))
        self.scar = float(scar)
        self.noise = float(noise)
        self.bias = float(bias)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label, _ = self.generate(index)
        return torch.from_numpy(image)[None], torch.from_numpy(label.astype(np.int64))[None]

    def ring(self, index: int) -> Ring:
        """The ring of slice ``index`` (what its label holds, with its geometry)."""
        return self.generate(index)[2]

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, Ring]:
        """Slice ``index`` as (image float32 [H, W], label uint8 [H, W], ring)."""
        if not 0 <= index < self.size:
            raise IndexError(f"ring_phantom: index {index} out of range for {self.size} slices")
        rng = np.random.default_rng([self.seed, index])
        n = self.image_size
        rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
        label, ring, theta, wall = self._geometry(rng, rows, cols)
        image = self._intensities(rng, label, theta, wall, ring, rows, cols)
        return image, label, ring

    def _geometry(self, rng: np.random.Generator, rows: np.ndarray,
                  cols: np.ndarray) -> tuple[np.ndarray, Ring, np.ndarray, np.ndarray]:
        n = self.image_size
        row0, col0 = (n - 1) / 2 + rng.uniform(-0.08, 0.08, size=2) * n
        radius = rng.uniform(*self.radius) * n
        thickness = rng.uniform(*self.thickness) * n
        ellipticity = rng.uniform(*self.ellipticity)
        angle = rng.uniform(0, math.pi)
        septum = rng.uniform(0, 2 * math.pi)  # direction of the thickest wall
        dr, dc = rows - row0, cols - col0
        u = (dr * math.cos(angle) + dc * math.sin(angle)) / math.sqrt(ellipticity)
        v = (-dr * math.sin(angle) + dc * math.cos(angle)) * math.sqrt(ellipticity)
        rho, theta = np.hypot(u, v), np.arctan2(v, u)
        wall_thickness = thickness * (1.0 + 0.25 * np.cos(theta - septum))
        inner = radius - wall_thickness
        label = np.zeros((n, n), dtype=np.uint8)
        label[rho <= radius] = 1
        label[rho <= inner] = 2
        # depth into the wall from the endocardium: 0 at the cavity, 1 at the epicardium
        wall = np.clip((rho - inner) / wall_thickness, 0.0, 1.0)
        has_scar = bool(rng.uniform() < self.scar)
        ring = Ring(float(row0), float(col0), float(radius), float(thickness), float(ellipticity),
                    float(angle), has_scar, int((label == 1).sum()), int((label == 2).sum()))
        return label, ring, theta, wall

    def _intensities(self, rng: np.random.Generator, label: np.ndarray, theta: np.ndarray,
                     wall: np.ndarray, ring: Ring, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        n = self.image_size
        image = np.zeros((n, n))
        for value, name in enumerate(CLASSES):
            texture = ndimage.gaussian_filter(rng.standard_normal((n, n)), n / 32)
            texture /= max(float(texture.std()), 1e-6)
            mean = _INTENSITIES[name] + rng.uniform(-0.05, 0.05)
            image[label == value] = (mean + 0.03 * texture)[label == value]
        scar_centre, scar_width = rng.uniform(0, 2 * math.pi), rng.uniform(0.4, 1.2)
        scar_depth, scar_intensity = rng.uniform(0.4, 1.0), _INTENSITIES["scar"] + rng.uniform(-0.05, 0.05)
        if ring.scar:  # a sector from the endocardium outwards, its angle in elliptical coordinates
            sector = np.abs(np.angle(np.exp(1j * (theta - scar_centre)))) <= scar_width / 2
            image[(label == 1) & sector & (wall <= scar_depth)] = scar_intensity
        image = ndimage.gaussian_filter(image, 0.7)
        y, x = 2 * rows / (n - 1) - 1, 2 * cols / (n - 1) - 1
        coefficients = rng.uniform(-1, 1, size=5)
        field = coefficients @ np.stack([y, x, y * x, y * y, x * x]).reshape(5, -1)
        field = field.reshape(n, n) / max(float(np.abs(field).max()), 1e-6)
        image = image * (1.0 + self.bias * field)
        real = image + rng.normal(0.0, self.noise, (n, n))
        imaginary = rng.normal(0.0, self.noise, (n, n))
        return np.hypot(real, imaginary).astype(np.float32)
