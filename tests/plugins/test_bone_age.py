"""The bone-age phantom: deterministic, a skewed or uniform age distribution, pathological
cases as documented, and images whose content follows the bone age."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medtune
from medtune.errors import MedtuneError
from medtune.plugins.datasets import BoneAgeCase, BoneAgePhantom
from medtune.plugins.datasets.bone_age import AGE_RANGE, BONE_AGE_RANGE, PATHOLOGICAL_THRESHOLD


def test_registered_as_a_dataset_plugin():
    assert "bone_age" in medtune.available("dataset")
    assert isinstance(medtune.create("dataset", "bone_age", size=2), BoneAgePhantom)


def test_items_shapes_and_agreement_with_the_case_labels():
    dataset = BoneAgePhantom(size=3, image_size=48, seed=2)
    image, covariates, bone_age = dataset[1]
    assert image.shape == (1, 48, 48) and image.dtype == torch.float32
    case = dataset.case(1)
    assert covariates.tolist() == pytest.approx([float(case.male), case.chronological_age])
    assert bone_age.tolist() == pytest.approx([case.bone_age])
    with pytest.raises(IndexError):
        dataset.case(3)


def test_deterministic_from_seed_and_index():
    a, b = BoneAgePhantom(size=2, seed=5), BoneAgePhantom(size=30, seed=5)
    assert torch.equal(a[1][0], b[1][0]) and a.case(1) == b.case(1)
    assert not torch.equal(BoneAgePhantom(size=2, seed=6)[1][0], a[1][0])


def test_skewed_ages_concentrate_in_the_middle_and_uniform_ones_do_not():
    skewed = BoneAgePhantom(size=600, seed=0).cases()
    uniform = BoneAgePhantom(size=600, seed=0, distribution="uniform").cases()
    for cases in (skewed, uniform):
        ages = np.array([c.chronological_age for c in cases])
        assert ages.min() >= AGE_RANGE[0] and ages.max() <= AGE_RANGE[1]
        bone = np.array([c.bone_age for c in cases])
        assert bone.min() >= BONE_AGE_RANGE[0] and bone.max() <= BONE_AGE_RANGE[1]
    skewed_ages = np.array([c.chronological_age for c in skewed])
    uniform_ages = np.array([c.chronological_age for c in uniform])
    middle = lambda ages: np.mean((ages >= 9) & (ages < 13))  # noqa: E731
    assert middle(skewed_ages) > 0.6 and middle(uniform_ages) < 0.45
    assert np.mean(uniform_ages < 7) > 0.1 > np.mean(skewed_ages < 7)


def test_pathological_cases_follow_the_threshold_and_the_probability():
    cases = BoneAgePhantom(size=800, seed=1, pathological=0.3).cases()
    flags = np.array([c.pathological for c in cases])
    assert 0.25 < flags.mean() < 0.4  # drawn 30 %, plus the rare healthy tail beyond 2 years
    assert all((abs(c.bone_age - c.chronological_age) > PATHOLOGICAL_THRESHOLD) == c.pathological
               for c in cases)
    healthy = BoneAgePhantom(size=400, seed=1, pathological=0.0).cases()
    assert np.mean([c.pathological for c in healthy]) < 0.04  # only the normal tail
    assert BoneAgeCase(10.0, 12.5, True).pathological and not BoneAgeCase(10.0, 11.5, False).pathological


def test_older_hands_are_larger_and_brighter():
    """The image follows the bone age: more bright (bone) pixels and a larger hand."""
    dataset = BoneAgePhantom(size=300, seed=3, noise=0.0, distribution="uniform")
    cases = dataset.cases()
    young = [i for i, c in enumerate(cases) if c.bone_age < 6][:5]
    old = [i for i, c in enumerate(cases) if c.bone_age > 15][:5]
    assert len(young) == len(old) == 5
    bright = lambda i: float((dataset.generate(i)[0] > 0.4).sum())  # noqa: E731
    hand = lambda i: float((dataset.generate(i)[0] > 0.15).sum())  # noqa: E731
    assert np.mean([bright(i) for i in old]) > 1.3 * np.mean([bright(i) for i in young])
    assert np.mean([hand(i) for i in old]) > 1.2 * np.mean([hand(i) for i in young])


@pytest.mark.parametrize("bad, match", [
    ({"size": 0}, "size"),
    ({"image_size": 16}, "image_size"),
    ({"distribution": "normal"}, "distribution"),
    ({"pathological": 1.5}, "pathological"),
    ({"noise": -0.1}, "noise"),
])
def test_bad_options_are_rejected_with_their_name(bad, match):
    with pytest.raises(MedtuneError, match=match):
        BoneAgePhantom(**bad)
