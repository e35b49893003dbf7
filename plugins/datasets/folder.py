"""The ``folder`` dataset: the user's own images and label maps (NIfTI, or DICOM series) on disk.

Layout (the default; folder names are arguments)::

    root/
      images/
        case001.nii.gz        one image per case: .nii.gz or .nii ...
        case002/              ... or a folder holding one DICOM series
      labels/
        case001.nii.gz        the label map of each image, matched by case name
        case002.nii.gz        (.nii.gz, .nii, or a DICOM series folder)

The case name is the file name without ``.nii.gz``/``.nii`` (or the series folder's name).
Instead of the two folders, a CSV file inside ``root`` can list the cases: columns ``image`` and
``label`` (paths relative to ``root``) and, optionally, ``case`` (the name; the image file's by
default).

Images are read with MONAI's loaders (``NibabelReader`` for NIfTI, ``PydicomReader`` for DICOM,
which needs the ``pydicom`` package), then, image and label alike:

1. reoriented to ``orientation`` (``"RAS"`` by default; ``None`` keeps the stored axis order),
2. resampled to ``target_spacing`` in mm when it is given (images trilinear/bilinear, labels
   nearest neighbour), otherwise left at their own spacing,
3. a 3D volume one voxel thick along one axis (a 2D slice stored as ``H x W x 1``) becomes a 2D
   image ``[C, H, W]``,
4. z-scored per channel (``normalize=True``),
5. padded or centre-cropped to ``spatial_size`` when it is given, so that batches stack
   (cropping and padding keep the spacing).

``dataset[i] -> (image [C, *spatial] float32, label [1, *spatial] int64)``. Label maps must hold
non-negative integers (class indices). Each pair is checked when it is read: an image and a
label of different shapes or voxel-to-world affines are an error naming the case, as are
non-integer labels; NIfTI pairs are also checked from their headers when the dataset is built
(``validate=True``), so a bad pair fails at once rather than in the middle of training.

Choosing cases: ``cases`` keeps only the named ones; ``split="train"`` or ``"val"`` keeps one side
of a random split (``val_fraction`` of the cases to validation, drawn with ``split_seed``, the
same split whatever ``seed`` and ``size`` are); ``size`` then keeps that many of them, drawn with
``seed``. Items are in case-name order.

``spacing`` is the voxel spacing in mm of the items as returned (what distance-based metrics
need): ``target_spacing`` when given, else the cases' common spacing (an error when they differ).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Sequence
from csv import DictReader
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medtune.errors import MedtuneError

#: File name endings read as NIfTI images.
NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: The splits ``split`` accepts.
SPLITS = ("all", "train", "val")

#: Anatomical axis labels of MONAI's RAS world space (for ``Orientation``).
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class Case:
    """One case: its name and the paths of its image and label (a file or a DICOM folder)."""

    name: str
    image: Path
    label: Path


class FolderDataset(Dataset):
    """``dataset[i] -> (image [C, *spatial] float32, label [1, *spatial] int64)`` from a folder.

    Args:
        root: the folder holding the data (layout in the module documentation).
        size: keep this many cases (drawn with ``seed``); ``None`` keeps them all.
        seed: the seed of the ``size`` draw.
        images: name of the image folder inside ``root``.
        labels: name of the label folder inside ``root``.
        csv: a CSV file inside ``root`` listing the cases (columns ``image``, ``label`` and
            optionally ``case``); replaces the ``images``/``labels`` folders.
        allow_outside_root: let the CSV name files outside ``root`` (absolute paths, ``..``,
            links leading out); refused by default, so a case list cannot make a study read
            files its dataset folder does not hold.
        cases: keep only these case names.
        split: ``"all"``, or ``"train"``/``"val"`` for one side of a random split.
        val_fraction: share of the cases that go to ``"val"``.
        split_seed: the seed of the split (keep it equal for the train and val datasets).
        target_spacing: resample to this voxel spacing in mm (one value per spatial axis, or
            one value for all); ``None`` keeps each case's spacing.
        orientation: axis codes to reorient to (``"RAS"``); ``None`` keeps the stored order.
        spatial_size: pad or centre-crop every item to this shape (one value per axis of the
            returned items); ``None`` keeps each case's shape.
        normalize: z-score each image channel (mean 0, standard deviation 1).
        cache: keep items in memory after their first read.
        validate: check NIfTI image/label headers (shape, affine) when the dataset is built.
    """

    def __init__(
        self,
        root: str | Path,
        size: int | None = None,
        seed: int = 0,
        images: str = "images",
        labels: str = "labels",
        csv: str | None = None,
        allow_outside_root: bool = False,
        cases: Sequence[str] | None = None,
        split: str = "all",
        val_fraction: float = 0.2,
        split_seed: int = 0,
        target_spacing: float | Sequence[float] | None = None,
        orientation: str | None = "RAS",
        spatial_size: Sequence[int] | None = None,
        normalize: bool = True,
        cache: bool = False,
        validate: bool = True,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MedtuneError(
                f"folder: the dataset root {self.root} does not exist or is not a folder; point "
                f"root at the folder holding {images}/ and {labels}/ (or a CSV listing the cases)"
            )
        if split not in SPLITS:
            raise MedtuneError(f"folder: split must be one of {SPLITS}, got {split!r}")
        if split != "all" and not 0.0 < val_fraction < 1.0:
            raise MedtuneError(f"folder: val_fraction must lie in (0, 1), got {val_fraction}")
        codes = (orientation or "").upper()
        if orientation is not None and not (len(codes) == 3 and all(
                sum(code in pair for code in codes) == 1 for pair in ("LR", "AP", "IS"))):
            raise MedtuneError(
                f"folder: orientation must be three axis codes such as 'RAS' or 'LPS', or None, got {orientation!r}"
            )
        self.target_spacing = _positive_tuple("target_spacing", target_spacing, float)
        self.spatial_size = _positive_tuple("spatial_size", spatial_size, int)
        self.orientation = orientation.upper() if orientation is not None else None
        self.normalize = bool(normalize)
        self.cache = bool(cache)
        self.seed = int(seed)
        self.split = split
        found = (self._read_csv(csv, bool(allow_outside_root)) if csv is not None
                 else self._scan(images, labels))
        chosen = _select(found, cases, split, float(val_fraction), int(split_seed))
        if size is not None:
            if not 1 <= int(size) <= len(chosen):
                raise MedtuneError(
                    f"folder: size={size} but the {split!r} split of {self.root} has {len(chosen)} "
                    f"case(s); ask for between 1 and {len(chosen)} (or size=None for all)"
                )
            keep = np.random.default_rng(self.seed).choice(len(chosen), int(size), replace=False)
            chosen = [chosen[i] for i in sorted(keep)]
        self._cases = chosen
        self.size = len(chosen)
        _check_readers(chosen)
        if validate:
            for case in chosen:
                if not case.image.is_dir() and not case.label.is_dir():
                    _check_nifti_headers(case)
        self._items: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._spacings: dict[int, tuple[float, ...]] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"folder: index {index} out of range for {self.size} cases")
        if index in self._items:
            return self._items[index]
        image, label, spacing = self._read(self._cases[index])
        self._spacings[index] = spacing
        if self.cache:
            self._items[index] = (image, label)
        return image, label

    @property
    def cases(self) -> tuple[str, ...]:
        """The case names, in item order."""
        return tuple(case.name for case in self._cases)

    def case(self, index: int) -> Case:
        """Case ``index``: its name and the paths of its image and label."""
        if not 0 <= index < self.size:
            raise IndexError(f"folder: index {index} out of range for {self.size} cases")
        return self._cases[index]

    def case_spacing(self, index: int) -> tuple[float, ...]:
        """The voxel spacing in mm of item ``index`` as returned (read once if not yet read)."""
        if index not in self._spacings:
            self[index]
        return self._spacings[index]

    @property
    def spacing(self) -> tuple[float, ...]:
        """The voxel spacing in mm of the items as returned, one value per spatial axis.

        ``target_spacing`` when it was given; otherwise the cases' common spacing (every case is
        read once to find it; an error when they differ).
        """
        first = self.case_spacing(0)
        if self.target_spacing is not None:
            return first
        for index in range(1, self.size):
            spacing = self.case_spacing(index)
            if len(spacing) != len(first) or not np.allclose(spacing, first, rtol=1e-3):
                raise MedtuneError(
                    f"folder: the cases have different spacings ({first} mm in "
                    f"{self._cases[0].name!r}, {spacing} mm in {self._cases[index].name!r}); pass "
                    "target_spacing=... to resample them to one spacing"
                )
        return first

    def _scan(self, images: str, labels: str) -> list[Case]:
        image_dir, label_dir = self.root / images, self.root / labels
        if not image_dir.is_dir():
            raise MedtuneError(
                f"folder: no image folder {image_dir}; put the images in {images}/ inside the "
                f"root (case.nii.gz, case.nii or a DICOM series folder per case), or pass csv=..."
            )
        entries = sorted(p for p in image_dir.iterdir() if not p.name.startswith("."))
        found = {}
        for path in entries:
            name = _case_name(path)
            if name is None:
                continue
            if name in found:
                raise MedtuneError(
                    f"folder: case {name!r} has two images, {found[name]} and {path}; keep one"
                )
            found[name] = path
        if not found:
            others = [p.name for p in entries]
            seen = f"; it holds {len(others)} other file(s) such as {others[0]!r}, which are not read" if others else ""
            raise MedtuneError(
                f"folder: no images found in {image_dir} (searched *.nii.gz, *.nii and DICOM series "
                f"sub-folders){seen}"
            )
        if not label_dir.is_dir():
            raise MedtuneError(
                f"folder: no label folder {label_dir}; put one label map per image in {labels}/ "
                "with the image's case name (case.nii.gz)"
            )
        cases, missing = [], []
        for name, image in found.items():
            label = next((p for p in _label_candidates(label_dir, name) if p.exists()), None)
            if label is None:
                missing.append(name)
            else:
                cases.append(Case(name, image, label))
        if missing:
            names = ", ".join(repr(name) for name in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise MedtuneError(
                f"folder: {len(missing)} image(s) without a label in {label_dir}: {names}; each "
                f"image needs {labels}/<case>.nii.gz (or .nii, or a DICOM folder <case>), e.g. "
                f"{label_dir / (missing[0] + '.nii.gz')}"
            )
        return cases

    def _read_csv(self, name: str, allow_outside_root: bool) -> list[Case]:
        path = self.root / name
        if not path.is_file():
            raise MedtuneError(f"folder: the case list {path} does not exist; check csv=")
        with path.open(newline="") as handle:
            rows = list(DictReader(handle))
        if not rows:
            raise MedtuneError(f"folder: the case list {path} has no rows; add one row per case")
        missing_columns = {"image", "label"} - set(rows[0])
        if missing_columns:
            raise MedtuneError(
                f"folder: the case list {path} lacks the column(s) {sorted(missing_columns)}; it "
                f"needs 'image' and 'label' (and optionally 'case'), found {list(rows[0])}"
            )
        cases, names = [], set()
        root = self.root.resolve()
        for line, row in enumerate(rows, start=2):
            image, label = self.root / row["image"], self.root / row["label"]
            for kind, file in (("image", image), ("label", label)):
                if not allow_outside_root and not file.resolve().is_relative_to(root):
                    raise MedtuneError(
                        f"folder: {path} line {line}: the {kind} {row[kind]!r} lies outside the "
                        f"dataset root {self.root}; move it inside, or pass "
                        "allow_outside_root=True to read it where it is")
                if not file.exists():
                    raise MedtuneError(f"folder: {path} line {line}: the {kind} {file} does not exist")
            name = row.get("case") or _case_name(image) or image.name
            if name in names:
                raise MedtuneError(f"folder: {path} line {line}: case {name!r} is listed twice")
            names.add(name)
            cases.append(Case(name, image, label))
        return sorted(cases, key=lambda case: case.name)

    def _read(self, case: Case) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]:
        from monai.transforms import Orientation, ResizeWithPadOrCrop, Spacing

        image, label = _load(case.image, case.name), _load(case.label, case.name)
        _check_pair(case, image, label)
        spatial_dims = image.ndim - 1
        if self.orientation is not None:
            orient = Orientation(axcodes=self.orientation[:spatial_dims], labels=_RAS_LABELS)
            image, label = orient(image), orient(label)
        if self.target_spacing is not None:
            pixdim = self._per_axis("target_spacing", self.target_spacing, spatial_dims, case)
            image = Spacing(pixdim=pixdim, mode="bilinear")(image)
            label = Spacing(pixdim=pixdim, mode="nearest")(label)
        spacing = tuple(float(v) for v in np.linalg.norm(np.asarray(image.affine)[:spatial_dims, :spatial_dims], axis=0))
        image, label = image.as_tensor().float(), label.as_tensor().round().long()
        flat = [axis for axis, extent in enumerate(image.shape[1:]) if extent == 1]
        if spatial_dims == 3 and len(flat) == 1:  # a 2D slice stored as a one-voxel-thick volume
            image, label = image.squeeze(1 + flat[0]), label.squeeze(1 + flat[0])
            spacing = spacing[: flat[0]] + spacing[flat[0] + 1:]
        if self.normalize:
            axes = tuple(range(1, image.ndim))
            image = (image - image.mean(axes, keepdim=True)) / image.std(axes, keepdim=True).clamp_min(1e-6)
        if self.spatial_size is not None:
            shape = self._per_axis("spatial_size", self.spatial_size, image.ndim - 1, case)
            resize = ResizeWithPadOrCrop(spatial_size=shape)
            image, label = resize(image).as_tensor(), resize(label).as_tensor()
        return image.contiguous(), label.contiguous(), spacing

    def _per_axis(self, name: str, values: tuple, dims: int, case: Case) -> tuple:
        if len(values) == 1:
            return values * dims
        if len(values) != dims:
            raise MedtuneError(
                f"folder: {name} has {len(values)} values but case {case.name!r} has {dims} spatial "
                f"axes; give {dims} values or one for all"
            )
        return values


def _positive_tuple(name: str, value: Any, kind: type) -> tuple | None:
    if value is None:
        return None
    values = (value,) if np.isscalar(value) else tuple(value)
    try:
        valid = 1 <= len(values) <= 3 and all(kind(v) > 0 and kind(v) == v for v in values)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise MedtuneError(
            f"folder: {name} must be one positive {kind.__name__} or one per spatial axis (2 or 3), got {value!r}"
        )
    return tuple(kind(v) for v in values)


def _case_name(path: Path) -> str | None:
    """The case name of an image path: a NIfTI file or a (DICOM series) folder; else None."""
    if path.is_dir():
        return path.name
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _label_candidates(label_dir: Path, name: str) -> list[Path]:
    return [label_dir / (name + suffix) for suffix in NIFTI_SUFFIXES] + [label_dir / name]


def _select(found: list[Case], names: Sequence[str] | None, split: str, val_fraction: float,
            split_seed: int) -> list[Case]:
    """The cases named in ``names`` (all when None), then one side of the seeded split."""
    cases = sorted(found, key=lambda case: case.name)
    if names is not None:
        if isinstance(names, str):
            raise MedtuneError(f"folder: cases must be a list of case names, got the string {names!r}")
        known = {case.name for case in cases}
        unknown = [name for name in names if name not in known]
        if unknown:
            listed = ", ".join(sorted(known)[:10]) + (" ..." if len(known) > 10 else "")
            raise MedtuneError(f"folder: unknown case(s) {unknown}; the folder holds: {listed}")
        wanted = set(names)
        cases = [case for case in cases if case.name in wanted]
    if split == "all":
        return cases
    if len(cases) < 2:
        raise MedtuneError(
            f"folder: a train/val split needs at least 2 cases, found {len(cases)}; use split='all'"
        )
    validation = max(1, min(len(cases) - 1, round(val_fraction * len(cases))))
    order = np.random.default_rng(split_seed).permutation(len(cases))
    chosen = order[:validation] if split == "val" else order[validation:]
    return [cases[i] for i in sorted(chosen)]


def _check_readers(cases: list[Case]) -> None:
    """Fail early, naming a case, when a reader the cases need is not installed."""
    dicom = next((case for case in cases if case.image.is_dir() or case.label.is_dir()), None)
    if dicom is not None and importlib.util.find_spec("pydicom") is None:
        path = dicom.image if dicom.image.is_dir() else dicom.label
        raise MedtuneError(
            f"folder: case {dicom.name!r} is a DICOM series folder ({path}), but reading DICOM "
            "needs the pydicom package, which is not installed: pip install pydicom"
        )
    nifti = next((case for case in cases if not case.image.is_dir() or not case.label.is_dir()), None)
    if nifti is not None and importlib.util.find_spec("nibabel") is None:
        raise MedtuneError(
            f"folder: case {nifti.name!r} is stored as NIfTI, but reading NIfTI needs the nibabel "
            "package, which is not installed: pip install nibabel"
        )


def _check_nifti_headers(case: Case) -> None:
    import nibabel

    try:
        image, label = nibabel.load(str(case.image)), nibabel.load(str(case.label))
    except Exception as error:  # a corrupt or truncated header: name the case
        raise MedtuneError(
            f"folder: case {case.name!r}: could not read the NIfTI header of {case.image} or "
            f"{case.label} ({type(error).__name__}: {error}); check that both are valid NIfTI files"
        ) from error
    image_shape, label_shape = tuple(image.shape[:3]), tuple(label.shape[:3])
    if image_shape != label_shape:
        raise MedtuneError(
            f"folder: case {case.name!r}: the image {case.image.name} has shape {image_shape} but "
            f"the label {case.label.name} has shape {label_shape}; a label map must cover its "
            "image's voxel grid"
        )
    _check_affines(case, image.affine, label.affine)


def _check_pair(case: Case, image: Any, label: Any) -> None:
    """Check a loaded image/label pair (channel-first MetaTensors): grid and label values."""
    if label.shape[0] != 1:
        raise MedtuneError(
            f"folder: case {case.name!r}: the label {case.label} has {label.shape[0]} channels; "
            "it must be one map of class indices"
        )
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise MedtuneError(
            f"folder: case {case.name!r}: the image {case.image.name} has shape "
            f"{tuple(image.shape[1:])} but the label {case.label.name} has shape "
            f"{tuple(label.shape[1:])}; a label map must cover its image's voxel grid"
        )
    _check_affines(case, np.asarray(image.affine), np.asarray(label.affine))
    values = label.as_tensor()
    if values.is_floating_point() and not torch.equal(values, values.round()):
        example = values[values != values.round()].flatten()[0].item()
        raise MedtuneError(
            f"folder: case {case.name!r}: the label {case.label.name} holds non-integer values "
            f"(e.g. {example:g}); a label map must hold class indices 0, 1, 2, ... (was it "
            "resampled with linear interpolation? use nearest neighbour)"
        )
    if values.numel() and values.min() < 0:
        raise MedtuneError(
            f"folder: case {case.name!r}: the label {case.label.name} holds negative values "
            f"(min {values.min().item():g}); a label map must hold class indices 0, 1, 2, ..."
        )


def _check_affines(case: Case, image_affine: np.ndarray, label_affine: np.ndarray) -> None:
    if not np.allclose(image_affine, label_affine, atol=1e-3):
        raise MedtuneError(
            f"folder: case {case.name!r}: the image {case.image.name} and the label "
            f"{case.label.name} have different voxel-to-world affines\n"
            f"image:\n{np.round(image_affine, 4)}\nlabel:\n{np.round(label_affine, 4)}\n"
            "resample the label onto the image's grid (nearest neighbour) or fix its header"
        )


@functools.lru_cache(maxsize=None)
def _loader(reader: str) -> Any:
    from monai.transforms import LoadImage

    with warnings.catch_warnings():  # MONAI probes optional GPU DICOM decoders while building
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        return LoadImage(reader=reader, image_only=True, ensure_channel_first=True)


def _load(path: Path, name: str) -> Any:
    """The image or label at ``path`` as a channel-first MONAI MetaTensor."""
    reader = "PydicomReader" if path.is_dir() else "NibabelReader"
    try:
        return _loader(reader)(str(path))
    except Exception as error:  # a corrupt or unreadable file: name it
        raise MedtuneError(
            f"folder: case {name!r}: could not read {path} with MONAI's {reader} "
            f"({type(error).__name__}: {error}); check that it is a valid "
            f"{'DICOM series' if path.is_dir() else 'NIfTI file'}"
        ) from error
