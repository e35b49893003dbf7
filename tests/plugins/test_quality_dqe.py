"""The DQE quality estimator (Kofler2022): inputs, training, prediction, checkpoints, registry."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import medtune
from medtune.plugins.quality import DQE, Case, QualityError
from medtune.plugins.quality.dqe import centre_of_mass, encode_labels, normalise

SIZE = 32


def _case(offset: int = 0, label: int = 4, radius: int = 4, name: str = "c") -> Case:
    rng = np.random.default_rng(offset)
    image = rng.normal(0.5, 0.1, (4, SIZE, SIZE, SIZE)).astype(np.float32)
    segmentation = np.zeros((SIZE,) * 3, dtype=np.int64)
    grid = np.indices(segmentation.shape)
    centre = np.array([12 + offset, 10, 14])
    segmentation[((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius ** 2] = label
    image[:, segmentation > 0] += 0.5
    return Case(image, segmentation, name)


def test_inputs_are_centre_of_mass_slices_in_three_views():
    case = _case(offset=2)
    assert centre_of_mass(case.segmentation) == (14, 10, 14)
    assert centre_of_mass(np.zeros((8, 10, 12))) == (4, 5, 6)  # empty: the image centre
    estimator = DQE(label_encoding="brats", slice_size=SIZE)
    slices = estimator.slices(case)
    assert slices.shape == (3, 7, SIZE, SIZE)
    for view in range(3):  # each view passes through the lesion: ET, TC and WT channels lit
        assert (slices[view, 4:] > 0.5).any(dim=(1, 2)).all()
    tissue = DQE(label_encoding="tissue", slice_size=SIZE).slices(case)
    assert tissue.shape == (3, 5, SIZE, SIZE) and tissue[:, 4].max() == pytest.approx(1.0)


def test_label_encodings_and_normalisations():
    segmentation = np.array([0, 1, 2, 4])
    assert encode_labels(segmentation, "tissue")[0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert encode_labels(segmentation, "brats").tolist() == [[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]
    image = np.concatenate([np.linspace(0, 1, 1000)[None], np.linspace(-5, 5, 1000)[None]])
    image[0, 0] = 100.0  # an outlier
    minmax, percentile = normalise(image, "minmax"), normalise(image, "percentile")
    assert minmax.min() == 0 and minmax.max() == 1
    assert minmax[0, 500] < 0.01  # squeezed by the outlier
    assert percentile[0, 500] == pytest.approx(0.5, abs=0.02)  # the percentiles ignore it
    with pytest.raises(QualityError, match="normalisation must be one of"):
        normalise(image, "zscore")


def test_training_lowers_the_loss_and_separates_good_from_bad():
    good = [_case(i, radius=4, name=f"good{i}") for i in range(4)]
    bad = [_case(i, label=2, radius=2, name=f"bad{i}") for i in range(4)]
    estimator = medtune.create("quality_estimator", "dqe", slice_size=SIZE, augment=False, seed=0)
    losses = estimator.train(good + bad, [6.0] * 4 + [1.0] * 4, epochs=6, batch_size=8, lr=3e-3,
                             progress=False)
    assert losses[-1] < losses[0] / 2
    ratings = estimator.predict(good + bad)
    assert ratings.shape == (8,) and ratings[:4].mean() > ratings[4:].mean() + 1.5
    assert estimator.predict_views(good[:2]).shape == (2, 3)


def test_ratings_are_standardised_and_the_width_is_configurable():
    cases = [_case(i, name=f"c{i}") for i in range(3)]
    narrow = DQE(slice_size=SIZE, init_features=8, growth_rate=4, augment=False)
    wide = DQE(slice_size=SIZE, augment=False)
    assert sum(p.numel() for p in narrow.network.parameters()) * 20 < sum(p.numel() for p in wide.network.parameters())
    assert narrow.rating_mean == 3.5 and narrow.rating_scale == 2.5  # before training: the scale's middle
    narrow.train(cases, [2.0, 3.0, 4.0], epochs=1, batch_size=9, progress=False, schedule="constant")
    assert narrow.rating_mean == pytest.approx(3.0) and narrow.rating_scale == pytest.approx(np.std([2, 3, 4]))
    with pytest.raises(QualityError, match="schedule must be one of"):
        narrow.train(cases, [2.0, 3.0, 4.0], schedule="cosine")
    with pytest.raises(QualityError, match="init_features and growth_rate"):
        DQE(growth_rate=0)


@pytest.mark.slow
def test_estimator_learns_the_phantom_ratings():
    """A small training on the brain-tumour phantom: the held-out predictions follow the mean
    simulated rating (r clearly positive, bootstrap interval above 0) and beat the best constant."""
    from medtune.plugins.tasks.quality import QualityTask

    metrics = QualityTask()({"architecture": "densenet121", "init_features": 8, "growth_rate": 4,
                             "train_exams": 40, "test_exams": 12, "external_exams": 4, "epochs": 6,
                             "lr": 3e-3, "batch_size": 32, "augment": False, "bootstrap": 500,
                             "threads": 1}, seed=0)
    rated, predicted = np.asarray(metrics["rated"]), np.asarray(metrics["predicted"])
    assert metrics["pearson_r"] > 0.4 and metrics["pearson_low"] > 0.1
    assert metrics["mae"] < np.abs(rated - np.median(rated)).mean()  # the best constant, in hindsight
    assert np.std(predicted) > 0.4 * np.std(rated)  # no collapse to the mean rating
    assert metrics["external_r_dice"] > 0.3  # unseen, unrated exams: higher rating, higher Dice


def test_augmented_training_runs_and_rejects_bad_input():
    cases = [_case(i) for i in range(2)]
    estimator = DQE(architecture="densenet121", label_encoding="tissue", normalisation="minmax", slice_size=SIZE)
    assert len(estimator.train(cases, [3.0, 4.0], epochs=1, batch_size=6, progress=False)) == 1
    with pytest.raises(QualityError, match="one rating per case"):
        estimator.train(cases, [3.0], epochs=1)
    with pytest.raises(QualityError, match="optimizer must be one of"):
        estimator.train(cases, [3.0, 4.0], optimizer="ranger21")
    with pytest.raises(QualityError, match="architecture must be one of"):
        DQE(architecture="resnet")
    with pytest.raises(QualityError, match="image channels"):
        DQE(contrasts=2).slices(cases[0])


def test_checkpoint_round_trip(tmp_path):
    cases = [_case(i) for i in range(2)]
    estimator = DQE(label_encoding="tissue", slice_size=SIZE, seed=3)
    estimator.train(cases, [2.0, 5.0], epochs=1, batch_size=6, progress=False)
    path = tmp_path / "dqe.pt"
    estimator.save(path)
    loaded = DQE.load(path)
    assert loaded.header() == estimator.header()
    assert (loaded.rating_mean, loaded.rating_scale) == (estimator.rating_mean, estimator.rating_scale) == (3.5, 1.5)
    assert np.allclose(loaded.predict(cases), estimator.predict(cases), atol=1e-5)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo exploited > /dev/null",))


def test_foreign_and_malicious_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(QualityError, match="not a medtune DQE checkpoint"):
        DQE.load(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(QualityError, match="no 'medtune-dqe' header"):
        DQE.load(other)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "medtune-dqe", "payload": _Exploit()}, evil)
    with open(evil, "rb") as handle:  # the file would run code under a plain pickle load
        assert b"system" in handle.read()
    with pytest.raises(QualityError, match="not a medtune DQE checkpoint"):
        DQE.load(evil)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(QualityError, match="not a medtune DQE checkpoint"):
        DQE.load(raw)
    with pytest.raises(QualityError, match="no such checkpoint"):
        DQE.load(tmp_path / "missing.pt")
