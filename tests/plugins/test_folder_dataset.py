"""The ``folder`` dataset on NIfTI files written here with nibabel: values, spacing and
orientation survive, resampling follows the target spacing, and a bad folder is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import medtune
from medtune.errors import MedtuneError
from medtune.plugins.datasets import FolderDataset

nibabel = pytest.importorskip("nibabel")


def write_case(root: Path, name: str, image: np.ndarray, label: np.ndarray,
               affine: np.ndarray | None = None, label_affine: np.ndarray | None = None,
               suffix: str = ".nii.gz") -> None:
    """Write ``images/<name><suffix>`` and ``labels/<name><suffix>`` under ``root``."""
    affine = np.eye(4) if affine is None else affine
    label_affine = affine if label_affine is None else label_affine
    for folder, data, matrix in (("images", image, affine), ("labels", label, label_affine)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(data, matrix), str(root / folder / f"{name}{suffix}"))


def volume(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random float32 image and a label map of classes 0-2 with its shape."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    label = rng.integers(0, 3, size=shape).astype(np.uint8)
    return image, label


@pytest.fixture
def good_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    data = {}
    for i, name in enumerate(["case_b", "case_a", "case_c"]):
        data[name] = volume((12, 10, 8), i)
        write_case(tmp_path, name, *data[name], affine=np.diag([0.8, 0.8, 2.5, 1.0]),
                   suffix=".nii" if name == "case_c" else ".nii.gz")
    return tmp_path, data


def test_registered_as_a_dataset_plugin(good_folder):
    root, _ = good_folder
    assert "folder" in medtune.available("dataset")
    assert isinstance(medtune.create("dataset", "folder", root=root), FolderDataset)


def test_a_good_folder_round_trips_values_labels_and_spacing(good_folder):
    root, data = good_folder
    dataset = FolderDataset(root, normalize=False)
    assert dataset.cases == ("case_a", "case_b", "case_c")  # name order, .nii and .nii.gz alike
    for index, name in enumerate(dataset.cases):
        image, label = dataset[index]
        assert image.shape == label.shape == (1, 12, 10, 8)
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        np.testing.assert_array_equal(image[0].numpy(), data[name][0])
        np.testing.assert_array_equal(label[0].numpy(), data[name][1])
    assert dataset.spacing == pytest.approx((0.8, 0.8, 2.5))


def test_normalize_z_scores_the_image_and_leaves_labels(good_folder):
    root, data = good_folder
    image, label = FolderDataset(root)[0]
    assert abs(image.mean().item()) < 1e-5 and abs(image.std().item() - 1) < 1e-4
    np.testing.assert_array_equal(label[0].numpy(), data["case_a"][1])


def test_anisotropic_spacing_is_resampled_to_the_target(tmp_path):
    shape, spacing = (21, 16, 6), (0.5, 1.0, 3.0)
    image = np.broadcast_to(np.arange(shape[2], dtype=np.float32), shape).copy()  # ramp along z
    label = np.zeros(shape, np.uint8)
    label[5:15, 4:12, 2:4] = 1
    write_case(tmp_path, "ct", image, label, affine=np.diag([*spacing, 1.0]))
    dataset = FolderDataset(tmp_path, target_spacing=1.0, normalize=False)
    resampled, resampled_label = dataset[0]
    expected = tuple(round((n - 1) * s) + 1 for n, s in zip(shape, spacing))  # same extent in mm
    assert tuple(resampled.shape[1:]) == tuple(resampled_label.shape[1:]) == expected == (11, 16, 16)
    assert dataset.spacing == pytest.approx((1.0, 1.0, 1.0))
    ramp = resampled[0, 5, 8].numpy()  # linear interpolation along z: evenly spaced steps
    np.testing.assert_allclose(ramp, np.linspace(0, 5, 16), atol=1e-4)
    assert set(torch.unique(resampled_label).tolist()) == {0, 1}  # nearest neighbour keeps classes
    volume_mm3 = resampled_label.sum().item()  # 1 mm³ voxels now
    assert abs(volume_mm3 - label.sum() * np.prod(spacing)) < 0.35 * label.sum() * np.prod(spacing)


def test_reorientation_to_ras_flips_an_las_image(tmp_path):
    image, label = volume((6, 5, 4), 0)
    write_case(tmp_path, "las", image, label, affine=np.diag([-1.0, 1.0, 1.0, 1.0]))
    flipped, flipped_label = FolderDataset(tmp_path, normalize=False)[0]
    np.testing.assert_array_equal(flipped[0].numpy(), image[::-1])
    np.testing.assert_array_equal(flipped_label[0].numpy(), label[::-1])
    kept, _ = FolderDataset(tmp_path, normalize=False, orientation=None)[0]
    np.testing.assert_array_equal(kept[0].numpy(), image)


def test_a_2d_slice_stored_one_voxel_thick_comes_back_2d_and_padded_to_size(tmp_path):
    image, label = volume((30, 20, 1), 0)
    write_case(tmp_path, "slice", image, label, affine=np.diag([0.7, 0.7, 5.0, 1.0]))
    dataset = FolderDataset(tmp_path, spatial_size=(24, 24), normalize=False)
    padded, padded_label = dataset[0]
    assert padded.shape == padded_label.shape == (1, 24, 24)
    np.testing.assert_array_equal(padded[0, :, 2:22].numpy(), image[3:27, :, 0])  # centre crop/pad
    np.testing.assert_array_equal(padded_label[0, :, 2:22].numpy(), label[3:27, :, 0])
    assert dataset.spacing == pytest.approx((0.7, 0.7))


def test_cases_size_and_a_seeded_train_val_split(tmp_path):
    for i in range(10):
        write_case(tmp_path, f"p{i:02d}", *volume((4, 4, 4), i))
    train = FolderDataset(tmp_path, split="train", val_fraction=0.3, split_seed=5, seed=1)
    val = FolderDataset(tmp_path, split="val", val_fraction=0.3, split_seed=5, seed=2)
    assert len(val) == 3 and len(train) == 7
    assert set(train.cases) | set(val.cases) == {f"p{i:02d}" for i in range(10)}
    assert not set(train.cases) & set(val.cases)
    smaller = FolderDataset(tmp_path, split="train", val_fraction=0.3, split_seed=5, size=4, seed=3)
    assert len(smaller) == 4 and set(smaller.cases) <= set(train.cases)
    assert FolderDataset(tmp_path, cases=["p03", "p07"]).cases == ("p03", "p07")


def test_a_csv_lists_cases_with_their_own_paths(tmp_path):
    image, label = volume((5, 5, 5), 0)
    (tmp_path / "scans").mkdir()
    nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), str(tmp_path / "scans" / "a_t1.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), str(tmp_path / "scans" / "a_seg.nii.gz"))
    (tmp_path / "cases.csv").write_text("case,image,label\nsubject_a,scans/a_t1.nii.gz,scans/a_seg.nii.gz\n")
    dataset = FolderDataset(tmp_path, csv="cases.csv", normalize=False)
    assert dataset.cases == ("subject_a",)
    np.testing.assert_array_equal(dataset[0][1][0].numpy(), label)


@pytest.mark.parametrize("outside", ["../elsewhere/a_t1.nii.gz", "ABSOLUTE", "scans/link/a_t1.nii.gz"])
def test_a_csv_naming_files_outside_the_root_is_refused_unless_allowed(tmp_path, outside):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (root / "scans").mkdir(parents=True)
    elsewhere.mkdir()
    image, label = volume((5, 5, 5), 0)
    nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), str(elsewhere / "a_t1.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), str(root / "scans" / "a_seg.nii.gz"))
    (root / "scans" / "link").symlink_to(elsewhere)  # a link inside the root leading out
    outside = str(elsewhere / "a_t1.nii.gz") if outside == "ABSOLUTE" else outside
    (root / "cases.csv").write_text(f"case,image,label\na,{outside},scans/a_seg.nii.gz\n")
    with pytest.raises(MedtuneError, match="line 2: the image .* lies outside the dataset root"):
        FolderDataset(root, csv="cases.csv")
    dataset = FolderDataset(root, csv="cases.csv", allow_outside_root=True, normalize=False)
    np.testing.assert_array_equal(dataset[0][0][0].numpy(), image)


def test_a_mismatched_image_label_pair_names_the_case_and_both_shapes(tmp_path):
    write_case(tmp_path, "fine", *volume((8, 8, 8), 0))
    image, _ = volume((8, 8, 8), 1)
    _, label = volume((8, 8, 6), 1)
    write_case(tmp_path, "patient_7", image, label)
    with pytest.raises(MedtuneError, match=r"patient_7.*\(8, 8, 8\).*\(8, 8, 6\)"):
        FolderDataset(tmp_path)
    dataset = FolderDataset(tmp_path, validate=False)  # the check at read time catches it too
    with pytest.raises(MedtuneError, match=r"patient_7.*\(8, 8, 8\).*\(8, 8, 6\)"):
        dataset[dataset.cases.index("patient_7")]


def test_a_label_on_another_grid_is_an_affine_error(tmp_path):
    image, label = volume((6, 6, 6), 0)
    write_case(tmp_path, "shifted", image, label, label_affine=np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(MedtuneError, match="'shifted'.*different voxel-to-world affines"):
        FolderDataset(tmp_path)


def test_non_integer_labels_are_an_error_naming_the_case(tmp_path):
    image, label = volume((6, 6, 6), 0)
    write_case(tmp_path, "smooth", image, label.astype(np.float32) * 0.5)
    with pytest.raises(MedtuneError, match="'smooth'.*non-integer values"):
        FolderDataset(tmp_path)[0]


def test_an_empty_folder_says_which_patterns_were_searched(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(MedtuneError, match=r"no images found.*\*\.nii\.gz, \*\.nii and DICOM.*notes\.txt"):
        FolderDataset(tmp_path)


def test_a_missing_label_names_the_image(tmp_path):
    write_case(tmp_path, "has_label", *volume((4, 4, 4), 0))
    image, _ = volume((4, 4, 4), 1)
    nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), str(tmp_path / "images" / "lonely.nii.gz"))
    with pytest.raises(MedtuneError, match=r"1 image\(s\) without a label.*'lonely'"):
        FolderDataset(tmp_path)


@pytest.mark.parametrize("make,kwargs,message", [
    (lambda root: None, {"root": "missing"}, "does not exist"),
    (lambda root: (root / "data").mkdir(), {"root": "data"}, "no image folder"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)), {"split": "test"}, "split must be one of"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)), {"size": 2}, "has 1 case"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)), {"cases": ["b"]}, r"unknown case\(s\) \['b'\]"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)), {"split": "val"}, "at least 2 cases"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)), {"target_spacing": -1}, "target_spacing must be"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)), {"spatial_size": (4.5, 4)}, "spatial_size must be"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)), {"csv": "list.csv"}, "does not exist; check csv"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)), {"orientation": "RRS"}, "three axis codes"),
    (lambda root: (root / "images").mkdir() or (root / "images" / "a.nii.gz").write_text("junk"),
     {}, "no label folder"),
    (lambda root: write_case(root, "a", *volume((4, 4, 4), 0)) or (root / "images" / "a.nii.gz").write_text("junk"),
     {}, "'a': could not read"),
])
def test_bad_folders_and_arguments(tmp_path, make, kwargs, message):
    make(tmp_path)
    kwargs = {"root": tmp_path, **kwargs}
    if kwargs["root"] != tmp_path:
        kwargs["root"] = tmp_path / kwargs["root"]
    with pytest.raises(MedtuneError, match=message):
        FolderDataset(**kwargs)


def test_a_dicom_series_without_pydicom_says_to_install_it(tmp_path, monkeypatch):
    write_case(tmp_path, "a", *volume((4, 4, 4), 0))
    (tmp_path / "images" / "b").mkdir()  # a DICOM series folder
    (tmp_path / "images" / "b" / "1.dcm").write_bytes(b"")
    nibabel.save(nibabel.Nifti1Image(volume((4, 4, 4), 1)[1], np.eye(4)), str(tmp_path / "labels" / "b.nii.gz"))
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *args: None if name == "pydicom" else real_find_spec(name, *args))
    with pytest.raises(MedtuneError, match="'b' is a DICOM series folder.*pip install pydicom"):
        FolderDataset(tmp_path)


def write_dicom_series(folder: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """One CT file per slice of ``volume`` [slices, rows, columns]; ``spacing`` in that order."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series = generate_uid()
    for k, pixels in enumerate(volume):
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.dataset.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = ds.SeriesInstanceUID = series
        ds.Modality, ds.InstanceNumber = "CT", k + 1
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[2]], spacing[0]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = pixels.astype(np.int16).tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)


def test_a_dicom_series_with_a_nifti_label_on_its_grid(tmp_path):
    slices = np.arange(4 * 6 * 5).reshape(4, 6, 5)  # 4 slices of 6 rows x 5 columns
    write_dicom_series(tmp_path / "images" / "series1", slices, (2.0, 0.5, 0.7))
    # MONAI reads a series as (column x, row y, slice z) in RAS: x and y point left and posterior
    grid = slices.transpose(2, 1, 0)
    (tmp_path / "labels").mkdir()
    nibabel.save(nibabel.Nifti1Image((grid % 3).astype(np.uint8), np.diag([-0.7, -0.5, 2.0, 1.0])),
                 str(tmp_path / "labels" / "series1.nii.gz"))
    dataset = FolderDataset(tmp_path, normalize=False)
    image, label = dataset[0]
    assert image.shape == label.shape == (1, 5, 6, 4)
    np.testing.assert_array_equal(image[0].numpy(), grid[::-1, ::-1])  # reoriented to RAS
    np.testing.assert_array_equal(label[0].numpy(), grid[::-1, ::-1] % 3)
    assert dataset.spacing == pytest.approx((0.7, 0.5, 2.0))


def test_an_unreadable_file_found_at_read_time_names_the_case(tmp_path):
    write_case(tmp_path, "broken", *volume((4, 4, 4), 0))
    (tmp_path / "labels" / "broken.nii.gz").write_bytes(b"not a nifti file")
    dataset = FolderDataset(tmp_path, validate=False)
    with pytest.raises(MedtuneError, match="'broken': could not read .*broken.nii.gz with MONAI's NibabelReader"):
        dataset[0]
