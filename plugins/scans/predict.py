"""Prediction with the models the ``scans`` task keeps: sliding-window class probabilities in plan
space (shared with the task's validation), the ensemble of the folds, and the segmentation of a
folder of scans written in each input's own geometry.

A kept model is a folder (a trial's artifact folder, or its copy by ``medtune export``) with
``model.json`` (task ``scans``, :data:`FORMAT_VERSION`, the plan, the settings, the folds),
``plan.json`` and ``fold_K/weights.pt`` per fold.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medtune.errors import MedtuneError

if TYPE_CHECKING:
    from medtune.plugins.scans.plan import Plan

#: Version of ``model.json``.
FORMAT_VERSION = 1


def resolve_device(name: str, *, here: bool = True) -> torch.device:
    """The torch device of a ``device`` setting: ``auto`` (CUDA when available, else the CPU),
    ``cpu``, ``cuda`` or ``cuda:N``. MedtuneError when it is none of these or, with ``here``
    (False: only the form is checked, e.g. on a study's driver), CUDA is asked for but absent
    from this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise MedtuneError(f"scans: device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if here and device.type == "cuda" and not torch.cuda.is_available():
        raise MedtuneError(f"scans: device is {name!r} but torch sees no CUDA device here; use "
                           "device = \"auto\" or \"cpu\"")
    return device


def class_probabilities(model: torch.nn.Module, image: np.ndarray, plan: Plan, *, overlap: float,
                        device: torch.device, amp: bool, mirror: bool = False) -> torch.Tensor:
    """Softmax class probabilities [K, X, Y, Z] (float32, on the CPU) of a preprocessed image
    [C, X, Y, Z] in plan space, by MONAI's Gaussian-weighted sliding window of
    ``plan.patch_size`` windows overlapping by ``overlap``, ``plan.batch_size`` windows at a
    time. In the ``2d`` configuration every slice across ``plan.slice_axis`` is one input.

    ``mirror``: test-time augmentation, the mean of the probabilities over the inputs mirrored
    along every subset of the patch's axes (8 in 3D, 4 in 2D). ``amp``: float16 autocast
    (CUDA). ``model`` must be in eval mode.
    """
    from monai.inferers import sliding_window_inference

    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    slice_axis = plan.slice_axis
    inputs = volume[None] if slice_axis is None else volume.movedim(1 + slice_axis, 0)
    inputs = inputs.to(device)
    axes = tuple(range(2, inputs.ndim))
    flips = [()] + ([dims for n in range(1, len(axes) + 1) for dims in itertools.combinations(axes, n)]
                    if mirror else [])
    total = None
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        for dims in flips:
            logits = sliding_window_inference(
                inputs.flip(dims) if dims else inputs, roi_size=tuple(plan.patch_size),
                sw_batch_size=int(plan.batch_size), predictor=model, overlap=float(overlap),
                mode="gaussian")
            probabilities = torch.softmax(torch.as_tensor(logits).float(), dim=1)
            if dims:
                probabilities = probabilities.flip(dims)
            total = probabilities if total is None else total + probabilities
    total = total / len(flips)
    total = total[0] if slice_axis is None else total.movedim(0, 1 + slice_axis)
    return total.cpu()


@dataclass
class ScansModel:
    """A kept model: its plan, one network per fold (eval mode, on ``device``), the settings
    it was trained with and the file ending of the dataset's images."""

    plan: Plan
    networks: list[torch.nn.Module]
    settings: dict[str, Any]
    file_ending: str
    device: torch.device


def load_model(folder: str | Path, device: str = "auto") -> ScansModel:
    """The model kept in ``folder``; MedtuneError naming the file when it is not a ``scans``
    model of this format or a file is missing or unreadable."""
    from medtune.plugins.scans.network import build_network
    from medtune.plugins.scans.plan import Plan

    folder = Path(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise MedtuneError(f"{folder} holds no model.json: point at a trial's artifact folder or "
                           "at a folder `medtune export` wrote")
    try:
        description = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MedtuneError(f"cannot read {path} ({error}); export the model again") from error
    if description.get("task") != "scans" or description.get("format_version") != FORMAT_VERSION:
        raise MedtuneError(
            f"{path} describes a {description.get('task')!r} model of format "
            f"{description.get('format_version')!r}; the scans task reads format {FORMAT_VERSION}: "
            "train and export it again with this version of medtune")
    plan = Plan.from_json(description["plan"])
    target = resolve_device(device)
    networks = []
    for fold in description["folds"]:
        weights = folder / f"fold_{fold['index']}" / "weights.pt"
        if not weights.is_file():
            raise MedtuneError(f"{weights} is missing: the model folder is incomplete; export the "
                               "trial again")
        network = build_network(plan)
        try:
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, ValueError) as error:
            raise MedtuneError(f"cannot load {weights} into the network of the plan ({error}); "
                               "export the trial again") from error
        networks.append(network.to(target).eval())
    return ScansModel(plan, networks, dict(description.get("settings", {})),
                      str(description.get("file_ending", ".nii.gz")), target)


def predict_folder(model_folder: str | Path, inputs: str | Path, output: str | Path, *,
                   labels: str | Path | None = None, tta: bool = False,
                   console: Any = None, device: str = "auto") -> dict[str, Any]:
    """Segment every case of the folder ``inputs`` (``CASE_0000<ending>`` ... one file per
    channel) with the model kept in ``model_folder`` and write ``output/CASE<ending>``.

    Each case is preprocessed as planned, its class probabilities are the mean over the folds
    (and, with ``tta``, over the mirrorings) of :func:`class_probabilities`, restored to the
    input's own grid, and the label map is written with the input's affine and header (each
    file written whole under a temporary name, then renamed). ``labels``: a folder of
    ``CASE<ending>`` reference label maps; then every case is scored (Dice per foreground
    label and their mean), a table is printed on ``console`` and the scores are returned as
    ``{"cases": {case: {"dice_<label>": ..., "mean_dice": ...}}, "mean": {...}}`` (the mean
    over cases); ``{}`` without labels. ``console``: a Rich console for the progress bar and
    the table, or None for neither. ``device``: where the networks run (a ``device`` setting:
    ``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        MedtuneError: the model folder is not a scans model; ``inputs`` holds no case, a case
            lacks a channel or has more than the model's; a case's label file is missing or does
            not fit its image (naming the case).
    """
    from medtune.metrics import dice
    from medtune.plugins.scans.layout import ScanCase, ScanDataset, find_inputs, read_case, write_volume
    from medtune.plugins.scans.preprocess import preprocess, restore

    model = load_model(model_folder, device=device)
    plan, ending = model.plan, model.file_ending
    cases = find_inputs(inputs, len(plan.channels), ending)
    if labels is not None:
        labelled = []
        for case in cases:
            path = Path(labels) / f"{case.name}{ending}"
            if not path.is_file():
                raise MedtuneError(f"case {case.name!r}: no label {path}; give every input its "
                                   "label map, or predict without labels")
            labelled.append(ScanCase(case.name, case.images, path, case.patient))
        cases = labelled
    dataset = ScanDataset(Path(inputs), plan.dataset, tuple(plan.channels), dict(plan.labels),
                          (), tuple(cases), ending)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    overlap = float(model.settings.get("sw_overlap", 0.5))
    amp = bool(model.settings.get("amp", True)) and model.device.type == "cuda"
    foreground = {name: value for name, value in plan.labels.items() if value != 0}
    scores: dict[str, dict[str, float]] = {}
    with _progress(console) as bar:
        task = bar.add_task("predicting", total=len(cases))
        for case in cases:
            bar.update(task, description=f"predicting {case.name}")
            volume, truth = read_case(case, dataset)
            image, _ = preprocess(volume, None, plan)
            probabilities = sum(class_probabilities(network, image, plan, overlap=overlap,
                                                    device=model.device, amp=amp, mirror=tta)
                                for network in model.networks) / len(model.networks)
            prediction = restore(probabilities.numpy(), volume, plan)
            write_volume(output / f"{case.name}{ending}", prediction, volume.affine, volume.header)
            if truth is not None:
                case_scores = {f"dice_{name}": dice(prediction, truth, label=value)
                               for name, value in foreground.items()}
                case_scores["mean_dice"] = float(np.mean(list(case_scores.values())))
                scores[case.name] = case_scores
            bar.advance(task)
    if labels is None:
        return {}
    mean = {key: float(np.mean([s[key] for s in scores.values()])) for key in next(iter(scores.values()))}
    if console is not None:
        console.print(score_table(scores, mean))
    return {"cases": scores, "mean": mean}


def score_table(scores: Mapping[str, Mapping[str, float]], mean: Mapping[str, float]) -> Any:
    """The per-case scores and their mean as a Rich table."""
    from rich.table import Table

    from medtune.tables import verbatim

    table = Table(title="Dice of the predictions")
    columns = list(mean)
    table.add_column("case")
    for column in columns:
        table.add_column(column.removeprefix("dice_").replace("_", " "), justify="right")
    for name, values in scores.items():
        table.add_row(verbatim(name), *(f"{values[c]:.4f}" for c in columns))
    table.add_row("mean", *(f"{mean[c]:.4f}" for c in columns), style="bold")
    return table


def _progress(console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=console is None, transient=True)
