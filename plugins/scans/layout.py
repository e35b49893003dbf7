"""The raw layout of a segmentation dataset on disk (Medical Segmentation Decathlon / nnU-Net),
read and checked so that a broken case fails early with its name and the fix.

Layout (Isensee2021; the nnU-Net v2 ``dataset.json`` or the Decathlon's)::

    root/
      dataset.json        nnU-Net v2: "channel_names" {"0": "CT", "1": "T2"}, "labels"
                          {"background": 0, "liver": 1}, "numTraining", "file_ending";
                          Decathlon: "modality" {"0": "CT"}, "labels" {"0": "background", ...},
                          "training" [{"image": "./imagesTr/x.nii.gz", "label": ...}], "test"
      imagesTr/           CASE_0000.nii.gz, CASE_0001.nii.gz, ... one 3D file per channel
                          (Decathlon: CASE.nii.gz, 4D with the channels on the last axis)
      labelsTr/           CASE.nii.gz, one 3D map of the label values
      imagesTs/           optional, images without labels
      groups.csv          optional, header ``case,patient[,site]``: cases of one patient are never
                          split between training and validation (unlisted cases: own patient)

Voxel data is read with nibabel in the file's own voxel order: nothing is reoriented, and a
prediction is written back with the input's affine and header. Every check raises
:class:`ScanDataError` in one line naming the case and file, and saying what to do.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtune.errors import MedtuneError
from medtune.study.files import replacing

#: File endings this reader handles (nibabel's NIfTI).
NIFTI_ENDINGS = (".nii.gz", ".nii")

#: Two voxel grids agree when their affines differ by less than this fraction of the voxel size.
GRID_TOLERANCE = 1e-4

#: A channel file's name: the case name, an underscore, a four-digit channel index.
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

#: Largest label value kept (label maps are returned as int16).
_MAX_LABEL = np.iinfo(np.int16).max


class ScanDataError(MedtuneError, ValueError):
    """A dataset folder, a case or a prediction input is not usable; the message names it and
    says what to do."""


@dataclass(frozen=True)
class ScanCase:
    """One case: its image files (one per channel in ``dataset.json`` order, or a single 4D
    Decathlon file holding all channels), its label map (``None`` for test or prediction
    inputs), its patient (``groups.csv``; the case name by default) and its site."""

    name: str
    images: tuple[Path, ...]
    label: Path | None
    patient: str
    site: str | None = None


@dataclass(frozen=True)
class ScanDataset:
    """A dataset folder as described by its ``dataset.json``; labels map name -> value with the
    background (value 0) included, in value order."""

    root: Path
    name: str
    channels: tuple[str, ...]
    labels: dict[str, int]
    training: tuple[ScanCase, ...]
    test: tuple[ScanCase, ...]
    file_ending: str = ".nii.gz"

    def case(self, name: str) -> ScanCase:
        """The training or test case called ``name``; a :class:`ScanDataError` when none is."""
        for case in (*self.training, *self.test):
            if case.name == name:
                return case
        known = ", ".join(case.name for case in self.training[:5])
        raise ScanDataError(
            f"dataset {self.name!r} has no case {name!r}; its training cases are {known}"
            f"{' ...' if len(self.training) > 5 else ''}"
        )

    @property
    def foreground(self) -> dict[str, int]:
        """The labels without the background (value 0)."""
        return {name: value for name, value in self.labels.items() if value != 0}


@dataclass
class Volume:
    """A case's image: ``array`` float32 [C, X, Y, Z] in the file's voxel order, the 4x4
    voxel-to-world ``affine`` (mm) and nibabel ``header`` of channel 0 (to write predictions
    with)."""

    array: np.ndarray
    affine: np.ndarray
    header: Any

    @property
    def spacing(self) -> tuple[float, float, float]:
        """The voxel size in mm along each array axis (column norms of the affine)."""
        return _spacing(self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial shape (X, Y, Z)."""
        return tuple(int(n) for n in self.array.shape[1:4])


def load_dataset(root: str | Path) -> ScanDataset:
    """Read and check a dataset folder (layout in the module documentation).

    Checks ``dataset.json`` (present, valid, its keys), that every training case has all its
    channel files and a label, that the number of cases matches ``numTraining``, and
    ``groups.csv``. Voxel data is checked when a case is read (:func:`read_case`).

    Raises:
        ScanDataError: naming the file, key or case that is wrong, and the fix.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ScanDataError(
            f"the dataset folder {root} does not exist; point at the folder that holds "
            "dataset.json, imagesTr/ and labelsTr/ (medtune sample DIR writes an example)"
        )
    description = _read_description(root)
    channels = _channels(description)
    labels = _labels(description)
    name = str(description.get("name") or root.name)
    if "channel_names" in description:
        file_ending = _file_ending(description)
        training = _scan_training(root, len(channels), file_ending)
        test_folder = root / "imagesTs"
        test = (_channel_cases(test_folder, len(channels), file_ending, "imagesTs", root)
                if test_folder.is_dir() and _has_files(test_folder, file_ending) else [])
        declared = _integer_key(description, "numTraining")
    else:
        file_ending = ".nii.gz"
        training = _listed_cases(root, description, "training", len(channels))
        test = _listed_cases(root, description, "test", len(channels))
        declared = _integer_key(description, "numTraining") if "numTraining" in description else None
    if not training:
        raise ScanDataError(
            f"dataset {name!r} has no training cases; put CASE_0000{file_ending} files in "
            f"{root / 'imagesTr'} and CASE{file_ending} label maps in {root / 'labelsTr'}"
        )
    if declared is not None and declared != len(training):
        raise ScanDataError(
            f"dataset.json says numTraining={declared} but {len(training)} training cases were "
            f"found; set numTraining to {len(training)} or add the missing cases"
        )
    seen: set[str] = set()
    for case in (*training, *test):
        if case.name in seen:
            raise ScanDataError(f"case {case.name!r} appears twice in dataset {name!r}; give every "
                                "case (training and test) its own name")
        seen.add(case.name)
    groups = _read_groups(root, seen)
    training = [_grouped(case, groups) for case in training]
    test = [_grouped(case, groups) for case in test]
    return ScanDataset(root, name, channels, labels, tuple(training), tuple(test), file_ending)


def read_case(case: ScanCase, dataset: ScanDataset) -> tuple[Volume, np.ndarray | None]:
    """The image of ``case`` (float32 [C, X, Y, Z]) and its label map (int16 [X, Y, Z], or
    ``None`` when the case has none).

    A trailing axis of length 1 is dropped (X, Y, Z, 1 is 3D) and a 2D file is one slice.

    Raises:
        ScanDataError: naming the case when a file cannot be read, channel files or the label
            lie on different voxel grids (shape, or affine beyond :data:`GRID_TOLERANCE` of a
            voxel), a file is 4D where a 3D one is expected, an image holds NaN/Inf voxels, or
            the label holds values that ``dataset.json`` does not list.
    """
    channels = len(dataset.channels)
    arrays: list[np.ndarray] = []
    first = _load(case.images[0], case.name)
    if len(case.images) == 1 and channels > 1:
        data = _trailing_ones_dropped(_voxels(first, case.images[0], case.name))
        if data.ndim != 4 or data.shape[3] != channels:
            raise ScanDataError(
                f"case {case.name!r}: {_shown(case.images[0], dataset.root)} has shape "
                f"{data.shape} but dataset.json lists {channels} channels; a single image file "
                f"must be 4D with the channels on its last axis (X, Y, Z, {channels}), or store "
                f"one 3D file per channel ({case.name}_0000, {case.name}_0001, ...)"
            )
        arrays = [np.ascontiguousarray(data[..., c]) for c in range(channels)]
    else:
        reference = (first.affine, case.images[0])
        for index, path in enumerate(case.images):
            image = first if index == 0 else _load(path, case.name)
            data = _three_d(_voxels(image, path, case.name), path, case, dataset.root)
            if index:
                _check_same_grid(case, dataset.root, (path, data.shape, image.affine),
                                 (reference[1], arrays[0].shape, reference[0]),
                                 f"resample every channel onto the grid of {case.name}_0000")
            arrays.append(data)
    for index, data in enumerate(arrays):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            path = case.images[index if len(case.images) > 1 else 0]
            where = "" if len(case.images) > 1 else f" (channel {index})"
            raise ScanDataError(
                f"case {case.name!r}: {_shown(path, dataset.root)}{where} holds {bad} NaN/Inf "
                f"voxel(s); replace them with finite values (e.g. the image's minimum) before use"
            )
    volume = Volume(np.stack(arrays).astype(np.float32, copy=False),
                    np.asarray(first.affine, dtype=np.float64), first.header)
    if case.label is None:
        return volume, None
    label, _ = _read_label(case, dataset, grid=(case.images[0], volume.shape, volume.affine))
    return volume, label


def check_foreground(dataset: ScanDataset,
                     label_voxels: Mapping[str, int] | None = None) -> dict[str, int]:
    """The number of voxels of each foreground label over the training cases; an error when
    there are none at all (nothing to learn).

    Args:
        dataset: the dataset; its training label maps are read unless ``label_voxels`` is given.
        label_voxels: voxel counts by label name already computed (e.g. by a fingerprint), to
            apply the check without reading the labels again.

    Raises:
        ScanDataError: no training label map holds a foreground voxel.
    """
    if label_voxels is None:
        totals = {name: 0 for name in dataset.foreground}
        names = {value: name for name, value in dataset.foreground.items()}
        for case in dataset.training:
            _, counts = _read_label(case, dataset)
            for value, name in names.items():
                totals[name] += int(counts[value]) if value < len(counts) else 0
    else:
        totals = {name: int(label_voxels.get(name, 0)) for name in dataset.foreground}
    if sum(totals.values()) == 0:
        listed = ", ".join(f"{name}={value}" for name, value in dataset.foreground.items())
        raise ScanDataError(
            f"dataset {dataset.name!r}: none of the {len(dataset.training)} training label maps "
            f"holds a foreground voxel ({listed or 'no foreground label in dataset.json'}); check "
            "that labelsTr/ holds the label maps of these images, with the values dataset.json lists"
        )
    return totals


def find_inputs(folder: str | Path, channels: int, file_ending: str = ".nii.gz") -> list[ScanCase]:
    """The cases of a prediction input folder: ``CASE_0000<ending>``, ``CASE_0001<ending>``, ...
    (one file per channel), in case-name order, without labels.

    Raises:
        ScanDataError: the folder is missing or holds no input, a file is not named
            ``CASE_XXXX<ending>``, or a case lacks a channel.
    """
    folder = Path(folder).expanduser()
    if int(channels) < 1:
        raise ScanDataError(f"find_inputs: channels must be >= 1, got {channels}")
    if not folder.is_dir():
        raise ScanDataError(f"the input folder {folder} does not exist; point at the folder "
                            f"holding the images to segment (CASE_0000{file_ending}, ...)")
    if not _has_files(folder, file_ending):
        raise ScanDataError(
            f"no input images in {folder}: name them CASE_0000{file_ending}"
            + (f" ... CASE_{channels - 1:04d}{file_ending} (one file per channel)" if channels > 1 else "")
        )
    return _channel_cases(folder, channels, file_ending, folder.name, folder)


def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray,
                 header: Any = None) -> Path:
    """Write ``array`` as NIfTI to ``path`` with the voxel-to-world ``affine`` and, when given,
    a copy of ``header`` (e.g. the input image's, so a prediction keeps its metadata).

    Integer and boolean arrays (label maps) are stored as the smallest of uint8, int16 and
    int32 that holds their values (uint8 below 256); others as float32. The file is written to
    a temporary name in the same folder then renamed, so an interrupted write leaves no
    half-written file under ``path``.

    Raises:
        ScanDataError: ``path`` does not end with .nii.gz or .nii.
    """
    import nibabel as nib

    path = Path(path)
    ending = next((e for e in NIFTI_ENDINGS if path.name.endswith(e)), None)
    if ending is None:
        raise ScanDataError(f"cannot write {path}: volumes are written as NIfTI, so the name "
                            f"must end with .nii.gz or .nii")
    data = np.asarray(array)
    if data.dtype == bool or np.issubdtype(data.dtype, np.integer):
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        dtype = next(t for t in (np.uint8, np.int16, np.int32)
                     if np.iinfo(t).min <= low and high <= np.iinfo(t).max)
    else:
        dtype = np.float32
    data = data.astype(dtype, copy=False)
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64),
                            header=header.copy() if header is not None else None)
    image.set_data_dtype(dtype)
    image.header.set_slope_inter(1.0, 0.0)  # the stored values are the values (no rescaling)
    if header is None:
        image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, suffix=ending) as temporary:  # nibabel picks the format by the name
        nib.save(image, temporary)
    return path


# dataset.json


def _read_description(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise ScanDataError(
            f"no dataset.json in {root}; write one with \"channel_names\", \"labels\", "
            "\"numTraining\" and \"file_ending\" (nnU-Net v2) or the Decathlon's \"modality\", "
            "\"labels\" and \"training\" (medtune sample DIR writes an example)"
        )
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ScanDataError(f"{path} is not valid JSON ({error}); fix the file") from error
    if not isinstance(description, dict):
        raise ScanDataError(f"{path} must hold a JSON object with the dataset's keys")
    return description


def _require(description: dict, key: str, hint: str) -> Any:
    if key not in description:
        raise ScanDataError(f"dataset.json lacks the key {key!r}; add it, e.g. {hint}")
    return description[key]


def _channels(description: dict) -> tuple[str, ...]:
    key = "channel_names" if "channel_names" in description or "modality" not in description else "modality"
    channels = _require(description, key, '"channel_names": {"0": "CT"}')
    indices = [str(i) for i in range(len(channels))] if isinstance(channels, dict) else None
    if not channels or indices is None or sorted(channels, key=str) != sorted(indices):
        raise ScanDataError(
            f"dataset.json {key!r} must map the channel indices \"0\", \"1\", ... to names, "
            f"e.g. {{\"0\": \"CT\", \"1\": \"T2\"}}; got {channels!r}"
        )
    return tuple(str(channels[i]) for i in indices)


def _labels(description: dict) -> dict[str, int]:
    raw = _require(description, "labels", '"labels": {"background": 0, "organ": 1}')
    if not isinstance(raw, dict) or not raw:
        raise ScanDataError(f'dataset.json "labels" must map label names to values, e.g. '
                            f'{{"background": 0, "organ": 1}}; got {raw!r}')
    decathlon = all(str(k).strip().isdigit() and isinstance(v, str) for k, v in raw.items())
    pairs = [(v, int(k)) for k, v in raw.items()] if decathlon else list(raw.items())
    labels: dict[str, int] = {}
    for name, value in pairs:
        if isinstance(value, (list, tuple)):
            raise ScanDataError(
                f'dataset.json "labels": {name!r} is a region (a list of values); region-based '
                "labels are not supported, give each structure its own value"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > _MAX_LABEL:
            raise ScanDataError(f'dataset.json "labels": {name!r} has the value {value!r}; label '
                                f"values must be integers from 0 to {_MAX_LABEL}")
        labels[str(name)] = value
    if "ignore" in labels:
        raise ScanDataError('dataset.json "labels" has an "ignore" label (sparse annotation); it '
                            "is not supported, remove it and label every voxel")
    values = list(labels.values())
    if len(set(values)) != len(values):
        twice = sorted({v for v in values if values.count(v) > 1})
        raise ScanDataError(f'dataset.json "labels" gives the value(s) {twice} to more than one '
                            "name; give each label its own value")
    if 0 not in values:
        raise ScanDataError('dataset.json "labels" lacks the background (value 0); add '
                            '"background": 0')
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def _file_ending(description: dict) -> str:
    ending = _require(description, "file_ending", '"file_ending": ".nii.gz"')
    if ending not in NIFTI_ENDINGS:
        raise ScanDataError(f'dataset.json "file_ending" is {ending!r}; only NIfTI '
                            f"({' or '.join(NIFTI_ENDINGS)}) is read: convert the images to .nii.gz")
    return ending


def _integer_key(description: dict, key: str) -> int:
    value = _require(description, key, f'"{key}": 10')
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScanDataError(f"dataset.json {key!r} must be an integer, got {value!r}")
    return value


# case files


def _has_files(folder: Path, file_ending: str) -> bool:
    return any(_is_data_file(p, file_ending) for p in folder.iterdir())


def _is_data_file(path: Path, file_ending: str) -> bool:
    return path.name.endswith(file_ending) and not path.name.startswith(".") and path.is_file()


def _channel_cases(folder: Path, channels: int, file_ending: str, where: str,
                   root: Path) -> list[ScanCase]:
    """The cases of a folder of ``CASE_XXXX<ending>`` channel files, each with all channels."""
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if not _is_data_file(path, file_ending):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(file_ending)])
        if match is None:
            raise ScanDataError(
                f"{_shown(path, root)} is not named CASE_XXXX{file_ending} (XXXX the channel, "
                f"0000 for the first); rename it, e.g. to {path.name[: -len(file_ending)]}_0000{file_ending}"
            )
        channel = int(match["channel"])
        if channel >= channels:
            raise ScanDataError(
                f"{_shown(path, root)} is channel {channel} but dataset.json lists {channels} "
                f"channel(s) (0000 to {channels - 1:04d}); remove the file or add the channel"
            )
        found.setdefault(match["case"], {})[channel] = path
    cases = []
    for name, files in found.items():
        missing = [c for c in range(channels) if c not in files]
        if missing:
            raise ScanDataError(
                f"case {name!r}: {where}/{name}_{missing[0]:04d}{file_ending} (channel "
                f"{missing[0]}) is missing; every case needs one file per channel"
            )
        cases.append(ScanCase(name, tuple(files[c] for c in range(channels)), None, name))
    return cases


def _scan_training(root: Path, channels: int, file_ending: str) -> list[ScanCase]:
    images, labels = root / "imagesTr", root / "labelsTr"
    for folder in (images, labels):
        if not folder.is_dir():
            raise ScanDataError(f"no {folder.name}/ folder in {root}; the training images go in "
                                f"imagesTr/ (CASE_0000{file_ending}) and their labels in labelsTr/ "
                                f"(CASE{file_ending})")
    cases = _channel_cases(images, channels, file_ending, "imagesTr", root)
    names = {case.name for case in cases}
    result = []
    for case in cases:
        label = labels / f"{case.name}{file_ending}"
        if not label.is_file():
            raise ScanDataError(
                f"case {case.name!r}: imagesTr/ holds its image but labelsTr/{label.name} is "
                f"missing; add the label map, or move the image to imagesTs/ if it has none"
            )
        result.append(ScanCase(case.name, case.images, label, case.name))
    for path in sorted(labels.iterdir()):
        if _is_data_file(path, file_ending) and path.name[: -len(file_ending)] not in names:
            raise ScanDataError(
                f"labelsTr/{path.name} has no image: imagesTr/{path.name[: -len(file_ending)]}"
                f"_0000{file_ending} is missing; add the image or remove the label"
            )
    return result


def _listed_cases(root: Path, description: dict, key: str, channels: int) -> list[ScanCase]:
    """The Decathlon's explicit case list: "training" (image and label) or "test" (images)."""
    if key == "training":
        entries = _require(description, key, '"training": [{"image": "./imagesTr/x.nii.gz", '
                                             '"label": "./labelsTr/x.nii.gz"}]')
    else:
        entries = description.get(key, [])
    if not isinstance(entries, list):
        raise ScanDataError(f"dataset.json {key!r} must be a list of cases, got {type(entries).__name__}")
    cases = []
    for number, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else entry
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(image, str) or (key == "training" and not isinstance(label, str)):
            raise ScanDataError(
                f"dataset.json {key!r} entry {number} is {entry!r}; it must be "
                + ('{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}'
                   if key == "training" else '"./imagesTs/x.nii.gz"')
            )
        path = root / image
        ending = next((e for e in NIFTI_ENDINGS if path.name.endswith(e)), None)
        if ending is None:
            raise ScanDataError(f"dataset.json {key!r} entry {number}: {image!r} is not a NIfTI "
                                "file (.nii.gz or .nii); convert it")
        name = path.name[: -len(ending)]
        if path.is_file():
            images: tuple[Path, ...] = (path,)
        else:  # nnU-Net v1 style: the list names CASE.nii.gz, the files are CASE_XXXX.nii.gz
            split = tuple(path.with_name(f"{name}_{c:04d}{ending}") for c in range(channels))
            if not all(p.is_file() for p in split):
                raise ScanDataError(f"case {name!r}: {image} (listed in dataset.json {key!r}) "
                                    "does not exist; add the file or fix the entry")
            images = split
        label_path = root / label if label is not None else None
        if label_path is not None and not label_path.is_file():
            raise ScanDataError(f"case {name!r}: its label {label} (listed in dataset.json "
                                f"{key!r}) does not exist; add the label map or fix the entry")
        cases.append(ScanCase(name, images, label_path, name))
    return cases


def _read_groups(root: Path, known: set[str]) -> dict[str, tuple[str, str | None]]:
    path = root / "groups.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("case", "patient") if c not in columns]
        if missing:
            raise ScanDataError(f"groups.csv lacks the column(s) {', '.join(missing)}; its header "
                                f"must be case,patient[,site] (found {','.join(columns) or 'none'})")
        groups: dict[str, tuple[str, str | None]] = {}
        for line, row in enumerate(reader, start=2):
            row = {str(k).strip(): (v or "").strip() for k, v in row.items() if k is not None}
            case, patient = row["case"], row["patient"]
            if case not in known:
                raise ScanDataError(f"groups.csv line {line}: no case {case!r} in the dataset; "
                                    "fix the name or remove the line")
            if not patient:
                raise ScanDataError(f"groups.csv line {line}: case {case!r} has no patient; "
                                    "fill in the patient column")
            if case in groups:
                raise ScanDataError(f"groups.csv line {line}: case {case!r} is listed twice; "
                                    "keep one line per case")
            groups[case] = (patient, row.get("site") or None)
    return groups


def _grouped(case: ScanCase, groups: dict[str, tuple[str, str | None]]) -> ScanCase:
    patient, site = groups.get(case.name, (case.name, None))
    return ScanCase(case.name, case.images, case.label, patient, site)


# voxel data


def _load(path: Path, case: str) -> Any:
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as error:  # a corrupt or truncated header: name the case
        raise ScanDataError(f"case {case!r}: cannot read {path} ({type(error).__name__}: "
                            f"{error}); check that it is a valid NIfTI file") from error


def _voxels(image: Any, path: Path, case: str, dtype: Any = np.float32) -> np.ndarray:
    try:
        return np.asarray(image.dataobj, dtype=dtype) if dtype is not None else np.asanyarray(image.dataobj)
    except Exception as error:  # truncated or corrupt voxel data
        raise ScanDataError(f"case {case!r}: cannot read the voxels of {path} "
                            f"({type(error).__name__}: {error}); the file is damaged, write it "
                            "again") from error


def _trailing_ones_dropped(data: np.ndarray) -> np.ndarray:
    """A 2D array as one slice; axes of length 1 after the third dropped."""
    if data.ndim == 2:
        return data[..., None]
    return data.reshape(data.shape[:3] + tuple(n for n in data.shape[3:] if n != 1))


def _three_d(data: np.ndarray, path: Path, case: ScanCase, root: Path) -> np.ndarray:
    data = _trailing_ones_dropped(data)
    if data.ndim != 3:
        raise ScanDataError(
            f"case {case.name!r}: {_shown(path, root)} is {data.ndim}D with shape {data.shape} "
            "where a 3D volume is expected; store each channel as its own 3D file "
            f"({case.name}_0000, {case.name}_0001, ...) and the label as one 3D map"
        )
    return data


def _read_label(case: ScanCase, dataset: ScanDataset,
                grid: tuple[Path, tuple[int, ...], np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The label map (int16) of ``case`` and its voxel count per value, checked against the
    image's grid (``(path, shape, affine)``) when given and against ``dataset.labels``."""
    path = case.label
    image = _load(path, case.name)
    raw = _three_d(_voxels(image, path, case.name, dtype=None), path, case, dataset.root)
    if grid is not None:
        _check_same_grid(case, dataset.root, (path, raw.shape, image.affine), grid,
                         "resample the label onto the image's grid (nearest neighbour) or give "
                         "it the image's header")
    shown = _shown(path, dataset.root)
    if np.issubdtype(raw.dtype, np.floating):
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        if bad:
            raise ScanDataError(f"case {case.name!r}: the label {shown} holds {bad} NaN/Inf "
                                "voxel(s); a label map holds only the label values")
        fractional = raw != np.round(raw)
        if fractional.any():
            raise ScanDataError(
                f"case {case.name!r}: the label {shown} holds non-integer values (e.g. "
                f"{raw[fractional].flat[0]:g}); was it resampled with linear interpolation? use "
                "nearest neighbour"
            )
    low, high = (raw.min(), raw.max()) if raw.size else (0, 0)
    if 0 <= low and high <= _MAX_LABEL:
        label = raw.astype(np.int16)
        counts = np.bincount(label.ravel())
        present = np.flatnonzero(counts)
    else:
        label, counts, present = None, None, np.unique(raw)
    unknown = sorted(set(int(v) for v in present) - set(dataset.labels.values()))
    if unknown:
        listed = ", ".join(f"{name}={value}" for name, value in dataset.labels.items())
        values = ", ".join(str(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ScanDataError(
            f"case {case.name!r}: the label {shown} holds the value(s) {values}, which dataset.json "
            f'"labels" does not list ({listed}); add them to "labels" or fix the label map'
        )
    return label, counts


def _check_same_grid(case: ScanCase, root: Path,
                     this: tuple[Path, tuple[int, ...], np.ndarray],
                     reference: tuple[Path, tuple[int, ...], np.ndarray], fix: str) -> None:
    """An error naming ``case`` unless both (path, shape, affine) describe one voxel grid."""
    path, shape, affine = this
    reference_path, reference_shape, reference_affine = reference
    names = f"{_shown(path, root)} and {_shown(reference_path, root)}"
    if tuple(shape) != tuple(reference_shape):
        raise ScanDataError(f"case {case.name!r}: {names} have different shapes ({tuple(shape)} "
                            f"vs {tuple(reference_shape)}); {fix}")
    a, b = np.asarray(affine, dtype=np.float64), np.asarray(reference_affine, dtype=np.float64)
    tolerance = GRID_TOLERANCE * max(_spacing(b))
    linear = np.abs(a[:3, :3] - b[:3, :3]).max()
    origin = np.abs(a[:3, 3] - b[:3, 3]).max()
    if linear > tolerance or origin > tolerance + 1e-6 * np.abs(b[:3, 3]).max():
        same_spacing = np.abs(np.subtract(_spacing(a), _spacing(b))).max() <= tolerance
        raise ScanDataError(
            f"case {case.name!r}: {names} have different affines (spacing "
            f"{_numbers(_spacing(a), ' x ')} mm vs {_numbers(_spacing(b), ' x ')} mm, origin "
            f"({_numbers(a[:3, 3], ', ')}) vs ({_numbers(b[:3, 3], ', ')}) mm"
            f"{', orientation differs' if linear > tolerance and same_spacing else ''}); {fix}"
        )


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def _numbers(values: Any, separator: str) -> str:
    return separator.join(f"{float(v):.6g}" for v in values)


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside, else as given."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
