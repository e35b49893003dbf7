"""The brain-tumour phantom, its degraded segmentations, the simulated raters and the loader of
real ratings (Kofler2022's data, simulated)."""

from __future__ import annotations

import sys

import nibabel
import numpy as np
import pytest

import medtune
from medtune.plugins.quality import (
    DEGRADATIONS,
    BrainTumourPhantom,
    QualityError,
    RaterPanel,
    degrade,
    load_anatomy,
    load_rated_folder,
    rater_mae,
    segmentation_quality,
)
from medtune.plugins.quality.brain_tumour import CONTRAST_NAMES

SIZE = 32


@pytest.fixture(scope="module")
def phantom() -> BrainTumourPhantom:
    return BrainTumourPhantom(size=3, seed=0, image_size=SIZE, segmentations=6)


def test_exam_holds_three_tissues_in_white_matter_with_contrasts(phantom):
    image, label = phantom[0]
    assert image.shape == (4, SIZE, SIZE, SIZE) and label.shape == (1, SIZE, SIZE, SIZE)
    label = label[0].numpy()
    assert set(np.unique(label)) == {0, 1, 2, 4}  # BraTS values
    anatomy = load_anatomy(SIZE)
    assert anatomy.source == "mni152"
    assert anatomy.brain[label > 0].mean() > 0.95  # the tumour lies in the brain
    t1, t1c, t2, flair = image.numpy()
    enhancing, oedema = label == 4, label == 2
    assert t1c[enhancing].mean() > t1[enhancing].mean() + 0.2  # the rim enhances
    assert flair[oedema].mean() > flair[(label == 0) & anatomy.brain].mean() + 0.2
    assert t2[anatomy.csf > 0.8].mean() > t2[anatomy.white > 0.8].mean()


def test_exams_are_deterministic_and_differ(phantom):
    again = BrainTumourPhantom(size=3, seed=0, image_size=SIZE, segmentations=6)
    assert np.array_equal(phantom[1][1], again[1][1])
    assert not np.array_equal(phantom[0][1], phantom[1][1])
    exam = phantom.exam(0)
    assert exam.kinds[0] == "truth" and np.array_equal(exam.segmentations[0], exam.truth)
    assert len(exam.cases()) == 6


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_degradation_lowers_quality_more_at_higher_severity(phantom, kind):
    truth = phantom.exam(0).truth
    assert segmentation_quality(truth, truth) == pytest.approx(1.0)
    def quality(severity: float) -> float:
        return float(np.mean([segmentation_quality(degrade(truth, kind, severity, np.random.default_rng(s)), truth)
                              for s in range(3)]))

    mild, severe = quality(0.0), quality(1.0)
    assert severe < 0.97
    assert severe < mild + 0.02, (kind, mild, severe)


def test_degrade_rejects_bad_arguments(phantom):
    truth = phantom.exam(0).truth
    with pytest.raises(QualityError, match="unknown degradation"):
        degrade(truth, "melt", 0.5, np.random.default_rng(0))
    with pytest.raises(QualityError, match="severity"):
        degrade(truth, "erode", 2.0, np.random.default_rng(0))


def test_raters_are_monotone_biased_and_noisy():
    panel = RaterPanel(raters=5, seed=3)
    qualities = np.repeat(np.linspace(0, 1, 6), 40)
    ratings = panel.rate(qualities)
    assert ratings.shape == (240, 5) and set(np.unique(ratings)) <= {1, 2, 3, 4, 5, 6}
    means = ratings.mean(1).reshape(6, 40).mean(1)
    assert np.all(np.diff(means) > 0)  # better segmentations get more stars
    offsets = np.array([r.offset for r in panel.raters])
    per_rater = ratings[np.isclose(qualities, 0.6)].mean(0)  # away from the clipped ends
    assert np.corrcoef(offsets, per_rater)[0, 1] > 0.5  # lenient raters give more stars
    assert 0.1 < rater_mae(ratings) < 1.5
    assert np.array_equal(panel.rate(qualities, seed=1), RaterPanel(5, seed=3).rate(qualities, seed=1))


def test_dataset_plugin_is_registered():
    dataset = medtune.create("dataset", "brain_tumour", size=2, seed=5, image_size=SIZE)
    assert len(dataset) == 2 and dataset[1][0].shape == (4, SIZE, SIZE, SIZE)


def test_procedural_head_without_nilearn(monkeypatch):
    load_anatomy.cache_clear()
    monkeypatch.setitem(sys.modules, "nilearn", None)  # import nilearn raises ImportError
    try:
        with pytest.warns(UserWarning, match="nilearn is not installed"):
            anatomy = load_anatomy(SIZE)
        assert anatomy.source == "ellipsoids" and anatomy.white.sum() > 0
        image, label = BrainTumourPhantom(size=1, image_size=SIZE)[0]
        assert set(np.unique(label.numpy())) == {0, 1, 2, 4}
    finally:
        load_anatomy.cache_clear()


def _write(path, array):
    nibabel.save(nibabel.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4)), str(path))


def test_load_rated_folder(tmp_path, phantom):
    exam = phantom.exam(0)
    case = tmp_path / "patient1"
    case.mkdir()
    for channel, name in enumerate(CONTRAST_NAMES):
        _write(case / f"{name}.nii.gz", exam.image[channel])
    _write(case / "manual.nii.gz", exam.truth)
    _write(case / "algo.nii.gz", exam.segmentations[1])
    (tmp_path / "ratings.csv").write_text(
        "case,segmentation,rater,rating\npatient1,manual,anna,6\npatient1,manual,ben,5\npatient1,algo,anna,2\n")
    rated = load_rated_folder(tmp_path)
    assert [c.name for c in rated.cases] == ["patient1/manual", "patient1/algo"]
    assert rated.raters == ["anna", "ben"]
    assert np.array_equal(rated.cases[1].segmentation, exam.segmentations[1])
    assert np.allclose(rated.cases[0].image, exam.image, atol=1e-5)
    assert rated.mean_ratings.tolist() == [5.5, 2.0]  # ben did not rate algo
    (tmp_path / "ratings.csv").write_text("case,segmentation,rater,rating\npatient1,manual,anna,9\n")
    with pytest.raises(QualityError, match="outside the 1-6 star scale"):
        load_rated_folder(tmp_path)
    (tmp_path / "ratings.csv").write_text("case,segmentation,rater,rating\npatient1,other,anna,3\n")
    with pytest.raises(QualityError, match="other.nii.gz: missing"):
        load_rated_folder(tmp_path)
    (tmp_path / "ratings.csv").write_text("case,rater,rating\n")
    with pytest.raises(QualityError, match="missing column"):
        load_rated_folder(tmp_path)
