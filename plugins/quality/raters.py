"""Quality ratings: a panel of simulated raters, and a loader for real ratings of real exams.

Simulated raters (:class:`RaterPanel`) give 1-6 star ratings as a monotone function of how well
a segmentation matches the truth - Dice, surface Dice and the 95th-percentile Hausdorff distance
of the three BraTS regions (:func:`segmentation_quality`, computed with :mod:`medtune.metrics`)
- plus each rater's own offset (a lenient or strict rater) and noise level, rounded to whole
stars, as Kofler2022's neuroradiologists rate.

Real ratings (:func:`load_rated_folder`) are read from a folder::

    ratings.csv                   # columns: case, segmentation, rater, rating (1-6)
    <case>/t1.nii.gz              # one file per contrast (names given by ``contrasts``)
    <case>/t1c.nii.gz ...
    <case>/<segmentation>.nii.gz  # a BraTS label map (0, 1, 2, 4) per rated segmentation

Each row of ``ratings.csv`` is one rater's rating of one segmentation; raters who did not rate a
segmentation leave a missing value (NaN) in the ratings matrix.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtune.metrics import dice, hausdorff95, surface_dice
from medtune.plugins.quality.cases import Case, QualityError, region_mask

#: The rating scale of Kofler2022: 1 star (very bad) to 6 stars (very good).
MIN_RATING, MAX_RATING = 1.0, 6.0
#: How much each BraTS region weighs in :func:`segmentation_quality`.
REGION_WEIGHTS = {"enhancing_tumour": 0.3, "tumour_core": 0.3, "whole_tumour": 0.4}


def segmentation_quality(segmentation: np.ndarray, truth: np.ndarray, tolerance: float = 2.0,
                         distance_scale: float = 5.0) -> float:
    """A quality in [0, 1]: per BraTS region ``0.5 Dice + 0.3 surface Dice + 0.2
    exp(-HD95 / distance_scale)`` (surface Dice at ``tolerance`` voxels, HD95 in voxels, an
    infinite distance scoring 0), averaged with :data:`REGION_WEIGHTS`."""
    total = 0.0
    for region, weight in REGION_WEIGHTS.items():
        predicted, target = region_mask(segmentation, region), region_mask(truth, region)
        distance = hausdorff95(predicted, target)
        closeness = 0.0 if math.isinf(distance) else math.exp(-distance / distance_scale)
        total += weight * (0.5 * dice(predicted, target) + 0.3 * surface_dice(predicted, target, tolerance=tolerance)
                           + 0.2 * closeness)
    return float(total)


@dataclass(frozen=True)
class Rater:
    """A simulated rater: ``offset`` stars added to the latent rating (positive = lenient) and
    the standard deviation ``noise`` of their disagreement with themselves."""

    offset: float
    noise: float


class RaterPanel:
    """``raters`` simulated raters drawn from ``seed``: offsets ~ N(0, ``offset_spread``), noise
    levels uniform in ``noise_range``. The latent rating of a quality q in [0, 1] is
    ``1 + 5 q^gamma``; a rater adds their offset and noise and rounds to whole stars in 1-6."""

    def __init__(self, raters: int = 5, seed: int = 0, offset_spread: float = 0.35,
                 noise_range: tuple[float, float] = (0.3, 0.7), gamma: float = 1.5) -> None:
        if raters < 1:
            raise QualityError(f"a rater panel needs at least one rater, got {raters}")
        rng = np.random.default_rng(seed)
        self.raters = [Rater(float(rng.normal(0, offset_spread)), float(rng.uniform(*noise_range)))
                       for _ in range(raters)]
        self.gamma, self.seed = float(gamma), int(seed)

    def latent(self, quality: float) -> float:
        """The noise-free rating of a quality in [0, 1]."""
        return MIN_RATING + (MAX_RATING - MIN_RATING) * float(np.clip(quality, 0, 1)) ** self.gamma

    def rate(self, qualities: np.ndarray, seed: int = 0) -> np.ndarray:
        """Star ratings ``[len(qualities), raters]`` of segmentations of the given qualities."""
        rng = np.random.default_rng([self.seed, seed])
        latent = np.array([self.latent(q) for q in np.asarray(qualities, dtype=float)])
        stars = [latent + r.offset + rng.normal(0, r.noise, latent.shape) for r in self.raters]
        return np.clip(np.round(np.stack(stars, axis=1)), MIN_RATING, MAX_RATING)


def rater_mae(ratings: np.ndarray) -> float:
    """Kofler2022's reference: the mean absolute error of individual raters against the mean
    rating of each segmentation (averaged over raters and segmentations, NaN = not rated)."""
    ratings = np.asarray(ratings, dtype=float)
    mean = np.nanmean(ratings, axis=1, keepdims=True)
    return float(np.nanmean(np.abs(ratings - mean)))


@dataclass
class RatedCases:
    """Cases with their ratings ``[cases, raters]`` (NaN where a rater did not rate) and the
    rater names, as :func:`load_rated_folder` reads them."""

    cases: list[Case]
    ratings: np.ndarray
    raters: list[str]

    @property
    def mean_ratings(self) -> np.ndarray:
        """The mean rating of each case over the raters who rated it."""
        return np.nanmean(self.ratings, axis=1)


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel

    if not path.is_file():
        raise QualityError(f"{path}: missing; each case folder needs one NIfTI file per contrast and "
                           "one per rated segmentation")
    try:
        return np.asarray(nibabel.load(str(path)).get_fdata())
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise QualityError(f"{path}: not a readable NIfTI file ({exc})") from None


def load_rated_folder(folder: str | Path, contrasts: tuple[str, ...] = ("t1", "t1c", "t2", "flair"),
                      suffix: str = ".nii.gz") -> RatedCases:
    """Read real exams, segmentations and ratings laid out as the module docstring says."""
    folder = Path(folder)
    table = folder / "ratings.csv"
    if not table.is_file():
        raise QualityError(f"{table}: missing; write a CSV with columns case, segmentation, rater, rating")
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"case", "segmentation", "rater", "rating"} - set(reader.fieldnames or [])
        if missing:
            raise QualityError(f"{table}: missing column(s) {', '.join(sorted(missing))}; expected "
                               "case, segmentation, rater, rating")
        rows = list(reader)
    keys: dict[tuple[str, str], int] = {}
    raters: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        keys.setdefault((row["case"], row["segmentation"]), len(keys))
        raters.setdefault(row["rater"], len(raters))
        try:
            rating = float(row["rating"])
        except ValueError:
            raise QualityError(f"{table}, line {line}: rating {row['rating']!r} is not a number") from None
        if not MIN_RATING <= rating <= MAX_RATING:
            raise QualityError(f"{table}, line {line}: rating {rating} outside the 1-6 star scale")
        row["rating"] = rating
    if not keys:
        raise QualityError(f"{table}: no ratings; add one row per rater and segmentation")
    ratings = np.full((len(keys), len(raters)), np.nan)
    for row in rows:
        ratings[keys[(row["case"], row["segmentation"])], raters[row["rater"]]] = row["rating"]
    images: dict[str, np.ndarray] = {}
    cases = []
    for case, segmentation in keys:
        if case not in images:
            images[case] = np.stack([_read_nifti(folder / case / f"{c}{suffix}") for c in contrasts])
        label = np.rint(_read_nifti(folder / case / f"{segmentation}{suffix}")).astype(np.int64)
        cases.append(Case(images[case], label, f"{case}/{segmentation}"))
    return RatedCases(cases, ratings, list(raters))

