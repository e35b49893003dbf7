"""The sample dataset: the layout, labels, patients and geometry its documentation promises,
deterministic from its seed, and an organ and lesion that intensities alone nearly separate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medtune.plugins.scans.layout import ScanDataError, load_dataset, read_case
from medtune.plugins.scans.sample import write_sample

nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sample") / "data"
    write_sample(folder)
    return folder


@pytest.fixture(scope="module")
def cases(folder):
    dataset = load_dataset(folder)
    return dataset, {case.name: read_case(case, dataset) for case in (*dataset.training, *dataset.test)}


def test_dataset_json_and_folders(folder):
    description = json.loads((folder / "dataset.json").read_text())
    assert description["name"] == "OrganPhantom"
    assert description["channel_names"] == {"0": "CT", "1": "T2"}
    assert description["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert description["numTraining"] == 8 and description["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == sorted(
        f"case_{i:03d}_{c:04d}.nii.gz" for i in range(8) for c in range(2))
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [
        f"case_{i:03d}.nii.gz" for i in range(8)]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [
        "case_008_0000.nii.gz", "case_008_0001.nii.gz", "case_009_0000.nii.gz", "case_009_0001.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["case_008.nii.gz", "case_009.nii.gz"]


def test_write_sample_returns_the_loaded_dataset(tmp_path):
    dataset = write_sample(tmp_path / "small", cases=3, size=16, seed=1)
    assert dataset == load_dataset(tmp_path / "small")
    assert len(dataset.training) == 3 and len(dataset.test) == 2


def test_groups_give_some_patients_two_cases_and_two_sites(cases):
    dataset, _ = cases
    patients = [case.patient for case in dataset.training]
    owned = {patient: patients.count(patient) for patient in patients}
    assert 2 <= len(owned) < len(patients)
    assert max(owned.values()) == 2
    assert {case.site for case in dataset.training} == {"A", "B"}
    for patient in owned:  # a patient's cases come from one site
        assert len({case.site for case in dataset.training if case.patient == patient}) == 1


def test_spacing_is_anisotropic_per_site_and_the_last_axis_shorter(cases):
    dataset, read = cases
    expected = {"A": (0.8, 0.8, 2.5), "B": (0.9, 0.9, 3.0), None: (0.8, 0.8, 2.5)}
    for case in (*dataset.training, *dataset.test):
        volume, _ = read[case.name]
        assert volume.spacing == pytest.approx(expected[case.site], abs=1e-5)
        assert volume.shape == (40, 40, 16)


def test_affines_are_oblique_by_a_few_degrees(cases):
    dataset, read = cases
    for name, (volume, _) in read.items():
        direction = volume.affine[:3, :3] / np.asarray(volume.spacing)
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-5)  # rigid
        off_axis = math.degrees(math.acos(min(1.0, abs(direction[0, 0]))))
        assert 2.0 < off_axis < 10.0, name
        # the world centre of the volume lies near the origin
        centre = volume.affine @ np.append((np.array(volume.shape) - 1) / 2, 1.0)
        assert np.abs(centre[:3]).max() <= 2.0 + 1e-6


def test_labels_hold_one_organ_with_a_small_lesion_inside(cases):
    dataset, read = cases
    for case in dataset.training:
        _, label = read[case.name]
        assert set(np.unique(label)) == {0, 1, 2}
        structure = label > 0
        assert ndimage.label(structure)[1] == 1
        assert ndimage.label(label == 2)[1] == 1
        lesion, organ = int((label == 2).sum()), int(structure.sum())
        assert 20 <= lesion <= 0.2 * organ  # small, but tens of voxels
        assert 0.01 < structure.mean() < 0.15
        # the lesion lies inside the organ: it never touches the background in-plane
        grown = ndimage.binary_dilation(label == 2, structure=np.ones((3, 3, 1), bool))
        assert (label[grown] > 0).mean() > 0.95


def test_intensities_make_the_organ_and_lesion_learnable(cases):
    dataset, read = cases
    for case in dataset.training:
        volume, label = read[case.name]
        ct, t2 = volume.array
        organ, lesion = label == 1, label == 2
        body = (label == 0) & (ct > -300) & (ct < 300)
        assert np.median(ct[organ]) - np.median(ct[body]) > 70  # enhanced organ
        assert np.median(t2[lesion]) > 1.6 * np.median(t2[organ])  # bright lesion in T2
        # a CT window alone finds the organ (organ and lesion) with a Dice above 0.8
        found = (ct > 90) & (ct < 300)
        found = ndimage.binary_opening(found, np.ones((3, 3, 1), bool))
        truth = label > 0
        dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
        assert dice > 0.8, (case.name, dice)
    # T2 has no absolute scale: the organ's level varies between cases
    levels = [np.median(read[c.name][0].array[1][read[c.name][1] == 1]) for c in dataset.training]
    assert max(levels) > 1.25 * min(levels)


def test_ct_is_stored_as_integers_in_hounsfield_range(folder):
    image = nib.load(str(folder / "imagesTr/case_000_0000.nii.gz"))
    assert image.get_data_dtype() == np.int16
    data = np.asanyarray(image.dataobj)
    assert -1100 < data.min() < -900 and 500 < data.max() < 1000
    assert nib.load(str(folder / "labelsTr/case_000.nii.gz")).get_data_dtype() == np.uint8


def test_deterministic_from_the_seed(tmp_path):
    first = write_sample(tmp_path / "a", cases=3, size=20, seed=5)
    again = write_sample(tmp_path / "b", cases=3, size=20, seed=5)
    other = write_sample(tmp_path / "c", cases=3, size=20, seed=6)
    assert (tmp_path / "a/groups.csv").read_text() == (tmp_path / "b/groups.csv").read_text()
    for case in first.training:
        volume, label = read_case(case, first)
        same, same_label = read_case(again.case(case.name), again)
        different, different_label = read_case(other.case(case.name), other)
        np.testing.assert_array_equal(volume.array, same.array)
        np.testing.assert_array_equal(label, same_label)
        np.testing.assert_array_equal(volume.affine, same.affine)
        assert not np.array_equal(volume.array, different.array)
        assert not np.array_equal(label, different_label)
    # cases differ from each other too
    assert not np.array_equal(read_case(first.training[0], first)[1], read_case(first.training[1], first)[1])


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    with pytest.raises(ScanDataError, match="full exists and is not an empty folder"):
        write_sample(tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert len(write_sample(tmp_path / "empty", cases=2, size=16).training) == 2


@pytest.mark.parametrize("arguments", [{"cases": 1}, {"size": 8}, {"size": 300}, {"cases": 2.5}])
def test_bad_arguments(tmp_path, arguments):
    with pytest.raises(ScanDataError):
        write_sample(tmp_path / "x", **arguments)
