"""The scans layout reader: the sample folder reads back as written, Decathlon 4D folders read as
channels, write_volume keeps geometry, and every broken copy of the sample fails with a
ScanDataError naming the case and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medtune.errors import MedtuneError
from medtune.plugins.scans.layout import (ScanCase, ScanDataError, ScanDataset, Volume,
                                          check_foreground, find_inputs, load_dataset, read_case,
                                          write_volume)
from medtune.plugins.scans.sample import write_sample

nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans") / "sample"
    write_sample(folder, cases=6, size=24, seed=3)
    return folder


@pytest.fixture
def sample(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the sample, free to break."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image.affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def edit_json(root: Path, change) -> None:
    path = root / "dataset.json"
    description = json.loads(path.read_text())
    change(description)
    path.write_text(json.dumps(description))


def read_error(root: Path, case: str) -> str:
    dataset = load_dataset(root)
    with pytest.raises(ScanDataError) as caught:
        read_case(dataset.case(case), dataset)
    return str(caught.value)


def load_error(root: Path) -> str:
    with pytest.raises(ScanDataError) as caught:
        load_dataset(root)
    return str(caught.value)


# reading a good folder


def test_the_sample_loads_with_its_channels_labels_cases_and_patients(sample):
    dataset = load_dataset(sample)
    assert isinstance(dataset, ScanDataset)
    assert dataset.name == "OrganPhantom" and dataset.root == sample
    assert dataset.channels == ("CT", "T2")
    assert dataset.labels == {"background": 0, "organ": 1, "lesion": 2}
    assert dataset.foreground == {"organ": 1, "lesion": 2}
    assert dataset.file_ending == ".nii.gz"
    assert [case.name for case in dataset.training] == [f"case_{i:03d}" for i in range(6)]
    assert [case.name for case in dataset.test] == ["case_006", "case_007"]
    first = dataset.case("case_001")
    assert first.images == (sample / "imagesTr/case_001_0000.nii.gz",
                            sample / "imagesTr/case_001_0001.nii.gz")
    assert first.label == sample / "labelsTr/case_001.nii.gz"
    assert first.patient == dataset.case("case_002").patient != dataset.case("case_000").patient
    assert first.site == "A" and dataset.case("case_003").site == "B"
    assert all(case.label is None and case.patient == case.name for case in dataset.test)


def test_a_case_reads_as_float_channels_and_an_int16_label(sample):
    dataset = load_dataset(sample)
    volume, label = read_case(dataset.case("case_000"), dataset)
    assert isinstance(volume, Volume)
    assert volume.array.dtype == np.float32 and volume.array.shape == (2, 24, 24, 10)
    assert volume.shape == (24, 24, 10)
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5))
    ct, affine = load_nifti(sample / "imagesTr/case_000_0000.nii.gz")
    np.testing.assert_array_equal(volume.array[0], ct.astype(np.float32))
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.header["dim"][1:4].tolist() == [24, 24, 10]
    assert label.dtype == np.int16 and label.shape == (24, 24, 10)
    assert set(np.unique(label)) == {0, 1, 2}
    test_volume, no_label = read_case(dataset.test[0], dataset)
    assert no_label is None and test_volume.array.shape[0] == 2


def test_unknown_case_names_the_known_ones(sample):
    with pytest.raises(ScanDataError, match="no case 'case_999'.*case_000"):
        load_dataset(sample).case("case_999")


def test_scan_data_error_is_a_medtune_error():
    assert issubclass(ScanDataError, MedtuneError)


def test_a_trailing_axis_of_one_is_squeezed_and_tiny_affine_noise_accepted(sample):
    path = sample / "imagesTr/case_000_0001.nii.gz"
    data, affine = load_nifti(path)
    nudged = affine.copy()
    nudged[:3, :3] *= 1 + 1e-6
    nudged[:3, 3] += 1e-6
    save_nifti(path, data[..., None], nudged)
    dataset = load_dataset(sample)
    volume, _ = read_case(dataset.case("case_000"), dataset)
    np.testing.assert_array_equal(volume.array[1], data)


def test_check_foreground_counts_each_label(sample):
    dataset = load_dataset(sample)
    counts = check_foreground(dataset)
    expected = {"organ": 0, "lesion": 0}
    for case in dataset.training:
        label, _ = load_nifti(case.label)
        expected["organ"] += int((label == 1).sum())
        expected["lesion"] += int((label == 2).sum())
    assert counts == expected and expected["lesion"] > 0
    assert check_foreground(dataset, {"organ": 5, "lesion": 0}) == {"organ": 5, "lesion": 0}


# dataset.json and files


def test_missing_dataset_json(sample):
    (sample / "dataset.json").unlink()
    assert "no dataset.json" in load_error(sample) and "channel_names" in load_error(sample)


def test_missing_folder(tmp_path):
    assert "does not exist" in load_error(tmp_path / "absent")


@pytest.mark.parametrize("key", ["channel_names", "labels", "numTraining", "file_ending"])
def test_missing_key_is_named(sample, key):
    edit_json(sample, lambda d: d.pop(key))
    assert f"lacks the key {key!r}" in load_error(sample)


def test_invalid_json(sample):
    (sample / "dataset.json").write_text("{\"name\": ")
    assert "not valid JSON" in load_error(sample)


@pytest.mark.parametrize("labels, message", [
    ({"organ": 1, "lesion": 2}, "lacks the background"),
    ({"background": 0, "organ": 1, "lesion": 1}, "value(s) [1] to more than one"),
    ({"background": 0, "organ": [1, 2]}, "region"),
    ({"background": 0, "organ": 1.5}, "integers"),
    ({"background": 0, "organ": 1, "ignore": 2}, "ignore"),
])
def test_bad_labels(sample, labels, message):
    edit_json(sample, lambda d: d.update(labels=labels))
    assert message in load_error(sample)


def test_bad_channel_names_and_file_ending(sample):
    edit_json(sample, lambda d: d.update(channel_names={"1": "CT", "2": "T2"}))
    assert "channel indices" in load_error(sample)
    edit_json(sample, lambda d: d.update(channel_names={"0": "CT", "1": "T2"}, file_ending=".mha"))
    assert "only NIfTI" in load_error(sample)


def test_num_training_must_match(sample):
    edit_json(sample, lambda d: d.update(numTraining=7))
    assert "numTraining=7 but 6 training cases" in load_error(sample)


def test_a_missing_channel_file_is_named(sample):
    (sample / "imagesTr/case_003_0001.nii.gz").unlink()
    message = load_error(sample)
    assert "case 'case_003'" in message and "case_003_0001.nii.gz" in message
    assert "channel 1" in message


def test_an_image_without_label(sample):
    (sample / "labelsTr/case_002.nii.gz").unlink()
    message = load_error(sample)
    assert "case 'case_002'" in message and "labelsTr/case_002.nii.gz is missing" in message
    assert "imagesTs" in message


def test_a_label_without_image(sample):
    shutil.copy(sample / "labelsTr/case_000.nii.gz", sample / "labelsTr/case_050.nii.gz")
    assert "labelsTr/case_050.nii.gz has no image" in load_error(sample)


def test_a_misnamed_image_and_an_extra_channel(sample):
    shutil.copy(sample / "imagesTr/case_000_0000.nii.gz", sample / "imagesTr/scan.nii.gz")
    assert "scan.nii.gz is not named CASE_XXXX" in load_error(sample)
    (sample / "imagesTr/scan.nii.gz").rename(sample / "imagesTr/case_000_0002.nii.gz")
    assert "is channel 2 but dataset.json lists 2" in load_error(sample)


def test_hidden_and_other_files_are_ignored(sample):
    (sample / "imagesTr/.case_000_0000.nii.gz").write_bytes(b"junk")
    (sample / "imagesTr/notes.txt").write_text("x")
    assert len(load_dataset(sample).training) == 6


def test_duplicate_case_names(sample):
    for channel in (0, 1):
        shutil.copy(sample / f"imagesTr/case_000_000{channel}.nii.gz",
                    sample / f"imagesTs/case_000_000{channel}.nii.gz")
    assert "'case_000' appears twice" in load_error(sample)


# voxel checks of read_case


def test_channels_with_different_shapes(sample):
    path = sample / "imagesTr/case_001_0001.nii.gz"
    data, affine = load_nifti(path)
    save_nifti(path, data[:, :, :-1], affine)
    message = read_error(sample, "case_001")
    assert "case 'case_001'" in message and "different shapes" in message
    assert "(24, 24, 9) vs (24, 24, 10)" in message


def test_channels_with_different_spacings_give_both(sample):
    path = sample / "imagesTr/case_001_0001.nii.gz"
    data, affine = load_nifti(path)
    moved = affine.copy()
    moved[:3, 2] *= 3.0 / 2.5
    save_nifti(path, data, moved)
    message = read_error(sample, "case_001")
    assert "case_001_0001.nii.gz and imagesTr/case_001_0000.nii.gz have different affines" in message
    assert "spacing 0.8 x 0.8 x 3 mm vs 0.8 x 0.8 x 2.5 mm" in message
    assert "\n" not in message


def test_channels_with_shifted_origin(sample):
    path = sample / "imagesTr/case_001_0001.nii.gz"
    data, affine = load_nifti(path)
    moved = affine.copy()
    moved[0, 3] += 0.01  # 1/80 of a voxel: beyond the tolerance
    save_nifti(path, data, moved)
    assert "different affines" in read_error(sample, "case_001")


def test_label_grid_must_match_the_image(sample):
    path = sample / "labelsTr/case_004.nii.gz"
    data, affine = load_nifti(path)
    save_nifti(path, data[:-2], affine)
    message = read_error(sample, "case_004")
    assert "labelsTr/case_004.nii.gz and imagesTr/case_004_0000.nii.gz have different shapes" in message
    rotated = affine.copy()
    rotated[:3, :3] = rotated[:3, :3] @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    save_nifti(path, data, rotated)
    message = read_error(sample, "case_004")
    assert "different affines" in message and "orientation differs" in message
    assert "nearest neighbour" in message


def test_label_values_not_in_dataset_json_are_listed(sample):
    path = sample / "labelsTr/case_002.nii.gz"
    data, affine = load_nifti(path)
    data = data.astype(np.int16)
    data[0, 0, 0], data[1, 0, 0] = 7, 3
    save_nifti(path, data, affine)
    message = read_error(sample, "case_002")
    assert "case 'case_002'" in message and "value(s) 3, 7" in message
    assert "background=0, organ=1, lesion=2" in message
    data[1, 0, 0] = -1
    save_nifti(path, data, affine)
    assert "value(s) -1, 7" in read_error(sample, "case_002")


def test_non_integer_label(sample):
    path = sample / "labelsTr/case_002.nii.gz"
    data, affine = load_nifti(path)
    data = data.astype(np.float32)
    data[3, 3, 3] = 0.5
    save_nifti(path, data, affine)
    assert "non-integer values (e.g. 0.5)" in read_error(sample, "case_002")


def test_nan_and_inf_voxels_are_counted(sample):
    path = sample / "imagesTr/case_005_0001.nii.gz"
    data, affine = load_nifti(path)
    data = data.astype(np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, :2] = np.inf
    save_nifti(path, data, affine)
    message = read_error(sample, "case_005")
    assert "case 'case_005'" in message and "case_005_0001.nii.gz holds 5 NaN/Inf" in message


def test_4d_where_3d_is_expected(sample):
    path = sample / "imagesTr/case_000_0000.nii.gz"
    data, affine = load_nifti(path)
    save_nifti(path, np.stack([data, data], axis=-1), affine)
    message = read_error(sample, "case_000")
    assert "case_000_0000.nii.gz is 4D" in message and "where a 3D volume is expected" in message


def test_a_damaged_file_names_the_case(sample):
    (sample / "imagesTr/case_001_0000.nii.gz").write_bytes(b"not a nifti file")
    message = read_error(sample, "case_001")
    assert "case 'case_001'" in message and "case_001_0000.nii.gz" in message


def test_no_foreground_at_all(sample):
    for path in (sample / "labelsTr").iterdir():
        data, affine = load_nifti(path)
        save_nifti(path, np.zeros_like(data), affine)
    dataset = load_dataset(sample)
    read_case(dataset.training[0], dataset)  # readable, just empty
    with pytest.raises(ScanDataError, match="none of the 6 training label maps holds a foreground"):
        check_foreground(dataset)
    with pytest.raises(ScanDataError, match="foreground"):
        check_foreground(dataset, {"organ": 0, "lesion": 0})


# groups.csv


@pytest.mark.parametrize("text, message", [
    ("case,patient\ncase_000,p1\ncase_404,p1\n", "line 3: no case 'case_404'"),
    ("case,subject\ncase_000,p1\n", "lacks the column(s) patient"),
    ("case,patient\ncase_000,p1\ncase_000,p2\n", "'case_000' is listed twice"),
    ("case,patient\ncase_000,\n", "'case_000' has no patient"),
])
def test_groups_csv_problems(sample, text, message):
    (sample / "groups.csv").write_text(text)
    assert message in load_error(sample)


def test_groups_csv_is_optional(sample):
    (sample / "groups.csv").unlink()
    dataset = load_dataset(sample)
    assert all(case.patient == case.name and case.site is None for case in dataset.training)


# prediction inputs


def test_find_inputs_reads_channel_files(sample):
    cases = find_inputs(sample / "imagesTs", channels=2)
    assert [case.name for case in cases] == ["case_006", "case_007"]
    assert all(isinstance(case, ScanCase) and case.label is None for case in cases)
    assert cases[0].images[1] == sample / "imagesTs/case_006_0001.nii.gz"


def test_find_inputs_errors(sample, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScanDataError, match="no input images in .*CASE_0000.nii.gz"):
        find_inputs(empty, channels=2)
    with pytest.raises(ScanDataError, match="does not exist"):
        find_inputs(tmp_path / "absent", channels=1)
    (sample / "imagesTs/case_007_0001.nii.gz").unlink()
    with pytest.raises(ScanDataError, match="case 'case_007'.*case_007_0001.nii.gz.*missing"):
        find_inputs(sample / "imagesTs", channels=2)


# writing volumes


def oblique_affine() -> np.ndarray:
    angle = np.radians(7.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag([0.7, 0.7, 3.0])
    affine[:3, 3] = (12.5, -40.25, 7.0)
    return affine


def test_write_volume_round_trip_keeps_geometry_and_values(tmp_path):
    affine = oblique_affine()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 7, 5)).astype(np.float64)
    path = write_volume(tmp_path / "sub" / "image.nii.gz", image, affine)
    data, written = load_nifti(path)
    assert data.shape == (9, 7, 5) and data.dtype == np.float32
    np.testing.assert_allclose(data, image.astype(np.float32))
    np.testing.assert_allclose(written, affine, atol=1e-5)
    assert nib.load(str(path)).header.get_xyzt_units()[0] == "mm"


@pytest.mark.parametrize("values, dtype", [((0, 2), np.uint8), ((0, 255), np.uint8),
                                           ((0, 300), np.int16), ((-5, 3), np.int16),
                                           ((0, 70000), np.int32)])
def test_write_volume_stores_labels_in_the_smallest_integer_type(tmp_path, values, dtype):
    label = np.zeros((4, 4, 3), np.int64)
    label[0, 0, 0], label[1, 0, 0] = values
    path = write_volume(tmp_path / "label.nii", label, np.eye(4))
    data, _ = load_nifti(path)
    assert nib.load(str(path)).get_data_dtype() == dtype
    np.testing.assert_array_equal(data, label)


def test_write_volume_with_the_input_header_keeps_it_and_ignores_its_scaling(tmp_path):
    affine = oblique_affine()
    source = nib.Nifti1Image(np.zeros((6, 5, 4, 2), np.int16), affine)
    source.header["descrip"] = b"scanner X"
    source.header.set_slope_inter(2.0, -1024.0)
    source.header.set_xyzt_units("mm", "sec")
    label = np.arange(6 * 5 * 4).reshape(6, 5, 4) % 3
    path = write_volume(tmp_path / "pred.nii.gz", label, affine, header=source.header)
    written = nib.load(str(path))
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), label)
    assert written.shape == (6, 5, 4) and written.get_data_dtype() == np.uint8
    assert written.header["descrip"].tobytes().startswith(b"scanner X")
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    assert source.header.get_slope_inter() == (2.0, -1024.0)  # the caller's header untouched


def test_write_volume_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "out.nii.gz"
    write_volume(target, np.ones((3, 3, 3), np.uint8), np.eye(4))

    def broken_save(image, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_volume(target, np.zeros((3, 3, 3), np.uint8), np.eye(4))
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]
    data, _ = load_nifti(target)
    assert data.min() == 1  # the previous file is intact


def test_write_volume_needs_a_nifti_name(tmp_path):
    with pytest.raises(ScanDataError, match=".nii.gz or .nii"):
        write_volume(tmp_path / "out.mha", np.zeros((2, 2, 2)), np.eye(4))


# Decathlon layout


def decathlon_copy(sample: Path, root: Path, channels: int = 2) -> Path:
    """The sample rewritten in the Decathlon layout: one 4D image file per case."""
    dataset = load_dataset(sample)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    training, test = [], []
    for case in (*dataset.training, *dataset.test):
        arrays = [load_nifti(path) for path in case.images[:channels]]
        folder = "imagesTr" if case.label is not None else "imagesTs"
        stacked = np.stack([a for a, _ in arrays], axis=-1) if channels > 1 else arrays[0][0]
        save_nifti(root / folder / f"{case.name}.nii.gz", stacked, arrays[0][1])
        if case.label is not None:
            shutil.copy(case.label, root / "labelsTr" / f"{case.name}.nii.gz")
            training.append({"image": f"./imagesTr/{case.name}.nii.gz",
                             "label": f"./labelsTr/{case.name}.nii.gz"})
        else:
            test.append(f"./imagesTs/{case.name}.nii.gz")
    description = {"name": "Phantom", "modality": {"0": "CT", "1": "MRI"} if channels > 1 else {"0": "CT"},
                   "labels": {"0": "background", "1": "organ", "2": "lesion"},
                   "numTraining": len(training), "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_decathlon_4d_images_split_into_channels(sample, tmp_path):
    root = decathlon_copy(sample, tmp_path / "msd")
    dataset = load_dataset(root)
    original = load_dataset(sample)
    assert dataset.channels == ("CT", "MRI") and dataset.name == "Phantom"
    assert dataset.labels == {"background": 0, "organ": 1, "lesion": 2}
    assert [c.name for c in dataset.training] == [c.name for c in original.training]
    assert [c.name for c in dataset.test] == ["case_006", "case_007"]
    assert dataset.case("case_002").images == (root / "imagesTr/case_002.nii.gz",)
    assert dataset.case("case_002").patient == "case_002"  # no groups.csv
    volume, label = read_case(dataset.case("case_002"), dataset)
    expected, expected_label = read_case(original.case("case_002"), original)
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_array_equal(label, expected_label)
    np.testing.assert_allclose(volume.affine, expected.affine)
    assert read_case(dataset.test[0], dataset)[1] is None


def test_decathlon_single_channel_3d(sample, tmp_path):
    root = decathlon_copy(sample, tmp_path / "msd", channels=1)
    dataset = load_dataset(root)
    volume, _ = read_case(dataset.training[0], dataset)
    assert dataset.channels == ("CT",) and volume.array.shape == (1, 24, 24, 10)


def test_decathlon_4d_with_the_wrong_channel_count(sample, tmp_path):
    root = decathlon_copy(sample, tmp_path / "msd")
    edit_json(root, lambda d: d.update(modality={"0": "CT", "1": "T1", "2": "T2"}))
    message = read_error(root, "case_000")
    assert "shape (24, 24, 10, 2)" in message and "lists 3 channels" in message


def test_decathlon_missing_entries(sample, tmp_path):
    root = decathlon_copy(sample, tmp_path / "msd")
    (root / "labelsTr/case_001.nii.gz").unlink()
    assert "case 'case_001': its label ./labelsTr/case_001.nii.gz" in load_error(root)
    edit_json(root, lambda d: d.pop("training"))
    assert "lacks the key 'training'" in load_error(root)


def test_listed_cases_stored_one_file_per_channel(sample, tmp_path):
    """nnU-Net v1 folders list CASE.nii.gz while the files are CASE_0000.nii.gz, ..."""
    root = tmp_path / "v1"
    shutil.copytree(sample, root)
    dataset = load_dataset(sample)
    entries = [{"image": f"./imagesTr/{c.name}.nii.gz", "label": f"./labelsTr/{c.name}.nii.gz"}
               for c in dataset.training]
    (root / "dataset.json").write_text(json.dumps({
        "name": "v1", "modality": {"0": "CT", "1": "T2"},
        "labels": {"0": "background", "1": "organ", "2": "lesion"}, "training": entries}))
    loaded = load_dataset(root)
    assert loaded.case("case_001").images == (root / "imagesTr/case_001_0000.nii.gz",
                                              root / "imagesTr/case_001_0001.nii.gz")
    assert loaded.case("case_001").patient == "patient_01"  # groups.csv applies too
    (root / "imagesTr/case_001_0001.nii.gz").unlink()
    assert "case 'case_001': ./imagesTr/case_001.nii.gz" in load_error(root)

