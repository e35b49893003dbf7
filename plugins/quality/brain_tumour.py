"""The brain-tumour phantom: four synthetic MR contrasts with a glioma, and weaker segmentations.

A stand-in for the BraTS exams of Kofler2022. Anatomy comes from the MNI152 template that the
nilearn package ships (no download), cropped to the brain and resampled to a cube of
``image_size`` voxels; without nilearn a procedural head stands in (with one warning). Each exam
(a deterministic function of ``(seed, index)``) has a tumour with BraTS labels 1, 2, 4,
optional mass effect, and T1, T1c, T2 and FLAIR-like images. :func:`degrade` makes
segmentations of controlled quality as weaker algorithms produce them. Details:
docs/quality.md.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from medtune.plugins.quality.cases import ENHANCING, NECROSIS, OEDEMA, Case, QualityError

#: Contrast names, the image channel order.
CONTRAST_NAMES = ("t1", "t1c", "t2", "flair")
#: Tissue intensity per contrast: CSF, grey matter, white matter, necrosis, enhancing, oedema.
CONTRASTS = np.array([
    [0.25, 0.55, 0.80, 0.30, 0.55, 0.50],  # T1
    [0.25, 0.55, 0.80, 0.30, 1.00, 0.50],  # T1c: the rim enhances
    [1.00, 0.60, 0.45, 0.95, 0.65, 0.85],  # T2
    [0.20, 0.60, 0.50, 0.45, 0.70, 0.95],  # FLAIR: oedema bright, CSF dark
], dtype=np.float32)
#: Kinds of segmentation error :func:`degrade` simulates.
DEGRADATIONS = ("erode", "dilate", "shift", "miss_tissue", "miss_part", "swap", "blobs")


@dataclass
class Anatomy:
    """Tissue probability maps (CSF, grey matter, white matter) on a cube, and where they came
    from (``"mni152"`` or ``"ellipsoids"``)."""

    csf: np.ndarray
    grey: np.ndarray
    white: np.ndarray
    source: str

    @property
    def brain(self) -> np.ndarray:
        """The brain mask (any tissue above one half)."""
        return (self.csf + self.grey + self.white) > 0.5


@functools.lru_cache(maxsize=4)
def load_anatomy(image_size: int = 48) -> Anatomy:
    """The MNI152 tissue maps resampled to ``image_size`` voxels per side, or the procedural
    head when nilearn is not installed (one warning)."""
    if image_size < 16:
        raise QualityError(f"image_size must be at least 16 voxels, got {image_size}")
    try:
        from nilearn import datasets
    except ImportError:
        warnings.warn("nilearn is not installed: the brain-tumour phantom uses a procedural head "
                      "of ellipsoids; install medtune[data] for the MNI152 anatomy", stacklevel=2)
        return _ellipsoid_anatomy(image_size)
    maps = [datasets.load_mni152_gm_template(resolution=2), datasets.load_mni152_wm_template(resolution=2),
            datasets.load_mni152_brain_mask(resolution=2)]
    grey, white, mask = (np.asarray(m.get_fdata(), dtype=np.float32).clip(0, 1) for m in maps)
    inside = np.argwhere(mask > 0)
    low, high = inside.min(0), inside.max(0) + 1
    side = int((high - low).max()) + 4
    centre = (low + high) // 2
    cube = []
    for volume in (grey, white, mask):
        padded = np.pad(volume, side)
        start = centre + side - side // 2
        block = padded[start[0]:start[0] + side, start[1]:start[1] + side, start[2]:start[2] + side]
        cube.append(ndimage.zoom(block, image_size / side, order=1)[:image_size, :image_size, :image_size])
    grey, white, mask = (np.clip(c, 0, 1) for c in cube)
    csf = np.clip(mask - grey - white, 0, 1)
    return Anatomy(csf.astype(np.float32), grey.astype(np.float32), white.astype(np.float32), "mni152")


def _ellipsoid_anatomy(image_size: int) -> Anatomy:
    axes = np.stack(np.meshgrid(*[np.linspace(-1, 1, image_size)] * 3, indexing="ij"))

    def inside(radii: tuple[float, float, float]) -> np.ndarray:
        return (sum((axes[i] / radii[i]) ** 2 for i in range(3)) <= 1).astype(np.float32)

    brain = inside((0.78, 0.9, 0.75))
    white = inside((0.55, 0.68, 0.52))
    ventricles = inside((0.12, 0.3, 0.15))
    white = np.clip(white - ventricles, 0, 1)
    smooth = functools.partial(ndimage.gaussian_filter, sigma=0.8)
    grey = smooth(np.clip(brain - white - ventricles, 0, 1))
    return Anatomy(smooth(ventricles), grey, smooth(white), "ellipsoids")


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (np.abs(field).max() + 1e-8)


def make_exam(anatomy: Anatomy, rng: np.random.Generator, mass_effect: float = 0.3,
              noise: float = 0.03, bias: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """One exam: the image ``[4, S, S, S]`` (T1, T1c, T2, FLAIR) and its true label map."""
    size = anatomy.white.shape[0]
    brain = anatomy.brain
    depth = ndimage.distance_transform_edt(brain)
    outer = size * rng.uniform(0.15, 0.22)
    core = outer * rng.uniform(0.5, 0.65)
    candidates = np.argwhere((anatomy.white > 0.5) & (depth > core + 2))
    if len(candidates) == 0:
        candidates = np.argwhere(depth >= depth.max() * 0.6)
    centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    grid = np.indices(anatomy.white.shape).astype(np.float64)
    offset = grid - centre[:, None, None, None]
    stretch = rng.uniform(0.8, 1.25, 3)
    radius = np.sqrt(sum((offset[i] / stretch[i]) ** 2 for i in range(3)))
    irregular = radius / (1 + 0.25 * _smooth_field(radius.shape, rng, size / 12))
    tissues = [anatomy.csf, anatomy.grey, anatomy.white]
    if mass_effect > 0:
        push = mass_effect * core * np.exp(-((radius / outer) ** 2))
        source = grid - push * offset / np.maximum(radius, 1e-6)
        tissues = [ndimage.map_coordinates(t, source, order=1, mode="nearest") for t in tissues]
        brain = sum(tissues) > 0.5
    label = np.zeros(radius.shape, dtype=np.int64)
    label[(irregular <= outer) & brain] = OEDEMA
    label[irregular <= core] = ENHANCING
    label[irregular <= core * rng.uniform(0.45, 0.7)] = NECROSIS
    fractions = np.stack(tissues + [label == NECROSIS, label == ENHANCING, label == OEDEMA]).astype(np.float32)
    fractions[:3] *= (label == 0)[None]
    image = np.einsum("ct,t...->c...", CONTRASTS, fractions)
    coords = np.indices(radius.shape).reshape(3, -1).T / size - 0.5
    terms = np.concatenate([coords, coords ** 2], axis=1)
    for channel in range(len(CONTRASTS)):
        field = np.exp(bias * terms @ rng.normal(0, 1, terms.shape[1])).reshape(radius.shape)
        image[channel] = image[channel] * field + rng.normal(0, noise, radius.shape)
    return image.astype(np.float32), label


def _nested(label: np.ndarray) -> list[np.ndarray]:
    return [label > 0, np.isin(label, (NECROSIS, ENHANCING)), label == ENHANCING]


def _from_nested(whole: np.ndarray, core: np.ndarray, enhancing: np.ndarray) -> np.ndarray:
    label = np.zeros(whole.shape, dtype=np.int64)
    label[whole] = OEDEMA
    label[core] = NECROSIS
    label[enhancing & core] = ENHANCING
    return label


def _half_space(label: np.ndarray, mask: np.ndarray, fraction: float,
                rng: np.random.Generator) -> np.ndarray:
    """The voxels of ``mask`` on one side of a random plane, about ``fraction`` of them."""
    points = np.argwhere(mask)
    if len(points) == 0 or fraction <= 0:
        return np.zeros(label.shape, dtype=bool)
    direction = rng.normal(size=3)
    projection = points @ direction
    cut = np.quantile(projection, 1 - fraction)
    chosen = np.zeros(label.shape, dtype=bool)
    chosen[tuple(points[projection >= cut].T)] = True
    return chosen


def degrade(label: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of the true ``label`` map with one kind of error (a name in :data:`DEGRADATIONS`)
    whose size grows with ``severity`` in [0, 1]."""
    if kind not in DEGRADATIONS:
        raise QualityError(f"unknown degradation {kind!r}; expected one of {', '.join(DEGRADATIONS)}")
    if not 0 <= severity <= 1:
        raise QualityError(f"severity must lie in [0, 1], got {severity}")
    steps = 1 + int(round(severity * 3))
    if kind in ("erode", "dilate"):
        operation = ndimage.binary_erosion if kind == "erode" else ndimage.binary_dilation
        return _from_nested(*(operation(region, iterations=steps) for region in _nested(label)))
    if kind == "shift":
        vector = rng.normal(size=3)
        vector *= (1 + severity * 0.15 * label.shape[0]) / np.linalg.norm(vector)
        return ndimage.shift(label, vector, order=0, mode="constant", cval=0)
    result = label.copy()
    if kind == "miss_tissue":
        tissue = rng.choice([NECROSIS, OEDEMA, ENHANCING])
        result[_half_space(label, label == tissue, 0.3 + 0.7 * severity, rng)] = 0
    elif kind == "miss_part":
        result[_half_space(label, label > 0, 0.15 + 0.6 * severity, rng)] = 0
    elif kind == "swap":
        first, second = rng.choice([NECROSIS, OEDEMA, ENHANCING], size=2, replace=False)
        region = _half_space(label, np.isin(label, (first, second)), 0.3 + 0.7 * severity, rng)
        result[region & (label == first)] = second
        result[region & (label == second)] = first
    else:  # blobs
        size = label.shape[0]
        grid = np.indices(label.shape)
        for _ in range(1 + int(round(severity * 4))):
            centre = rng.uniform(0.2, 0.8, 3) * size
            radius = size * rng.uniform(0.03, 0.08)
            blob = sum((grid[i] - centre[i]) ** 2 for i in range(3)) <= radius ** 2
            result[blob & (result == 0)] = rng.choice([NECROSIS, OEDEMA, ENHANCING])
    return result


@dataclass
class RatedExam:
    """One phantom exam with its true label map and several segmentations of it, each with the
    degradation that made it (``"truth"`` for the unaltered label) and its severity."""

    image: np.ndarray
    truth: np.ndarray
    segmentations: list[np.ndarray]
    kinds: list[str]
    severities: list[float]
    name: str

    def cases(self) -> list[Case]:
        """One :class:`Case` per segmentation."""
        return [Case(self.image, seg, f"{self.name}/{kind}") for seg, kind in zip(self.segmentations, self.kinds)]


class BrainTumourPhantom(Dataset):
    """``size`` brain-tumour exams generated from ``seed`` (dataset plugin ``brain_tumour``).

    An item is ``(image, label)``: float32 ``[4, S, S, S]`` (T1, T1c, T2, FLAIR) and int64
    ``[1, S, S, S]`` with BraTS values 0, 1 (necrosis), 2 (oedema), 4 (enhancing).
    :meth:`exam` adds ``segmentations`` of controlled quality: the truth and
    ``segmentations - 1`` degraded copies (random kinds, severity uniform in [0, 1]).
    """

    def __init__(self, size: int = 16, seed: int = 0, image_size: int = 48, segmentations: int = 4,
                 mass_effect: float = 0.3, noise: float = 0.03) -> None:
        if size < 1 or segmentations < 1:
            raise QualityError(f"size and segmentations must be positive, got {size} and {segmentations}")
        self.size, self.seed, self.image_size = int(size), int(seed), int(image_size)
        self.segmentations, self.mass_effect, self.noise = int(segmentations), float(mass_effect), float(noise)
        self.anatomy = load_anatomy(self.image_size)

    def __len__(self) -> int:
        return self.size

    def exam(self, index: int) -> RatedExam:
        """Exam ``index`` with its segmentations."""
        if not 0 <= index < self.size:
            raise IndexError(f"exam {index} out of range for {self.size} exams")
        rng = np.random.default_rng([self.seed, index])
        image, truth = make_exam(self.anatomy, rng, self.mass_effect, self.noise)
        kinds = ["truth"] + [str(rng.choice(DEGRADATIONS)) for _ in range(self.segmentations - 1)]
        severities = [0.0] + [float(rng.uniform()) for _ in kinds[1:]]
        segs = [truth] + [degrade(truth, k, s, rng) for k, s in zip(kinds[1:], severities[1:])]
        return RatedExam(image, truth, segs, kinds, severities, f"exam{self.seed}_{index}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        image, truth = make_exam(self.anatomy, rng, self.mass_effect, self.noise)
        return torch.from_numpy(image), torch.from_numpy(truth)[None]
