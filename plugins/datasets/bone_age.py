"""The bone-age phantom: hand-radiograph-like images whose maturity is the regression label.

A stand-in for the bone age assessment data of Pourchot2022, ch. 6: small 2D images of a left
hand whose size, growth plates, carpal bones and ossification change with the *bone age*, the
label. Each case (:class:`BoneAgeCase`) has a sex, a chronological age and a bone age; it is
*pathological* when the two differ by more than ``PATHOLOGICAL_THRESHOLD`` years.
``distribution`` sets the chronological ages: ``"skewed"`` like Pourchot2022's training data or
``"uniform"`` like its clinical test set. Everything is a deterministic function of
``(seed, index)``; :meth:`BoneAgePhantom.case` draws the labels of a case without its image.
How the images and labels are drawn: docs/datasets.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from medtune.errors import MedtuneError

#: |bone age - chronological age| in years above which a case is pathological
PATHOLOGICAL_THRESHOLD = 2.0
#: chronological ages in years, as Pourchot2022's clinical data set
AGE_RANGE = (5.0, 17.0)
#: bone ages are clipped to this range in years
BONE_AGE_RANGE = (2.0, 19.0)
#: bone age from which the growth plates are closed
FUSION_AGE = 16.0
DISTRIBUTIONS = ("skewed", "uniform")

# The hand in its own frame, in pixels of a 64-pixel image at scale 1: u points from the
# fingers to the wrist, v across the hand. Fingers (index to little): base point on the
# palm, lengths of the proximal, middle and distal phalanges, spread angle from the u axis.
_FINGERS = (((-6.0, -7.5), (8.5, 5.5, 4.0), -0.12), ((-7.0, -2.5), (9.5, 6.0, 4.2), -0.04),
            ((-6.5, 2.5), (9.0, 5.8, 4.0), 0.04), ((-5.0, 7.0), (7.0, 4.5, 3.6), 0.13))
_THUMB = ((5.0, -10.0), (6.0, 4.5), -0.75)
_CARPALS = ((9.5, -5.5), (9.5, -1.5), (9.0, 2.5), (9.5, 6.0),
            (12.5, -4.0), (12.5, 0.0), (12.5, 4.0), (11.0, -8.0))


@dataclass(frozen=True)
class BoneAgeCase:
    """The labels of one case: bone age and chronological age in years, the sex and whether
    the case is pathological (``|bone age - chronological age| > PATHOLOGICAL_THRESHOLD``)."""

    bone_age: float
    chronological_age: float
    male: bool

    @property
    def pathological(self) -> bool:
        """Whether the bone age is more than :data:`PATHOLOGICAL_THRESHOLD` years away from
        the chronological age."""
        return abs(self.bone_age - self.chronological_age) > PATHOLOGICAL_THRESHOLD


class BoneAgePhantom(Dataset):
    """``dataset[i] -> (image [1, H, W] float32, covariates [2] float32, bone_age [1] float32)``;
    covariates are (1.0 for a boy else 0.0, chronological age in years), ages in years.

    Args:
        size: number of cases.
        image_size: side of the square images in pixels (32 to 256; 64 by default).
        seed: the dataset's seed; case ``i`` depends only on ``(seed, i)``.
        distribution: chronological ages ``"skewed"`` around 11 years or ``"uniform"`` in
            [5, 17] (see the module docstring).
        pathological: probability that a case is drawn pathological (Pourchot2022's clinical set
            has 56 of 206, 0.27).
        noise: standard deviation of the Gaussian image noise.
    """

    def __init__(self, size: int = 256, image_size: int = 64, seed: int = 0,
                 distribution: str = "skewed", pathological: float = 0.25,
                 noise: float = 0.03) -> None:
        if int(size) < 1:
            raise MedtuneError(f"bone_age: size must be >= 1, got {size}")
        if not 32 <= int(image_size) <= 256:
            raise MedtuneError(f"bone_age: image_size must lie in [32, 256], got {image_size}")
        if distribution not in DISTRIBUTIONS:
            raise MedtuneError(
                f"bone_age: distribution must be one of {', '.join(DISTRIBUTIONS)}, got "
                f"{distribution!r}"
            )
        if not 0.0 <= pathological <= 1.0:
            raise MedtuneError(f"bone_age: pathological is a probability in [0, 1], got {pathological}")
        if not noise >= 0:
            raise MedtuneError(f"bone_age: noise must be >= 0, got {noise}")
        self.size = int(size)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.distribution = distribution
        self.pathological = float(pathological)
        self.noise = float(noise)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, case = self.generate(index)
        covariates = torch.tensor([float(case.male), case.chronological_age], dtype=torch.float32)
        return (torch.from_numpy(image)[None], covariates,
                torch.tensor([case.bone_age], dtype=torch.float32))

    def case(self, index: int) -> BoneAgeCase:
        """The labels of case ``index`` (without drawing its image)."""
        if not 0 <= index < self.size:
            raise IndexError(f"bone_age: index {index} out of range for {self.size} cases")
        return self._case(np.random.default_rng([self.seed, index]))

    def cases(self) -> list[BoneAgeCase]:
        """The labels of every case, in order."""
        return [self.case(i) for i in range(self.size)]

    def generate(self, index: int) -> tuple[np.ndarray, BoneAgeCase]:
        """Case ``index`` as (image float32 [H, W], its labels)."""
        if not 0 <= index < self.size:
            raise IndexError(f"bone_age: index {index} out of range for {self.size} cases")
        rng = np.random.default_rng([self.seed, index])
        case = self._case(rng)
        return self._image(rng, case), case

    def _case(self, rng: np.random.Generator) -> BoneAgeCase:
        low, high = AGE_RANGE
        male = bool(rng.uniform() < 0.5)
        if self.distribution == "uniform":
            age = rng.uniform(low, high)
        else:
            age = float(np.clip(rng.normal(11.0, 2.0), low, high))
        if rng.uniform() < self.pathological:
            deviation = rng.choice((-1.0, 1.0)) * rng.uniform(PATHOLOGICAL_THRESHOLD, 4.0)
        else:
            deviation = rng.normal(0.0, 0.8)
        bone_age = float(np.clip(age + deviation, *BONE_AGE_RANGE))
        return BoneAgeCase(bone_age, float(age), male)

    def _image(self, rng: np.random.Generator, case: BoneAgeCase) -> np.ndarray:
        n = self.image_size
        unit = n / 64.0  # pixels per hand-frame unit at scale 1
        age = case.bone_age
        scale = (0.72 + 0.022 * age) * (1.06 if case.male else 1.0) * unit
        angle = rng.uniform(-8, 8) * math.pi / 180
        centre = np.array([34.0, 32.0]) * unit + rng.uniform(-2, 2, size=2) * unit
        rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
        dr, dc = rows - centre[0], cols - centre[1]
        u = (dr * math.cos(angle) + dc * math.sin(angle)) / scale
        v = (-dr * math.sin(angle) + dc * math.cos(angle)) / scale
        gap = 1.1 * max(0.0, 1.0 - age / FUSION_AGE)  # growth plate width, hand-frame units
        soft, bone = np.zeros((n, n), bool), np.zeros((n, n), bool)
        soft |= ((u - 4.0) / 10.0) ** 2 + (v / 12.5) ** 2 <= 1.0  # palm
        soft |= (u >= 8.0) & (np.abs(v) <= 9.0 - 0.1 * (u - 8.0))  # wrist and forearm
        for base, lengths, spread in (*_FINGERS, _THUMB):
            direction = np.array([-math.cos(spread), math.sin(spread)])
            start = np.array(base)
            tip = start + direction * sum(lengths)
            soft |= _capsule(u, v, start, tip, 2.3)
            joint = start
            for length in lengths:
                end = joint + direction * length
                bone |= _bone_with_epiphysis(u, v, joint, end, 1.1, gap)
                joint = end
            metacarpal_start = start - direction * 0.5
            bone |= _capsule(u, v, metacarpal_start, metacarpal_start + np.array([9.5, 0.0]), 1.2)
        for offset, width in ((-4.0, 2.0), (4.0, 1.5)):  # radius and ulna, epiphyses at the wrist
            top = np.array([14.5, offset])
            bone |= _bone_with_epiphysis(u, v, top, np.array([34.0, offset]), width, gap)
        carpals = int(np.clip(math.floor((age - 1.5) / 1.6) + 1, 0, len(_CARPALS))) if age >= 1.5 else 0
        radius = min(0.6 + 0.08 * age, 1.7)
        for row, col in _CARPALS[:carpals]:
            bone |= (u - row) ** 2 + (v - col) ** 2 <= radius ** 2
        image = np.full((n, n), 0.05)
        image[soft] = 0.25 + rng.uniform(-0.03, 0.03)
        image[bone] = 0.45 + 0.025 * age + rng.uniform(-0.03, 0.03)
        image = ndimage.gaussian_filter(image, 0.6 * unit)
        image = image + rng.normal(0.0, self.noise, (n, n))
        return image.astype(np.float32)


def _capsule(u: np.ndarray, v: np.ndarray, start: np.ndarray, end: np.ndarray,
             half_width: float) -> np.ndarray:
    """The ellipse whose long axis runs from ``start`` to ``end`` (hand frame), of half-width
    ``half_width``."""
    middle = (start + end) / 2
    axis = end - start
    half_length = max(float(np.hypot(*axis)) / 2, 1e-6)
    along = ((u - middle[0]) * axis[0] + (v - middle[1]) * axis[1]) / (2 * half_length)
    across = (-(u - middle[0]) * axis[1] + (v - middle[1]) * axis[0]) / (2 * half_length)
    return (along / half_length) ** 2 + (across / half_width) ** 2 <= 1.0


def _bone_with_epiphysis(u: np.ndarray, v: np.ndarray, start: np.ndarray, end: np.ndarray,
                         half_width: float, gap: float) -> np.ndarray:
    """A long bone from ``start`` to ``end``: an epiphysis cap (1.2 units long) at ``start``,
    then ``gap`` units of growth plate, then the shaft."""
    axis = (end - start) / max(float(np.hypot(*(end - start))), 1e-6)
    cap_end = start + axis * 1.4
    shaft_start = cap_end + axis * gap
    return (_capsule(u, v, start + axis * 0.2, cap_end, half_width * 1.15)
            | _capsule(u, v, shaft_start, end - axis * 0.3, half_width))
