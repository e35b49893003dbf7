"""The ``scans`` task: a DynUNet trained on the user's own dataset as its plan says, scored by
cross-validation by patient (the nnU-Net recipe, Isensee2021).

Every epoch trains one epoch of every fold, then validates every fold on its validation cases
(Gaussian-weighted sliding window in plan space) and reports the mean over folds of the
foreground Dice; ``value`` is that mean after the last epoch (higher is better) and
``resource`` is the number of epochs. The settings and metrics are described in docs/tasks.md.
"""

from __future__ import annotations

import difflib
import gc
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import medtune
from medtune.errors import MedtuneError
from medtune.metrics import dice, hausdorff95, surface_dice
from medtune.plugins.losses.exploratory import GLFExploratory
from medtune.plugins.scans.folds import Fold, patient_folds
from medtune.plugins.scans.layout import ScanCase, ScanDataset, load_dataset
from medtune.plugins.scans.network import build_network
from medtune.plugins.scans.plan import Plan, PlanError, divisors
from medtune.plugins.scans.predict import (
    FORMAT_VERSION,
    class_probabilities,
    resolve_device,
)
from medtune.study.artifacts import trial_folder
from medtune.study.files import replacing
from medtune.study.executors import is_out_of_memory
from medtune.tasks import Setting, Task, stop_if_diverged

OPTIMIZERS = ("sgd", "adam", "adamw")
CONFIGURATIONS = ("3d", "2d")
#: nnU-Net's SGD: Nesterov momentum 0.99; its poly schedule's exponent; its gradient clipping.
SGD_MOMENTUM = 0.99
POLY_EXPONENT = 0.9
GRADIENT_NORM = 12.0
#: Foreground voxels kept per case and class to centre oversampled patches on (a random
#: subset, as nnU-Net keeps, so that large organs cost no memory).
FOREGROUND_SAMPLES = 10_000
#: Largest in-plane rotation of the augmentation (radians).
ROTATION = math.pi / 12


class ScansTask(Task):
    """Segmentation of a dataset folder in the Decathlon / nnU-Net layout (``data``)."""

    name = "scans"
    settings = {
        "data": Setting("data", example='"Task01_Liver"'),
        "plan": Setting(None, type="string", optional=True, example='"Task01_Liver/plan.json"'),
        "configuration": "3d",
        "folds": 5,
        "fold_seed": 0,
        "epochs": 50,
        "iterations": 50,
        "batch_size": Setting(None, type="integer", optional=True, example="2"),
        "patch_size": Setting(None, type=("list", "string"), optional=True,
                              example='[128, 128, 64] or "128x128x64"'),
        "optimizer": "sgd",
        "lr": 0.01,
        "weight_decay": 3e-5,
        "loss": "dice_ce",
        "loss_options": {},
        "options_by_loss": Setting({}, example='{glf = {adaptive = "deterministic"}}'),
        "ce_weight": 0.0,
        "exploratory_options": Setting({}, example='{gradients = "batch_sums"}'),
        "oversample_foreground": 0.33,
        "augmentation": True,
        "sw_overlap": 0.5,
        "surface_tolerance": 1.0,
        "amp": True,
        "cache": "",
        "workers": 0,
        "threads": 0,
        "device": "auto",
    }

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise MedtuneError(f"scans task: {message}")

        require(settings["configuration"] in CONFIGURATIONS,
                f"configuration must be one of {', '.join(CONFIGURATIONS)}, got "
                f"{settings['configuration']!r}")
        require(settings["optimizer"] in OPTIMIZERS,
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings['optimizer']!r}")
        for key in ("folds", "epochs", "iterations"):
            require(settings[key] >= 1, f"{key} must be >= 1, got {settings[key]!r}")
        require(settings["batch_size"] is None or settings["batch_size"] >= 1,
                f"batch_size must be >= 1 (or left out for the plan's), got {settings['batch_size']!r}")
        patch = settings["patch_size"]
        if patch is not None:
            axes = 3 if settings["configuration"] == "3d" else 2
            sizes = patch_sizes(patch)
            require(sizes is not None and len(sizes) == axes and all(n >= 1 for n in sizes),
                    f"patch_size must be {axes} whole numbers >= 1 for configuration "
                    f"{settings['configuration']!r} (a list, or a string such as "
                    f"\"{'x'.join(['64'] * axes)}\" that a categorical parameter can search), "
                    f"got {patch!r}")
            settings = {**settings, "patch_size": sizes}
        require(settings["lr"] > 0, f"lr must be > 0, got {settings['lr']!r}")
        for key in ("weight_decay", "ce_weight", "workers"):
            require(settings[key] >= 0, f"{key} must be >= 0, got {settings[key]!r}")
        require(0 <= settings["oversample_foreground"] <= 1,
                f"oversample_foreground must be in [0, 1], got {settings['oversample_foreground']!r}")
        require(0 <= settings["sw_overlap"] < 1,
                f"sw_overlap must be in [0, 1), got {settings['sw_overlap']!r}")
        require(settings["surface_tolerance"] > 0,
                f"surface_tolerance must be > 0 mm, got {settings['surface_tolerance']!r}")
        require(all(isinstance(v, Mapping) for v in settings["options_by_loss"].values()),
                "options_by_loss must map loss names to option tables, e.g. "
                f'{{glf = {{adaptive = "deterministic"}}}}, got {settings["options_by_loss"]!r}')
        losses = ["dice_ce", *medtune.available("loss")]
        close = difflib.get_close_matches(settings["loss"], losses, n=1)
        require(settings["loss"] in losses,
                f"loss must be one of {', '.join(losses)}, got {settings['loss']!r}"
                + (f" (did you mean {close[0]!r}?)" if close else ""))
        options = loss_options(settings)
        require(settings["loss"] != "dice_ce" or settings["ce_weight"] == 0,
                "ce_weight adds cross-entropy to a loss plugin; dice_ce has its own (set its "
                "weight with loss_options = {lambda_ce = ...}), leave ce_weight at 0")
        require(options.get("adaptive") != "exploratory" or settings["ce_weight"] == 0,
                "the exploratory GLF chooses each step on the GLF alone, so it cannot add "
                "cross-entropy: set ce_weight = 0, or use adaptive = \"deterministic\"")
        resolve_device(settings["device"], here=False)
        return settings

    def preflight(self, settings: dict[str, Any]) -> None:
        """The dataset folder is there (``data``, relative to the current folder) and its plan
        is usable: the ``plan`` file or ``plan.json`` of the data folder, else a plan made now,
        which reads and checks every training case. A missing folder, a case that cannot be
        read, or a plan of another dataset stops ``medtune run`` before any trial."""
        settings = self.check(settings)
        root = Path(settings["data"])
        if not root.is_dir():
            raise MedtuneError(
                f"scans task: no dataset at {settings['data']!r} (looked in {root.absolute()}); "
                f"write the sample dataset there with `medtune sample {settings['data']}`, or set "
                "[objective.settings] data to the folder that holds your dataset.json, imagesTr/ "
                "and labelsTr/")
        plan_for(settings, load_dataset(root))

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float | list[float]]:
        epochs = self.budget(resource, settings["epochs"])
        dataset = load_dataset(settings["data"])
        plan = plan_for(settings, dataset)
        folds = patient_folds(dataset.training, int(settings["folds"]), seed=int(settings["fold_seed"]))
        device = resolve_device(settings["device"])
        cases = TrainingCases.load(dataset, plan, settings["cache"])
        retries = 0
        while True:
            try:
                run = CrossValidation(settings, plan, folds, cases, device, seed, epochs)
                metrics = run.train(report)
                break
            except Exception as error:
                smaller = shrunk(plan) if not retries and is_out_of_memory(error) else None
                if smaller is None:
                    raise
                retries, plan = 1, smaller
            run = None  # the failed run's networks and optimisers go before the retry
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        metrics.update(batch_size_used=float(plan.batch_size),
                       patch_voxels_used=float(math.prod(plan.patch_size)),
                       oom_retries=float(retries))
        folder = trial_folder()
        if folder is not None:
            write_model(folder, run, dataset)
        return metrics

    def predict(self, model_folder: Path, inputs: Path, output: Path, *,
                labels: Path | None = None, tta: bool = False, console: Any = None) -> Mapping[str, Any]:
        """Segment the images of ``inputs`` with the model a trial kept (see
        :func:`medtune.plugins.scans.predict.predict_folder`)."""
        from medtune.plugins.scans.predict import predict_folder

        return predict_folder(model_folder, inputs, output, labels=labels, tta=tta, console=console)


# -- plan and loss ---------------------------------------------------------------------------


def plan_for(settings: Mapping[str, Any], dataset: ScanDataset) -> Plan:
    """The plan a trial trains with: the ``plan`` file, else ``plan.json`` of the data folder
    when it has the ``configuration``, else one made now; with ``batch_size`` and
    ``patch_size`` when set.

    Raises MedtuneError when the plan file is missing, unreadable, of another configuration or
    of a dataset with other channels or labels.
    """
    configuration = settings["configuration"]
    given = settings["plan"]
    path = Path(given) if given else dataset.root / "plan.json"
    if given and not path.is_file():
        raise MedtuneError(f"scans task: the plan file {path} does not exist; write it with "
                           f"`medtune plan {dataset.root}` or leave the plan setting out")
    plan = read_plan(path) if path.is_file() else None
    if plan is not None and plan.configuration != configuration:
        if given:
            raise MedtuneError(
                f"scans task: the plan {path} is for configuration {plan.configuration!r} but "
                f"configuration is {configuration!r}; set configuration = "
                f"\"{plan.configuration}\" or write a {configuration} plan with `medtune plan "
                f"{dataset.root} --configuration {configuration}`")
        plan = None
    if plan is None:
        from medtune.plugins.scans.fingerprint import fingerprint
        from medtune.plugins.scans.plan import make_plan

        plan = make_plan(fingerprint(dataset), configuration)
    elif tuple(plan.channels) != tuple(dataset.channels) or dict(plan.labels) != dict(dataset.labels):
        raise MedtuneError(
            f"scans task: the plan {path} was made for channels {list(plan.channels)} and labels "
            f"{dict(plan.labels)}, but {dataset.root} has channels {list(dataset.channels)} and "
            f"labels {dict(dataset.labels)}; write its plan again with `medtune plan {dataset.root}`")
    overrides: dict[str, Any] = {}
    if settings["batch_size"] is not None:
        overrides["batch_size"] = int(settings["batch_size"])
    if settings["patch_size"] is not None:
        overrides["patch_size"] = patch_sizes(settings["patch_size"])
    return plan.with_overrides(**overrides) if overrides else plan


def patch_sizes(patch: Any) -> tuple[int, ...] | None:
    """A ``patch_size`` setting as whole numbers: a list, or a string such as ``"96x96x48"``
    (one value of a categorical parameter); None when it is neither."""
    if isinstance(patch, str):
        parts = patch.lower().split("x")
        return tuple(int(p) for p in parts) if all(p.strip().isdigit() for p in parts) else None
    if all(isinstance(n, int) and not isinstance(n, bool) for n in patch):
        return tuple(patch)
    return None


def read_plan(path: Path) -> Plan:
    """The plan stored as JSON in ``path``; MedtuneError when it cannot be read."""
    try:
        return Plan.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, MedtuneError):
            raise
        raise MedtuneError(f"scans task: cannot read the plan {path} ({type(error).__name__}: "
                           f"{error}); write it again with `medtune plan DATA`") from error


def loss_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The options of the ``loss``: ``loss_options`` overridden by its ``options_by_loss``."""
    return {**settings["loss_options"], **settings["options_by_loss"].get(settings["loss"], {})}


class WithCrossEntropy(torch.nn.Module):
    """``loss(logits, labels) + weight * cross_entropy(logits, labels)`` on label maps
    [N, 1, *spatial]."""

    def __init__(self, loss: torch.nn.Module, weight: float):
        super().__init__()
        self.loss = loss
        self.weight = float(weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cross_entropy = torch.nn.functional.cross_entropy(logits, labels[:, 0].long())
        return self.loss(logits, labels) + self.weight * cross_entropy


def build_loss(settings: Mapping[str, Any]) -> torch.nn.Module:
    """The training loss on softmax logits and label maps [N, 1, *spatial]: MONAI's
    ``DiceCELoss`` for ``dice_ce``, else the loss plugin (plus ``ce_weight`` cross-entropy)."""
    options = loss_options(settings)
    if settings["loss"] == "dice_ce":
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True, **options)
    loss = medtune.create("loss", settings["loss"], softmax=True, to_onehot_y=True, **options)
    return WithCrossEntropy(loss, settings["ce_weight"]) if settings["ce_weight"] > 0 else loss


def shrunk(plan: Plan) -> Plan | None:
    """The plan of the retry after running out of memory: half the batch, or with a batch of
    one half the patch's longest axis (rounded down to its strides' product); None when the
    patch cannot shrink (the plan would have too few stages)."""
    if plan.batch_size > 1:
        return plan.with_overrides(batch_size=plan.batch_size // 2)
    patch = list(plan.patch_size)
    axis = int(np.argmax(patch))
    divisor = divisors(plan.strides)[axis]
    half = max(divisor, patch[axis] // 2 // divisor * divisor)
    if half >= patch[axis]:
        return None
    patch[axis] = half
    try:
        return plan.with_overrides(patch_size=tuple(patch))
    except PlanError:
        return None


# -- patches ---------------------------------------------------------------------------------


@dataclass
class TrainingCase:
    """A preprocessed case: image [C, X, Y, Z], label [X, Y, Z] of class indices (class ``k``
    is the plan's ``k``-th label by value), its voxel size in mm, and per foreground class a
    sample of its voxels' coordinates [n, 3]."""

    image: np.ndarray
    label: np.ndarray
    foreground: dict[int, np.ndarray] = field(default_factory=dict)
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)


@dataclass
class TrainingCases:
    """The preprocessed training cases of a dataset by name, read once per trial."""

    cases: dict[str, TrainingCase]

    @classmethod
    def load(cls, dataset: ScanDataset, plan: Plan, cache: str) -> TrainingCases:
        """Every training case through the :class:`PreprocessedCache` in ``cache`` (empty:
        ``.medtune_cache`` in the data folder)."""
        from medtune.plugins.scans.preprocess import PreprocessedCache

        store = PreprocessedCache(Path(cache) if cache else dataset.root / ".medtune_cache",
                                  plan, dataset)
        classes = range(1, len(plan.labels))
        rng = np.random.default_rng(0)
        cases = {}
        for case in dataset.training:
            image, label = store.get(case)
            spacing = list(plan.spacing)
            if plan.slice_axis is not None:  # a 2d plan keeps each case's own slices
                spacing[plan.slice_axis] = _spacing_along(case, plan.slice_axis)
            cases[case.name] = TrainingCase(image, label, foreground_voxels(label, classes, rng),
                                            tuple(spacing))
        return cls(cases)


def _spacing_along(case: ScanCase, axis: int) -> float:
    """The voxel size in mm of ``case``'s image along ``axis`` (its affine's column norm),
    read from the header alone."""
    import nibabel as nib

    return float(np.linalg.norm(np.asarray(nib.load(case.images[0]).affine)[:3, axis]))


def foreground_voxels(label: np.ndarray, classes: Sequence[int],
                      rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Up to :data:`FOREGROUND_SAMPLES` voxel coordinates [n, 3] of each class of ``classes``
    present in ``label``."""
    found = {}
    for value in classes:
        flat = np.flatnonzero(label == value)
        if flat.size:
            if flat.size > FOREGROUND_SAMPLES:
                flat = rng.choice(flat, FOREGROUND_SAMPLES, replace=False)
            found[value] = np.stack(np.unravel_index(flat, label.shape), axis=1)
    return found


def padded(case: TrainingCase, patch: Sequence[int]) -> TrainingCase:
    """``case`` padded (centred; image with 0, the normalised mean, label with background)
    to at least ``patch`` (3 values) along each axis."""
    shape = case.label.shape
    before = [max(0, p - n) // 2 for p, n in zip(patch, shape)]
    after = [max(0, p - n) - b for p, n, b in zip(patch, shape, before)]
    if not any(before) and not any(after):
        return case
    widths = list(zip(before, after))
    return TrainingCase(np.pad(case.image, [(0, 0), *widths]), np.pad(case.label, widths),
                        {v: c + np.asarray(before) for v, c in case.foreground.items()})


class PatchBatches(IterableDataset):
    """``iterations`` batches of patches (images [B, C, *patch], labels [B, 1, *patch] int64)
    drawn from ``cases`` for ``plan``.

    Of each batch, the last ``round(B * oversample_foreground)`` patches are centred on a
    random voxel of a random foreground class present in their case (nnU-Net's rule), the
    others lie uniformly in a random case. In the ``2d`` configuration a patch is one slice
    across ``plan.slice_axis``. Batch ``i`` of an epoch is drawn from a generator seeded with
    ``(seed..., epoch, i)``, so the batches do not depend on the number of loader workers,
    which share the iterations.
    """

    def __init__(self, cases: Sequence[TrainingCase], plan: Plan, iterations: int,
                 oversample_foreground: float, augment: Callable | None, seed: Sequence[int]):
        super().__init__()
        self.slice_axis = plan.slice_axis
        box = [1, 1, 1]
        for axis, size in zip(plan.patch_axes, plan.patch_size):
            box[axis] = int(size)
        self.box = np.asarray(box)
        self.cases = [padded(case, box) for case in cases]
        self.batch_size = int(plan.batch_size)
        self.iterations = int(iterations)
        self.uniform = round(self.batch_size * (1 - float(oversample_foreground)))
        self.augment = augment
        self.seed = tuple(int(s) for s in seed)
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for iteration in range(worker, self.iterations, workers):
            yield self.batch(np.random.default_rng([*self.seed, self.epoch, iteration]))

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch drawn with ``rng``. The augmentation is seeded once per batch (seeding
        MONAI's transforms costs about a millisecond), from ``rng``, so a batch stays a function
        of its seed alone."""
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
        images, labels = [], []
        for index in range(self.batch_size):
            image, label = self.patch(rng, foreground=index >= self.uniform)
            images.append(image)
            labels.append(label)
        return torch.stack(images), torch.stack(labels)

    def patch(self, rng: np.random.Generator, foreground: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One patch (image [C, *patch] float32, label [1, *patch] int64), augmented with the
        augmentation's current random state (:meth:`batch` seeds it)."""
        case = self.cases[int(rng.integers(len(self.cases)))]
        shape = np.asarray(case.label.shape)
        if foreground and case.foreground:
            values = sorted(case.foreground)
            voxels = case.foreground[values[int(rng.integers(len(values)))]]
            centre = voxels[int(rng.integers(len(voxels)))]
            low = np.clip(centre - self.box // 2, 0, shape - self.box)
        else:
            low = np.array([int(rng.integers(0, n - b + 1)) for n, b in zip(shape, self.box)])
        window = tuple(slice(int(a), int(a + b)) for a, b in zip(low, self.box))
        image = torch.from_numpy(np.ascontiguousarray(case.image[(slice(None), *window)], dtype=np.float32))
        # class indices stay integers: flips and quarter turns keep the dtype, only the affine
        # (nearest mode) returns float32, rounded back below
        label = torch.from_numpy(np.ascontiguousarray(case.label[window]))[None]
        if self.slice_axis is not None:
            image, label = image.select(1 + self.slice_axis, 0), label.select(1 + self.slice_axis, 0)
        if self.augment is not None:
            sample = self.augment({"image": image, "label": label})
            image, label = (_plain(sample[key]) for key in ("image", "label"))
        return image, (label.round() if label.is_floating_point() else label).long()


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (batches are collated without metadata)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)


def augmentation(plan: Plan) -> Callable:
    """The training augmentation of ``plan``'s patches ``{"image": [C, *patch], "label":
    [1, *patch]}`` (MONAI): mirroring along every axis; in the plane of the two finest patch
    axes, quarter turns when the patch is square there and a small rotation with scaling;
    Gaussian noise; intensity scaling and shifting. Light on purpose: it runs on the CPU."""
    from monai.transforms import (
        Compose,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    patch = tuple(plan.patch_size)
    axes = len(patch)
    if axes == 2:
        plane, rotation = (0, 1), (ROTATION,)
    else:
        spacing = [plan.spacing[axis] for axis in plan.patch_axes]
        coarsest = max(axis for axis in range(3) if spacing[axis] == max(spacing))
        plane = tuple(axis for axis in range(3) if axis != coarsest)
        rotation = tuple(ROTATION if axis == coarsest else 0.0 for axis in range(3))
    transforms: list[Any] = [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(axes)]
    if patch[plane[0]] == patch[plane[1]]:
        transforms.append(RandRotate90d(keys, prob=0.5, spatial_axes=plane))
    transforms += [
        RandAffined(keys, prob=0.2, rotate_range=rotation, scale_range=(0.1,) * axes,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandGaussianNoised(["image"], prob=0.1, std=0.1),
        RandScaleIntensityd(["image"], factors=0.25, prob=0.15),
        RandShiftIntensityd(["image"], offsets=0.1, prob=0.15),
    ]
    return Compose(transforms)


# -- training ----------------------------------------------------------------------------------


class FoldTraining:
    """The network, optimiser, loss and patch loader of one fold."""

    def __init__(self, fold: Fold, settings: Mapping[str, Any], plan: Plan, cases: TrainingCases,
                 device: torch.device, seed: int, amp: bool):
        self.fold = fold
        self.model = build_network(plan).to(device)
        self.loss = build_loss(settings).to(device)
        self.explorer = (GLFExploratory(self.loss, **settings["exploratory_options"])
                         if getattr(self.loss, "adaptive", None) == "exploratory" else None)
        parameters = self.model.parameters()
        lr, decay = float(settings["lr"]), float(settings["weight_decay"])
        if settings["optimizer"] == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                parameters, lr=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=decay)
        else:
            kind = torch.optim.Adam if settings["optimizer"] == "adam" else torch.optim.AdamW
            self.optimizer = kind(parameters, lr=lr, weight_decay=decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)
        self.batches = PatchBatches(
            [cases.cases[name] for name in fold.train], plan, int(settings["iterations"]),
            float(settings["oversample_foreground"]),
            augmentation(plan) if settings["augmentation"] else None, (seed, fold.index))
        self.loader = DataLoader(self.batches, batch_size=None, num_workers=int(settings["workers"]),
                                 pin_memory=device.type == "cuda")


class CrossValidation:
    """One training of every fold, epoch by epoch (see :meth:`train`)."""

    def __init__(self, settings: Mapping[str, Any], plan: Plan, folds: Sequence[Fold],
                 cases: TrainingCases, device: torch.device, seed: int, epochs: int):
        self.settings, self.plan, self.cases, self.device = settings, plan, cases, device
        self.epochs = epochs
        self.amp = bool(settings["amp"]) and device.type == "cuda"
        torch.manual_seed(seed)
        self.folds = [FoldTraining(fold, settings, plan, cases, device, seed, self.amp)
                      for fold in folds]
        self.waiting = self.stepping = 0.0
        #: label names by class index
        self.class_names = sorted(plan.labels, key=plan.labels.__getitem__)

    def train(self, report: Callable[[float, float], None] | None) -> dict[str, float | list[float]]:
        """Train every fold for the epochs, validating all after each and reporting the mean
        fold Dice; the metrics after the last epoch."""
        durations = []
        for epoch in range(1, self.epochs + 1):
            started = time.perf_counter()
            rate = float(self.settings["lr"]) * (1 - (epoch - 1) / self.epochs) ** POLY_EXPONENT
            for fold in self.folds:
                self.train_epoch(fold, epoch, rate)
            scores = [self.validate(fold, last=epoch == self.epochs) for fold in self.folds]
            value = float(np.mean([s.foreground_dice for s in scores]))
            durations.append(time.perf_counter() - started)
            if report is not None:
                report(epoch, value)
        metrics: dict[str, float | list[float]] = {"value": value}
        metrics.update({f"fold_{f.fold.index}_dice": s.foreground_dice
                        for f, s in zip(self.folds, scores)})
        for label, name in enumerate(self.class_names[1:], start=1):
            metrics[f"dice_{name}"] = _mean(v for s in scores for v in s.dice[label])
            distances = [v for s in scores for v in s.hd95[label] if math.isfinite(v)]
            if distances:
                metrics[f"hd95_mm_{name}"] = float(np.mean(distances))
            metrics[f"surface_dice_{name}"] = _mean(v for s in scores for v in s.surface_dice[label])
        metrics["seconds_per_epoch"] = float(np.mean(durations))
        metrics["data_wait_share"] = self.waiting / self.stepping if self.stepping else 0.0
        trajectory = getattr(self.folds[0].loss, "trajectory", None)
        if trajectory is not None and len(trajectory):
            for name in ("alpha_p", "alpha_n", "beta2"):
                metrics[f"glf_{name}"] = trajectory.column(name)
        return metrics

    def train_epoch(self, fold: FoldTraining, epoch: int, rate: float) -> None:
        """One epoch of ``fold`` at learning rate ``rate``, timing the waits for batches."""
        for group in fold.optimizer.param_groups:
            group["lr"] = rate
        fold.model.train()
        fold.loss.train()
        fold.batches.epoch = epoch
        started = time.perf_counter()
        batches = iter(fold.loader)
        while True:
            asked = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                break
            self.waiting += time.perf_counter() - asked
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            fold.optimizer.zero_grad(set_to_none=True)
            if fold.explorer is not None:
                chosen = fold.explorer.step(fold.model, images, labels, lr=rate,
                                            optimizer=fold.optimizer)
                stop_if_diverged(chosen.loss)
                continue
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = fold.model(images)
            loss = fold.loss(logits.float(), labels)
            stop_if_diverged(loss)
            fold.scaler.scale(loss).backward()
            fold.scaler.unscale_(fold.optimizer)
            torch.nn.utils.clip_grad_norm_(fold.model.parameters(), GRADIENT_NORM)
            fold.scaler.step(fold.optimizer)
            fold.scaler.update()
        self.stepping += time.perf_counter() - started

    def validate(self, fold: FoldTraining, last: bool) -> FoldScores:
        """Per-class scores of ``fold`` on its validation cases; the boundary metrics only
        when ``last`` (they are slow)."""
        fold.model.eval()
        values = range(1, len(self.class_names))
        scores = FoldScores({v: [] for v in values}, {v: [] for v in values}, {v: [] for v in values})
        tolerance = float(self.settings["surface_tolerance"])
        for name in fold.fold.validation:
            case = self.cases.cases[name]
            spacing = case.spacing
            probabilities = class_probabilities(
                fold.model, case.image, self.plan, overlap=float(self.settings["sw_overlap"]),
                device=self.device, amp=self.amp)
            prediction = probabilities.argmax(0).cpu().numpy()
            for value in values:
                scores.dice[value].append(dice(prediction, case.label, label=value))
                if last:
                    scores.hd95[value].append(hausdorff95(prediction, case.label, label=value,
                                                          spacing=spacing))
                    scores.surface_dice[value].append(surface_dice(
                        prediction, case.label, label=value, spacing=spacing, tolerance=tolerance))
        return scores


@dataclass
class FoldScores:
    """Per foreground class, one score per validation case of a fold."""

    dice: dict[int, list[float]]
    hd95: dict[int, list[float]]
    surface_dice: dict[int, list[float]]

    @property
    def foreground_dice(self) -> float:
        """The mean over foreground classes of their mean Dice over the cases."""
        return float(np.mean([np.mean(v) for v in self.dice.values()]))


def _mean(values: Iterator[float]) -> float:
    listed = list(values)
    return float(np.mean(listed)) if listed else math.nan


# -- artifacts -------------------------------------------------------------------------------


def write_model(folder: Path, run: CrossValidation, dataset: ScanDataset) -> None:
    """Write the trained folds into the trial's artifact ``folder``: ``model.json`` (task,
    format version, plan, settings, folds, file ending), ``plan.json`` and
    ``fold_K/weights.pt`` (the state dict, for ``torch.load(weights_only=True)``)."""
    description = {
        "task": "scans",
        "format_version": FORMAT_VERSION,
        "dataset": dataset.name,
        "file_ending": dataset.file_ending,
        "plan": run.plan.to_json(),
        "settings": {key: value for key, value in run.settings.items()},
        "folds": [{"index": f.fold.index, "train": list(f.fold.train),
                   "validation": list(f.fold.validation)} for f in run.folds],
    }
    for fold in run.folds:
        weights = folder / f"fold_{fold.fold.index}" / "weights.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu() for name, tensor in fold.model.state_dict().items()}
        with replacing(weights) as temporary:
            torch.save(state, temporary)
    for name, content in (("plan.json", run.plan.to_json()), ("model.json", description)):
        with replacing(folder / name) as temporary:
            temporary.write_text(json.dumps(content, indent=2, default=str) + "\n")


