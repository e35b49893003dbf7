"""The small-lesion phantom: deterministic, lesion sizes in range, empty slices present."""

from __future__ import annotations

import pytest
import torch

import medtune
from medtune.errors import MedtuneError
from medtune.plugins.datasets import SmallLesionPhantom


def test_registered_as_a_dataset_plugin():
    assert "small_lesion" in medtune.available("dataset")
    assert isinstance(medtune.create("dataset", "small_lesion", size=2), SmallLesionPhantom)


def test_deterministic_from_seed_and_index():
    a, b = SmallLesionPhantom(size=6, seed=3), SmallLesionPhantom(size=100, seed=3)
    for i in range(6):
        torch.testing.assert_close(a[i][0], b[i][0])
        assert torch.equal(a[i][1], b[i][1])
    assert not torch.equal(SmallLesionPhantom(size=1, seed=4)[0][0], a[0][0])


def test_lesions_match_labels_and_size_range():
    data = SmallLesionPhantom(size=60, seed=1, lesion_area=(20, 2000))
    areas, empty = [], 0
    for i in range(len(data)):
        image, label = data[i]
        assert image.shape == label.shape == (1, 128, 128)
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        lesions = data.lesions(i)
        assert int(label.sum()) == sum(lesion.area for lesion in lesions)
        areas += [lesion.area for lesion in lesions]
        empty += not lesions
    assert areas and min(areas) >= 20 and max(areas) <= 2000
    assert min(areas) < 100 and max(areas) > 500  # log-uniform: small and large lesions occur
    assert 0 < empty < len(data)  # some slices have no lesion at all
    assert len(data) and max(len(data.lesions(i)) for i in range(len(data))) <= 3


def test_lesions_are_brighter_than_their_surroundings():
    data = SmallLesionPhantom(size=20, seed=2, noise=0.0)
    inside, outside = [], []
    for i in range(len(data)):
        image, label = data[i]
        if label.any():
            inside.append(image[label.bool()].mean())
            outside.append(image[(~label.bool()) & (image > -0.5)].mean())
    assert torch.stack(inside).mean() > torch.stack(outside).mean() + 0.2


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 0}, "size must be >= 1"),
    ({"image_size": 64}, "image_size must lie in"),
    ({"lesion_area": (50, 10)}, "lesion_area must be"),
    ({"lesion_area": (20, 5000)}, "does not fit"),
    ({"empty_fraction": 1.5}, "empty_fraction must be None or lie in"),
    ({"empty_fraction": 0.5, "max_lesions": 0}, "needs max_lesions >= 1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(MedtuneError, match=message):
        SmallLesionPhantom(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        SmallLesionPhantom(size=2)[2]


def test_seo2021_regime_mostly_empty_slices_and_lesions_of_a_few_pixels():
    """The settings of examples/glf_small_lesions.toml: 60 % lesion-free slices, lesions down to
    a few pixels (under 0.05 % of a 128² slice), half of them under 100 pixels."""
    data = SmallLesionPhantom(size=120, seed=5, empty_fraction=0.6, lesion_area=(5, 1500),
                              contrast=0.3)
    counts = [len(data.lesions(i)) for i in range(len(data))]
    areas = [lesion.area for i in range(len(data)) for lesion in data.lesions(i)]
    assert 0.5 < counts.count(0) / len(counts) < 0.7
    assert max(counts) <= 3 and min(areas) >= 5 and max(areas) <= 1500
    assert min(areas) < 0.0005 * 128**2
    assert 0.35 < sum(area < 100 for area in areas) / len(areas) < 0.65
    every = SmallLesionPhantom(size=30, seed=5, empty_fraction=0.0, lesion_area=(5, 1500))
    assert all(every.lesions(i) for i in range(len(every)))
    assert not any(SmallLesionPhantom(size=10, empty_fraction=1.0).lesions(i) for i in range(10))


def test_without_empty_fraction_the_slices_are_as_before():
    """``empty_fraction=None`` (the default) draws the number of lesions as it always did, so
    datasets of earlier studies are rebuilt bit for bit."""
    data = SmallLesionPhantom(size=6, seed=3)
    assert [len(data.lesions(i)) for i in range(6)] == [2, 1, 0, 0, 0, 2]  # as recorded before
    assert [lesion.area for lesion in data.lesions(0)] == [24, 1466]
