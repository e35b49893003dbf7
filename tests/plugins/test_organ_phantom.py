"""The two-population organ phantom: deterministic, one bean-shaped organ per volume, smaller
organs and shifted contrast in the small population, as its module documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import medtune
from medtune.errors import MedtuneError
from medtune.plugins.datasets import Organ, OrganPhantom


@pytest.fixture(scope="module")
def dataset() -> OrganPhantom:
    return OrganPhantom(size=20, seed=1)


@pytest.fixture(scope="module")
def volumes(dataset: OrganPhantom) -> list[tuple[np.ndarray, np.ndarray, Organ]]:
    return [dataset.generate(i) for i in range(len(dataset))]


def test_registered_as_a_dataset_plugin():
    assert "organ_phantom" in medtune.available("dataset")
    assert isinstance(medtune.create("dataset", "organ_phantom", size=2), OrganPhantom)


def test_deterministic_from_seed_and_index():
    a, b = OrganPhantom(size=3, seed=3), OrganPhantom(size=50, seed=3)
    for i in range(3):
        assert torch.equal(a[i][0], b[i][0])
        assert torch.equal(a[i][1], b[i][1])
        assert a.population(i) == b.population(i)
    other = OrganPhantom(size=1, seed=4)[0]
    assert not torch.equal(other[0], a[0][0])
    assert not torch.equal(other[1], a[0][1])
    assert not torch.equal(a[1][1], a[2][1])  # items differ too


def test_shapes_dtypes_and_default_size(dataset):
    image, label = dataset[0]
    assert image.shape == label.shape == (1, 48, 48, 48)
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    assert set(torch.unique(label).tolist()) == {0, 1}
    assert torch.isfinite(image).all()


def test_the_seed_size_of_80_voxels_is_available():
    image, label = OrganPhantom(size=1, image_size=80)[0]
    assert image.shape == label.shape == (1, 80, 80, 80)
    assert 0.01 < label.float().mean() < 0.025  # an adult organ fills the same fraction at any size


def test_each_label_is_one_organ_inside_the_volume(volumes):
    for _, label, organ in volumes:
        _, count = ndimage.label(label)
        assert count == 1
        assert int(label.sum()) == organ.volume
        occupied = np.argwhere(label)
        assert occupied.min() > 0 and occupied.max() < label.shape[0] - 1  # not cut by the border


def test_the_indentation_is_cut_out_of_the_bent_ellipsoid(volumes):
    """Bending is a shear (volume-preserving); the hilum removes a few percent of the volume."""
    for _, label, organ in volumes[:4]:
        a, b, c = organ.semi_axes
        ellipsoid = 4 / 3 * np.pi * a * b * c
        assert 0.8 * ellipsoid < organ.volume < 0.98 * ellipsoid


def test_populations_are_four_to_one_and_spread_evenly(dataset):
    populations = dataset.populations
    assert populations.count("adult") == 16 and populations.count("child") == 4
    assert dataset.indices("child") == [4, 9, 14, 19]
    assert dataset.indices("adult") == [i for i in range(20) if i % 5 != 4]
    assert OrganPhantom(size=10, child_fraction=0.5).indices("child") == [1, 3, 5, 7, 9]
    assert OrganPhantom(size=5, child_fraction=0.0).indices("child") == []
    assert dataset.organ(4).population == "child"


def test_children_have_smaller_organs_as_documented(volumes):
    fractions = {"adult": [], "child": []}
    for _, label, organ in volumes:
        fractions[organ.population].append(label.mean())
    adults, children = np.array(fractions["adult"]), np.array(fractions["child"])
    assert np.all((0.012 < adults) & (adults < 0.021))
    assert np.all((0.003 < children) & (children < 0.010))
    assert 0.2 < children.mean() / adults.mean() < 0.5


def test_contrast_is_shifted_as_documented(volumes):
    """Organ mean over the mean of a 3-voxel shell of tissue around it: about 1 + contrast."""
    ratios = {"adult": [], "child": []}
    for image, label, organ in volumes:
        organ_mask = label > 0
        shell = ndimage.binary_dilation(organ_mask, iterations=3) & ~organ_mask
        ratios[organ.population].append(image[organ_mask].mean() / image[shell].mean())
    adults, children = np.mean(ratios["adult"]), np.mean(ratios["child"])
    assert abs(adults - 0.6) < 0.05 and abs(children - 0.8) < 0.07
    assert 0.12 < children - adults < 0.28
    brighter = OrganPhantom(size=1, contrast=(0.5, 0.5), speckle=False, noise=0.0)
    image, label, _ = brighter.generate(0)
    shell = ndimage.binary_dilation(label > 0, iterations=2) & (label == 0)
    assert abs(image[label > 0].mean() / image[shell].mean() - 1.5) < 0.1


def test_speckle_and_depth_attenuation_look_like_ultrasound():
    image, label, _ = OrganPhantom(size=1, seed=2).generate(0)
    tissue = image[label == 0]
    assert tissue.std() / tissue.mean() > 0.3  # multiplicative speckle: a large relative spread
    clean, _, _ = OrganPhantom(size=1, seed=2, speckle=False, noise=0.0).generate(0)
    assert clean[label == 0].std() / clean[label == 0].mean() < 0.2
    depth_profile = clean.mean(axis=(1, 2))
    assert depth_profile[-5:].mean() < depth_profile[:5].mean()  # the probe is at D = 0


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 0}, "size must be >= 1"),
    ({"image_size": 16}, "image_size must lie in"),
    ({"image_size": 256}, "image_size must lie in"),
    ({"child_fraction": 1.5}, "child_fraction must lie in"),
    ({"child_scale": (0.8, 0.6)}, "child_scale must be"),
    ({"contrast": (-1.0, 0.0)}, "contrast must be"),
    ({"contrast": (0.1,)}, "contrast must be"),
    ({"noise": -0.1}, "noise must be >= 0"),
    ({"attenuation": (1.0, 0.5)}, "attenuation must be"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(MedtuneError, match=message):
        OrganPhantom(**kwargs)


def test_bad_population_and_index():
    data = OrganPhantom(size=2)
    with pytest.raises(MedtuneError, match="population must be one of"):
        data.indices("elderly")
    with pytest.raises(IndexError):
        data[2]
