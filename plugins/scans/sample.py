"""A small synthetic dataset in the nnU-Net / Decathlon raw layout, to try the scans workflow
without data of one's own (``medtune sample DIR``).

Each case is a torso-like cross-section: a body of soft tissue in air, a bone-like rod, an
organ (label 1) and a small lesion inside it (label 2), in two channels: ``CT`` in
Hounsfield-like units (stored as int16; the organ is enhanced, about 100 HU above the tissue
around it) and ``T2``, an MR-like channel in arbitrary units with a smooth bias field and a
scale that varies per case (the lesion is bright in it). The anatomy is drawn in world
coordinates (mm) and sampled through each case's affine, which is oblique (a rotation of a few
degrees, axes stored flipped as DICOM converters often do) and anisotropic: 0.8 x 0.8 x 2.5 mm
at site ``A``, 0.9 x 0.9 x 3.0 mm at site ``B``, so the last axis has fewer voxels
(``round(0.4 * size)``) and resampling is needed. ``groups.csv`` lists the patient and site of
each training case; some patients own two cases. Everything is a deterministic function of
``(seed, case index)``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from medtune.plugins.scans.layout import ScanDataError, ScanDataset, load_dataset, write_volume

#: The name written to dataset.json.
NAME = "OrganPhantom"

#: Channel names, in file order (_0000, _0001).
CHANNELS = ("CT", "T2")

#: Label name -> value.
LABELS = {"background": 0, "organ": 1, "lesion": 2}

#: Voxel spacing (mm) of each acquisition site.
SITE_SPACING = {"A": (0.8, 0.8, 2.5), "B": (0.9, 0.9, 3.0)}

#: Number of test cases written to imagesTs/ (with their labels in labelsTs/).
TEST_CASES = 2

#: Cases per patient, repeated over the training cases (patients 1, 4, ... own two cases).
_CASES_PER_PATIENT = (1, 2, 1)

#: CT values (HU) and T2 values (arbitrary units) of each tissue before blur and noise.
_CT = {"air": -1000.0, "body": 40.0, "bone": 650.0, "organ": 140.0, "lesion": 75.0}
_T2 = {"air": 5.0, "body": 120.0, "bone": 50.0, "organ": 190.0, "lesion": 430.0}


def write_sample(folder: str | Path, cases: int = 8, size: int = 40, seed: int = 0) -> ScanDataset:
    """Write the sample dataset into ``folder`` (created; must be empty) and return it loaded.

    Args:
        folder: the dataset folder to create.
        cases: number of training cases (at least 2); 2 more go to imagesTs/.
        size: in-plane voxels per side (16 to 256); the last axis has ``round(0.4 * size)``.
        seed: the seed; case ``i`` depends only on ``(seed, i)``.

    Raises:
        ScanDataError: ``folder`` exists and is not empty, or an argument is out of range.
    """
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 2:
        raise ScanDataError(f"sample: cases must be an integer >= 2 (cross-validation needs two "
                            f"patients), got {cases!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 256:
        raise ScanDataError(f"sample: size must be an integer from 16 to 256, got {size!r}")
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ScanDataError(f"sample: {folder} exists and is not an empty folder; choose a new "
                            "folder name (the sample never writes over files)")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (patient, site) in enumerate(_patients(cases)):
        name = f"case_{index:03d}"
        _write_case(folder, "imagesTr", "labelsTr", name, seed, index, size, site)
        rows.append((name, patient, site))
    for index in range(cases, cases + TEST_CASES):
        _write_case(folder, "imagesTs", "labelsTs", f"case_{index:03d}", seed, index, size, "A")
    with (folder / "groups.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case", "patient", "site"))
        writer.writerows(rows)
    description = {
        "name": NAME,
        "description": "Synthetic organ and lesion phantom in two channels (CT, T2-like), "
                       "oblique anisotropic grids; written by medtune sample",
        "channel_names": {str(i): channel for i, channel in enumerate(CHANNELS)},
        "labels": LABELS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return load_dataset(folder)


def _patients(cases: int) -> list[tuple[str, str]]:
    """(patient, site) of each training case: patients own 1, 2, 1, 1, 2, 1, ... cases; every
    third patient was scanned at site B."""
    owners: list[tuple[str, str]] = []
    patient = 0
    while len(owners) < cases:
        site = "B" if patient % 3 == 2 else "A"
        count = _CASES_PER_PATIENT[patient % len(_CASES_PER_PATIENT)]
        owners.extend([(f"patient_{patient:02d}", site)] * count)
        patient += 1
    return owners[:cases]


def _write_case(folder: Path, images: str, labels: str, name: str, seed: int, index: int,
                size: int, site: str) -> None:
    channels, label, affine = _case(np.random.default_rng([seed, index]), size, SITE_SPACING[site])
    for number, channel in enumerate(channels):
        write_volume(folder / images / f"{name}_{number:04d}.nii.gz", channel, affine)
    write_volume(folder / labels / f"{name}.nii.gz", label, affine)


def _case(rng: np.random.Generator, size: int,
          spacing: tuple[float, float, float]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One case: [CT int16, T2 float32], label uint8 and the 4x4 affine."""
    shape = (size, size, max(4, round(0.4 * size)))
    affine = _affine(rng, shape, spacing)
    indices = np.indices(shape, dtype=np.float64).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ indices + affine[:3, 3:]).reshape(3, *shape)  # world mm
    half = 0.4 * size  # half the in-plane field of view at site A, mm
    body = (x / (0.9 * half)) ** 2 + (y / (0.75 * half)) ** 2 <= 1.0
    organ = _organ(rng, half, x, y, z) & body
    bone = ((x + 0.25 * half) ** 2 + (y + 0.55 * half) ** 2 <= (0.12 * half) ** 2) & ~organ
    lesion = _lesion(rng, half, organ, spacing, x, y, z)
    label = np.zeros(shape, np.uint8)
    label[organ] = LABELS["organ"]
    label[lesion] = LABELS["lesion"]
    tissues = {"air": ~body, "body": body & ~organ & ~bone, "bone": bone, "organ": organ & ~lesion,
               "lesion": lesion}
    sigma = [0.5 / s for s in spacing]  # a 0.5 mm blur: partial volume at the edges
    ct = ndimage.gaussian_filter(_paint(tissues, _CT), sigma)
    ct += 10.0 * ndimage.gaussian_filter(rng.standard_normal(shape), sigma) + rng.normal(0.0, 12.0, shape)
    t2 = ndimage.gaussian_filter(_paint(tissues, _T2), sigma)
    bias = ndimage.gaussian_filter(rng.standard_normal(shape), [8.0 / s for s in spacing])
    t2 *= np.exp(0.15 * bias / max(float(bias.std()), 1e-12))  # a smooth +-15 % bias field
    t2 *= rng.uniform(0.7, 1.4)  # MR intensities have no absolute scale
    t2 = np.hypot(t2 + rng.normal(0.0, 10.0, shape), rng.normal(0.0, 10.0, shape))  # Rician
    return [np.round(ct).astype(np.int16), t2.astype(np.float32)], label, affine


def _affine(rng: np.random.Generator, shape: tuple[int, int, int],
            spacing: tuple[float, float, float]) -> np.ndarray:
    """An oblique voxel-to-world affine: axes x and y stored flipped, rotated by a few degrees
    (mostly about z), the volume's centre within 2 mm of the world origin."""
    about_z = math.radians(rng.uniform(3.0, 8.0)) * rng.choice((-1.0, 1.0))
    about_x = math.radians(rng.uniform(-3.0, 3.0))
    rotation_z = np.array([[math.cos(about_z), -math.sin(about_z), 0.0],
                           [math.sin(about_z), math.cos(about_z), 0.0], [0.0, 0.0, 1.0]])
    rotation_x = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(about_x), -math.sin(about_x)],
                           [0.0, math.sin(about_x), math.cos(about_x)]])
    linear = np.diag([-1.0, -1.0, 1.0]) @ rotation_z @ rotation_x @ np.diag(spacing)
    centre = (np.array(shape, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = rng.uniform(-2.0, 2.0, 3) - linear @ centre
    return affine


def _organ(rng: np.random.Generator, half: float, x: np.ndarray, y: np.ndarray,
           z: np.ndarray) -> np.ndarray:
    """A rotated ellipsoid right of the body's centre (label 1)."""
    centre = np.array([0.2 * half, 0.0, 0.0]) + rng.uniform(-1.0, 1.0, 3) * np.array([0.08, 0.1, 0.1]) * half
    semi_axes = np.array([0.55, 0.38, 0.55]) * half * rng.uniform(0.9, 1.1, 3)
    angle = rng.uniform(0.0, math.pi)
    tilt = rng.uniform(-0.3, 0.3)
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    p = cos * dx + sin * dy
    q = -sin * dx + cos * dy
    p, r = math.cos(tilt) * p + math.sin(tilt) * dz, -math.sin(tilt) * p + math.cos(tilt) * dz
    return (p / semi_axes[0]) ** 2 + (q / semi_axes[1]) ** 2 + (r / semi_axes[2]) ** 2 <= 1.0


def _lesion(rng: np.random.Generator, half: float, organ: np.ndarray,
            spacing: tuple[float, float, float], x: np.ndarray, y: np.ndarray,
            z: np.ndarray) -> np.ndarray:
    """A ball of radius 0.17-0.22 x ``half`` mm inside the organ, 0.5 mm from its border
    (label 2)."""
    depth = ndimage.distance_transform_edt(organ, sampling=spacing)  # mm; the affine is rigid
    radius = min(rng.uniform(0.17, 0.22) * half, float(depth.max()) - 0.5)
    candidates = np.flatnonzero(depth.ravel() >= radius + 0.5)
    centre = candidates[rng.integers(len(candidates))]
    cx, cy, cz = x.flat[centre], y.flat[centre], z.flat[centre]
    return ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius**2) & organ


def _paint(tissues: dict[str, np.ndarray], values: dict[str, float]) -> np.ndarray:
    image = np.zeros(next(iter(tissues.values())).shape)
    for tissue, mask in tissues.items():
        image[mask] = values[tissue]
    return image
