"""The three-class ring phantom: deterministic, three classes in every slice, the ring
("myocardium") enclosing the cavity ("blood pool"), LGE-like intensities, as its module
documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import medtune
from medtune.errors import MedtuneError
from medtune.plugins.datasets import Ring, RingPhantom


@pytest.fixture(scope="module")
def slices() -> list[tuple[np.ndarray, np.ndarray, Ring]]:
    dataset = RingPhantom(size=24, seed=1)
    return [dataset.generate(i) for i in range(len(dataset))]


def test_registered_as_a_dataset_plugin():
    assert "ring_phantom" in medtune.available("dataset")
    assert isinstance(medtune.create("dataset", "ring_phantom", size=2), RingPhantom)


def test_deterministic_from_seed_and_index():
    a, b = RingPhantom(size=3, seed=3), RingPhantom(size=40, seed=3)
    for i in range(3):
        assert torch.equal(a[i][0], b[i][0])
        assert torch.equal(a[i][1], b[i][1])
    other = RingPhantom(size=1, seed=4)[0]
    assert not torch.equal(other[0], a[0][0])
    assert not torch.equal(other[1], a[0][1])
    assert not torch.equal(a[1][1], a[2][1])  # slices differ too


def test_shapes_dtypes_and_the_seed_size_of_128():
    image, label = RingPhantom(size=1)[0]
    assert image.shape == label.shape == (1, 128, 128)
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    assert torch.isfinite(image).all()


def test_every_slice_has_the_three_classes(slices):
    for _, label, ring in slices:
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        assert int((label == 1).sum()) == ring.myocardium_area
        assert int((label == 2).sum()) == ring.blood_pool_area


def test_the_ring_encloses_the_cavity(slices):
    """The blood pool is one 4-connected region that never touches the background, even
    diagonally; the myocardium is one region; the ring stays inside the image."""
    eight = np.ones((3, 3), dtype=bool)
    for _, label, _ in slices:
        _, pools = ndimage.label(label == 2)
        _, walls = ndimage.label(label == 1)
        assert pools == 1 and walls == 1
        grown = ndimage.binary_dilation(label == 2, structure=eight)
        assert not (grown & (label == 0)).any()
        filled = ndimage.binary_fill_holes(label == 1)
        assert np.array_equal(filled, label > 0)  # the ring's hole is exactly the cavity
        occupied = np.argwhere(label > 0)
        assert occupied.min() > 0 and occupied.max() < label.shape[0] - 1


def test_sizes_follow_the_documented_ranges(slices):
    radii = [ring.radius / 128 for _, _, ring in slices]
    thicknesses = [ring.thickness / 128 for _, _, ring in slices]
    assert 0.16 <= min(radii) and max(radii) <= 0.26
    assert 0.05 <= min(thicknesses) and max(thicknesses) <= 0.075
    for _, label, ring in slices:  # areas match the ellipse geometry (axis ratio keeps the area)
        outer = np.pi * ring.radius**2
        assert abs(int((label > 0).sum()) - outer) < 0.05 * outer
    assert any(ring.scar for _, _, ring in slices) and not all(ring.scar for _, _, ring in slices)


def test_lge_like_intensities_bright_pool_dark_wall():
    dataset = RingPhantom(size=12, seed=2, scar=0.0)
    for i in range(len(dataset)):
        image, label = dataset[i]
        pool, wall, background = (image[label == value].mean() for value in (2, 1, 0))
        assert pool > background + 0.2 and background > wall + 0.1


def test_scar_brightens_part_of_the_wall_without_changing_the_label():
    healthy, scarred = RingPhantom(size=8, seed=5, scar=0.0), RingPhantom(size=8, seed=5, scar=1.0)
    for i in range(len(healthy)):
        assert torch.equal(healthy[i][1], scarred[i][1])
        wall = healthy[i][1] == 1
        assert scarred[i][0][wall].max() > healthy[i][0][wall].max() + 0.3


def test_image_size_and_geometry_are_configurable():
    dataset = RingPhantom(size=4, image_size=64, radius=(0.2, 0.2), thickness=(0.06, 0.06),
                          ellipticity=(1.0, 1.0))
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == label.shape == (1, 64, 64)
        ring = dataset.ring(i)
        assert ring.radius == pytest.approx(12.8) and ring.thickness == pytest.approx(3.84)
        assert set(torch.unique(label).tolist()) == {0, 1, 2}
    assert RingPhantom(size=1, image_size=256)[0][0].shape == (1, 256, 256)


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 0}, "size must be >= 1"),
    ({"image_size": 32}, "image_size must lie in"),
    ({"radius": (0.3, 0.2)}, "radius must be"),
    ({"radius": (0.1, 0.4)}, "radius must be"),
    ({"thickness": (0.0, 0.05)}, "thickness must be"),
    ({"thickness": (0.05, 0.2)}, "leaves no cavity"),
    ({"image_size": 64, "thickness": (0.03, 0.05)}, "under 2 pixels"),
    ({"ellipticity": (0.8, 1.2)}, "ellipticity must be"),
    ({"scar": 1.5}, "scar is a probability"),
    ({"noise": -0.1}, "noise must be >= 0"),
    ({"bias": 1.0}, "bias must lie in"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(MedtuneError, match=message):
        RingPhantom(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError, match="out of range"):
        RingPhantom(size=2)[2]
