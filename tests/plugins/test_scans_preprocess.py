"""Scans preprocessing: target shape, normalisation, resampling geometry, label classes, the way
back to a case's own grid (restore), the on-disk cache keyed by the plan, and the whole path from
the sample dataset's fingerprint to its preprocessed cases."""

from __future__ import annotations

import os

import numpy as np
import pytest

import medtune.plugins.scans.preprocess as preprocessing
from medtune.plugins.scans.fingerprint import ChannelIntensity, Fingerprint, fingerprint
from medtune.plugins.scans.layout import Volume, read_case
from medtune.plugins.scans.plan import make_plan
from medtune.plugins.scans.preprocess import (
    PreprocessedCache,
    PreprocessError,
    normalise,
    preprocess,
    restore,
    target_shape,
)
from medtune.plugins.scans.sample import write_sample

IDENTITY = {"scheme": "ct", "clip": [-1e9, 1e9], "mean": 0.0, "std": 1.0}


def make_volume(array: np.ndarray, spacing) -> Volume:
    return Volume(np.asarray(array, dtype=np.float32), np.diag([*spacing, 1.0]), None)


def plan_for(spacing, shape=(64, 64, 16), configuration="3d", channels=("MR",),
             labels=None, normalisation=None):
    """A plan of one-case-geometry data, with its target spacing and normalisation overridden."""
    labels = labels or {"background": 0, "organ": 1, "lesion": 2}
    intensity = ChannelIntensity(0.0, 1.0, 0.0, -1.0, 1.0)
    fp = Fingerprint("Toy", tuple(channels), labels, ("a",), (tuple(spacing),), (tuple(shape),),
                     (intensity,) * len(channels), {name: 1 for name in labels},
                     {name: None for name, value in labels.items() if value})
    plan = make_plan(fp, configuration=configuration, memory_budget_gb=4.0)
    return plan.with_overrides(normalisation=normalisation or (IDENTITY,) * len(channels))


def ellipsoids(shape, spacing) -> np.ndarray:
    """An organ (ellipsoid, about half the field) holding a lesion (sphere of 8 mm radius)."""
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    extent = [n * s for n, s in zip(shape, spacing)]
    organ = sum(((g - e / 2) / (0.3 * e)) ** 2 for g, e in zip(grid, extent)) <= 1
    lesion = sum((g - e / 2 - (4.0 if axis == 0 else 0.0)) ** 2
                 for axis, (g, e) in enumerate(zip(grid, extent))) <= 8.0**2
    label = organ.astype(np.int16)
    label[lesion & organ] = 2
    return label


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_target_shape():
    plan = plan_for((1.0, 1.0, 2.0))
    assert target_shape((64, 64, 16), (0.5, 0.5, 3.0), plan) == (32, 32, 24)
    assert target_shape((3, 3, 3), (0.1, 0.1, 0.1), plan) == (1, 1, 1)
    plan_2d = plan_for((1.0, 1.0, 3.0), shape=(64, 64, 16), configuration="2d")
    assert plan_2d.slice_axis == 2
    assert target_shape((64, 64, 16), (0.5, 0.5, 5.0), plan_2d) == (32, 32, 16)  # slices kept


def test_normalisation():
    ct = {"scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0}
    plan = plan_for((1.0, 1.0, 1.0), channels=("CT", "T2"), normalisation=(ct, {"scheme": "zscore"}))
    rng = np.random.default_rng(0)
    array = np.stack([np.linspace(-1000, 1000, 1000).reshape(10, 10, 10),
                      rng.normal(7.0, 3.0, (10, 10, 10))]).astype(np.float32)
    result = normalise(array, plan)
    assert result.dtype == np.float32
    assert result[0].min() == pytest.approx(-6.0) and result[0].max() == pytest.approx(6.0)
    middle = np.abs(array[0]) < 100
    assert np.allclose(result[0][middle], (array[0][middle] - 50) / 25, atol=1e-5)
    assert result[1].mean() == pytest.approx(0.0, abs=1e-5) and result[1].std() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(PreprocessError, match="channels"):
        normalise(array[:1], plan)


def test_linear_resampling_keeps_voxel_centres():
    # a ramp in mm along x, sampled at voxel centres, is the same ramp after resampling
    spacing, shape = (0.5, 1.0, 1.0), (40, 8, 8)
    x = (np.arange(shape[0]) + 0.5) * spacing[0]
    image = np.broadcast_to(x[:, None, None], shape)[None]
    plan = plan_for((1.25, 1.0, 1.0))
    result, _ = preprocess(make_volume(image, spacing), None, plan)
    assert result.shape == (1, 16, 8, 8)
    expected = (np.arange(16) + 0.5) * 1.25
    assert np.allclose(result[0, 2:-2, 4, 4], expected[2:-2], atol=1e-4)  # interior, away from the border


def test_labels_become_class_indices():
    labels = {"background": 0, "liver": 1, "tumour": 4}
    plan = plan_for((1.0, 1.0, 1.0), labels=labels)
    label = np.zeros((16, 16, 16), np.int16)
    label[4:8] = 1
    label[10:12] = 4
    image, classes = preprocess(make_volume(np.zeros((1, 16, 16, 16)), (1, 1, 1)), label, plan)
    assert classes.dtype == np.int16 and sorted(np.unique(classes)) == [0, 1, 2]
    assert (classes[10:12] == 2).all()
    one_hot = np.stack([classes == k for k in range(3)]).astype(np.float32)
    restored = restore(one_hot, make_volume(np.zeros((1, 16, 16, 16)), (1, 1, 1)), plan)
    assert np.array_equal(restored, label)  # back to the label values
    with pytest.raises(PreprocessError, match=r"\[3\]"):
        preprocess(make_volume(np.zeros((1, 16, 16, 16)), (1, 1, 1)), np.full((16, 16, 16), 3, np.int16), plan)
    with pytest.raises(PreprocessError, match="shape"):
        preprocess(make_volume(np.zeros((1, 16, 16, 16)), (1, 1, 1)), label[:8], plan)


@pytest.mark.parametrize("configuration", ["3d", "2d"])
def test_round_trip_of_an_anisotropic_label(configuration):
    spacing, shape = (0.7, 0.7, 3.0), (80, 80, 20)
    label = ellipsoids(shape, spacing)
    plan = plan_for(spacing, shape=shape, configuration=configuration).with_overrides(spacing=(1.0, 1.0, 1.5))
    volume = make_volume(label[None].astype(np.float32), spacing)
    image, classes = preprocess(volume, label, plan)
    expected = (56, 56, 40) if configuration == "3d" else (56, 56, 20)
    assert image.shape == (1, *expected) and classes.shape == expected
    one_hot = np.stack([classes == k for k in range(3)]).astype(np.float32)
    restored = restore(one_hot, volume, plan)
    assert restored.shape == shape and restored.dtype == np.int16
    for value in (1, 2):
        assert dice(restored == value, label == value) > 0.95, value
    assert dice(restored > 0, label > 0) > 0.95


def test_restore_resamples_probabilities_not_labels():
    # two coarse voxels: A = (0.45, 0.55, 0), B = (0.45, 0, 0.55); between them the interpolated
    # background wins, which resampling the labels (or nearest probabilities) would never give
    plan = plan_for((2.0, 1.0, 1.0))
    volume = make_volume(np.zeros((1, 4, 1, 1)), (1.0, 1.0, 1.0))
    probabilities = np.array([[0.45, 0.45], [0.55, 0.0], [0.0, 0.55]], np.float32)[:, :, None, None]
    assert restore(probabilities, volume, plan)[:, 0, 0].tolist() == [1, 0, 0, 2]
    with pytest.raises(PreprocessError, match="K=3"):
        restore(probabilities[:2], volume, plan)


# --- the sample dataset, end to end, and the cache ---------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    dataset = write_sample(tmp_path_factory.mktemp("scans") / "data", cases=4)
    return dataset, fingerprint(dataset)


@pytest.mark.parametrize("configuration", ["3d", "2d"])
def test_fingerprint_plan_preprocess_on_the_sample(sample, configuration):
    dataset, fp = sample
    plan = make_plan(fp, configuration=configuration, memory_budget_gb=2.0)
    for case in (*dataset.training, dataset.test[0]):
        volume, label = read_case(case, dataset)
        image, classes = preprocess(volume, label, plan)
        shape = target_shape(volume.shape, volume.spacing, plan)
        assert image.shape == (2, *shape) and image.dtype == np.float32 and np.isfinite(image).all()
        if label is None:
            assert classes is None
            continue
        assert classes.shape == shape and set(np.unique(classes)) <= {0, 1, 2}
        ct = image[0][classes > 0]
        assert abs(float(ct.mean())) < 1.0  # the foreground's own mean and std standardise it
        one_hot = np.stack([classes == k for k in range(3)]).astype(np.float32)
        assert dice(restore(one_hot, volume, plan) > 0, label > 0) > 0.9


def test_cache_computes_once_and_keys_by_plan(sample, tmp_path, monkeypatch):
    dataset, fp = sample
    plan = make_plan(fp, memory_budget_gb=2.0)
    reads = []
    original = preprocessing.read_case
    monkeypatch.setattr(preprocessing, "read_case", lambda case, ds: reads.append(case.name) or original(case, ds))
    cache = PreprocessedCache(tmp_path, plan, dataset)
    case = dataset.training[0]
    image, label = cache.get(case)
    assert cache.path(case) == tmp_path / plan.key() / f"{case.name}.npz" and cache.path(case).exists()
    again_image, again_label = cache.get(case)
    assert reads == [case.name]  # the second get read the stored file
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    direct = preprocess(*original(case, dataset), plan)
    assert np.array_equal(direct[0], again_image) and np.array_equal(direct[1], again_label)
    assert [p.name for p in cache.folder.iterdir()] == [f"{case.name}.npz"]  # no temporary left

    other = PreprocessedCache(tmp_path, plan.with_overrides(spacing=(1.0, 1.0, 2.0)), dataset)
    assert other.folder != cache.folder
    assert other.get(case)[0].shape != image.shape and len(reads) == 2
    assert PreprocessedCache(tmp_path, plan.with_overrides(batch_size=5), dataset).folder == cache.folder

    status = os.stat(case.images[1])
    os.utime(case.images[1], ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    cache.get(case)
    assert len(reads) == 3  # a changed source file is preprocessed again

    unlabelled = dataset.test[0]
    image, label = cache.get(unlabelled)
    assert label is None and cache.get(unlabelled)[1] is None and reads[-1] == unlabelled.name
    assert reads.count(unlabelled.name) == 1


def test_cache_recovers_from_a_damaged_file(sample, tmp_path):
    dataset, fp = sample
    cache = PreprocessedCache(tmp_path, make_plan(fp, memory_budget_gb=2.0), dataset)
    case = dataset.training[1]
    image, _ = cache.get(case)
    cache.path(case).write_bytes(b"not an npz")
    assert np.array_equal(cache.get(case)[0], image)
