"""Scans benchmark: the ``scans`` task's training epoch, data wait, sliding window, prediction
and memory against a plain MONAI training loop with the same network, patch, batch,
augmentation and loss.

``python -m benchmarks.scans`` writes the CPU scans section of BENCHMARKS.md, between
``<!-- benchmarks:scans:begin -->`` and ``<!-- benchmarks:scans:end -->`` (placed after the
search section when it is new); ``--device cuda`` writes the CUDA scans section, between
``<!-- benchmarks:scans-cuda:begin -->`` and ``<!-- benchmarks:scans-cuda:end -->`` (placed after
the CPU scans section when it is new, GPU named). Each run rewrites its own device's section only;
the rest of the file is kept as is. Without a CUDA device ``--device cuda`` exits with status 2.
``--quick`` (tiny data, one timed epoch; a smoke test) writes a file only with ``--output``.

Protocol. The sample dataset (:func:`~medtune.plugins.scans.sample.write_sample`) is written to
a temporary folder and planned on a CPU budget; every side trains the plan's DynUNet
(:func:`~medtune.plugins.scans.network.build_network`) at the plan's patch and batch, with the
task's augmentation (:func:`~medtune.plugins.scans.task.augmentation`), SGD as the task's
(Nesterov, momentum 0.99, gradient norm clipped), the same iterations per epoch, on fold 0's
training cases. The sides' epochs alternate round by round; the first round warms up and is
left out; each side's number is the median over the other rounds.

- peers: a MONAI tutorial loop. ``LoadImaged`` per channel file, ``EnsureChannelFirstd``, the
  plan's normalisation (``ScaleIntensityRanged`` for a ``ct`` channel, ``NormalizeIntensityd``
  for ``zscore``), ``ConcatItemsd``, ``Spacingd`` to the plan spacing, ``SpatialPadd`` to the
  patch, ``RandCropByPosNegLabeld`` (``num_samples`` = the batch, so one case is read per
  iteration; pos / neg as the task's foreground oversampling), the task's augmentation;
  ``DataLoader(batch_size=1, num_workers=0)`` with a replacement sampler of the epoch's
  iterations; ``DiceCELoss(to_onehot_y=True, softmax=True)``. Once over ``monai.data.Dataset``
  (every transform every time), once over ``CacheDataset`` (the deterministic transforms
  cached; the fair strong peer).
- medtune: :meth:`CrossValidation.train_epoch` of the task on fold 0 (training iterations only,
  no validation) over its cached preprocessing, with loss ``dice_ce`` and with the fused
  ``dice`` loss plus ``ce_weight = 1``; its data wait share is its own (time in
  ``next(loader)`` over the epoch's time).
- sliding window: :func:`~medtune.plugins.scans.predict.class_probabilities` against
  ``monai.inferers.sliding_window_inference`` (same network, window, overlap, Gaussian mode) on
  one preprocessed volume of a larger sample; the prediction of one volume is
  :func:`~medtune.plugins.scans.predict.predict_folder` on a one-case folder (model loading,
  reading, preprocessing, sliding window over the folds, restoring, writing).
- memory: peak RSS growth of two training steps (forward, loss, backward, SGD step) at the
  plan's patch and batch in a fresh subprocess (after a step on a tiny input has set the
  libraries up), against the plan's estimate and budget.

On CUDA (``--device cuda``) the plan is made with the device's default budget (80 % of its
memory, as the task plans there), on a larger sample; every side trains on the GPU with the data
pipeline in the main process on the CPU (``num_workers=0``, the task's default ``workers``).
medtune trains as the task does on CUDA: forward under ``torch.autocast`` (float16), the loss on
the float32 logits, ``GradScaler``. The MONAI peers are written as MONAI's tutorials write mixed
precision: ``torch.autocast`` around forward and loss, ``GradScaler`` (the loss's softmax and
cross-entropy run in float32 under autocast either way), so both sides do the same arithmetic.
Each epoch ends with ``torch.cuda.synchronize()`` before its time is taken. The sliding windows
run on the GPU under autocast on both sides; the prediction loads the model onto the GPU. Memory
is ``torch.cuda.max_memory_allocated`` over one training step (the second, so that the
optimiser's buffers exist) minus the memory allocated before the network was built: as the task
trains (autocast, GradScaler) and in float32 (the plan's estimate models float32).

A full run takes about 6 minutes on one thread (CPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import machine
from benchmarks.report import marker, replace_section

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "BENCHMARKS.md"
SECTION = "scans"
AFTER = "search"  # a new scans section goes after this section
SEED = 0
OVERLAP = 0.5
OVERSAMPLE_FOREGROUND = 0.33  # the task's default
#: The issue's targets: peer seconds / medtune seconds, the data wait share, sliding-window
#: parity (medtune's seconds over MONAI's at most this) and agreement of the outputs.
TARGET_NEVER_SLOWER = 1.0
TARGET_FUSED = 1.3
TARGET_WAIT = 0.10
PARITY = 1.05
AGREEMENT = 1e-4


@dataclass(frozen=True)
class Settings:
    """Sizes of one run; :data:`FULL` by default, :data:`QUICK` with ``--quick`` (on CUDA
    :data:`FULL_CUDA`, :data:`QUICK_CUDA`)."""

    cases: int  # training cases of the sample
    size: int  # in-plane voxels per side of the training sample
    volume_size: int  # in-plane voxels of the volume for the sliding window and the prediction
    iterations: int  # training iterations per epoch, every side
    rounds: int  # epochs per side, the first a warm-up
    repetitions: int  # timed sliding windows / predictions per side
    budget_gb: float | None  # the plan's memory budget; None: the device's default (CUDA)
    threads: int


FULL = Settings(cases=8, size=64, volume_size=128, iterations=8, rounds=6, repetitions=5,
                budget_gb=4.0, threads=1)
QUICK = Settings(cases=4, size=32, volume_size=32, iterations=2, rounds=2, repetitions=1,
                 budget_gb=4.0, threads=1)
#: On CUDA: a larger sample and more iterations (the GPU's step is short), the device's budget.
FULL_CUDA = Settings(cases=8, size=128, volume_size=192, iterations=20, rounds=4, repetitions=5,
                     budget_gb=None, threads=1)
QUICK_CUDA = replace(QUICK, budget_gb=None)

_START = time.perf_counter()


def _progress(message: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


# -- data and plan ------------------------------------------------------------------------------
@dataclass
class Setup:
    """The sample dataset, its plan, the task's settings, fold 0 and its training cases."""

    folder: Path
    dataset: Any
    plan: Any
    folds: list
    cases: Any  # TrainingCases (medtune's cached preprocessing)
    cache_seconds: float  # filling medtune's preprocessing cache


def task_settings(setup_folder: Path, settings: Settings, device: str = "cpu",
                  **config: Any) -> dict[str, Any]:
    """The scans task's checked settings for ``config`` (on ``device``, the benchmark's
    iterations; ``amp`` as the task's default: used on CUDA)."""
    from medtune.plugins.scans.task import ScansTask
    from medtune.tasks.contract import check_settings

    config = {"data": str(setup_folder), "folds": 2, "iterations": settings.iterations,
              "device": device, "oversample_foreground": OVERSAMPLE_FOREGROUND, **config}
    return ScansTask().check(check_settings("scans", ScansTask.settings, config))


def prepare(folder: Path, settings: Settings) -> Setup:
    """Write and plan the sample (on ``settings.budget_gb``; None: the device's default budget),
    split it into two folds, fill medtune's cache."""
    from medtune.plugins.scans.fingerprint import fingerprint
    from medtune.plugins.scans.folds import patient_folds
    from medtune.plugins.scans.plan import make_plan
    from medtune.plugins.scans.sample import write_sample
    from medtune.plugins.scans.task import TrainingCases

    dataset = write_sample(folder / "data", cases=settings.cases, size=settings.size, seed=SEED)
    plan = make_plan(fingerprint(dataset), "3d", settings.budget_gb)
    folds = patient_folds(dataset.training, 2, seed=SEED)
    start = time.perf_counter()
    cases = TrainingCases.load(dataset, plan, str(folder / "cache"))
    return Setup(folder / "data", dataset, plan, folds, cases, time.perf_counter() - start)


# -- the MONAI peer -----------------------------------------------------------------------------
def monai_transforms(plan: Any) -> Any:
    """The tutorial pipeline of the plan (module docstring), deterministic part first."""
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        DeleteItemsd,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        RandCropByPosNegLabeld,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    from medtune.plugins.scans.task import augmentation

    channels = [f"channel_{i}" for i in range(len(plan.channels))]
    transforms: list[Any] = [LoadImaged([*channels, "label"]),
                             EnsureChannelFirstd([*channels, "label"])]
    for key, scheme in zip(channels, plan.normalisation):
        if scheme["scheme"] == "ct":
            low, high = scheme["clip"]
            mean, std = scheme["mean"], scheme["std"]
            transforms.append(ScaleIntensityRanged(key, a_min=low, a_max=high, clip=True,
                                                   b_min=(low - mean) / std,
                                                   b_max=(high - mean) / std))
        else:
            transforms.append(NormalizeIntensityd(key))
    transforms += [
        ConcatItemsd(channels, "image"),
        DeleteItemsd(channels),
        Spacingd(["image", "label"], pixdim=plan.spacing, mode=("bilinear", "nearest")),
        SpatialPadd(["image", "label"], spatial_size=plan.patch_size),
        RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=plan.patch_size,
                               pos=OVERSAMPLE_FOREGROUND, neg=1 - OVERSAMPLE_FOREGROUND,
                               num_samples=plan.batch_size),
        augmentation(plan),
    ]
    return Compose(transforms)


class MonaiPeer:
    """A plain MONAI training loop over fold 0's training cases (module docstring)."""

    def __init__(self, setup: Setup, settings: Settings, cached: bool, device: str = "cpu"):
        from monai.data import CacheDataset, DataLoader, Dataset
        from monai.losses import DiceCELoss

        from medtune.plugins.scans.network import build_network
        from medtune.plugins.scans.task import SGD_MOMENTUM

        train = set(setup.folds[0].train)
        files = [{**{f"channel_{i}": str(path) for i, path in enumerate(case.images)},
                  "label": str(case.label)}
                 for case in setup.dataset.training if case.name in train]
        transform = monai_transforms(setup.plan)
        transform.set_random_state(seed=SEED)
        start = time.perf_counter()
        if cached:
            self.dataset = CacheDataset(files, transform, cache_rate=1.0, num_workers=0,
                                        progress=False)
        else:
            self.dataset = Dataset(files, transform)
        self.cache_seconds = time.perf_counter() - start
        sampler = torch.utils.data.RandomSampler(
            self.dataset, replacement=True, num_samples=settings.iterations,
            generator=torch.Generator().manual_seed(SEED))
        self.loader = DataLoader(self.dataset, batch_size=1, sampler=sampler, num_workers=0)
        torch.manual_seed(SEED)
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda"  # mixed precision as MONAI's tutorials use it
        self.model = build_network(setup.plan).to(self.device)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=SGD_MOMENTUM,
                                         nesterov=True, weight_decay=3e-5)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.waiting = 0.0

    def epoch(self) -> float:
        """Seconds of one epoch (the time waiting for batches is added to :attr:`waiting`)."""
        from medtune.plugins.scans.task import GRADIENT_NORM

        self.model.train()
        started = time.perf_counter()
        batches = iter(self.loader)
        while True:
            asked = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            self.waiting += time.perf_counter() - asked
            images, labels = batch["image"].to(self.device), batch["label"].to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.amp):
                loss = self.loss(self.model(images), labels)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRADIENT_NORM)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        _synchronize(self.device)
        return time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a time taken after covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MedtuneSide:
    """The scans task's own epoch (:meth:`CrossValidation.train_epoch`) on fold 0."""

    def __init__(self, setup: Setup, settings: Settings, device: str = "cpu", **config: Any):
        from medtune.plugins.scans.task import CrossValidation

        self.settings = task_settings(setup.folder, settings, device, **config)
        self.device = torch.device(device)
        self.run = CrossValidation(self.settings, setup.plan, setup.folds, setup.cases,
                                   self.device, SEED, epochs=1)
        self.number = 0
        self.wait_shares: list[float] = []

    @property
    def model(self) -> torch.nn.Module:
        return self.run.folds[0].model

    def epoch(self) -> float:
        self.number += 1
        waiting, stepping = self.run.waiting, self.run.stepping
        started = time.perf_counter()
        self.run.train_epoch(self.run.folds[0], self.number, float(self.settings["lr"]))
        _synchronize(self.device)
        seconds = time.perf_counter() - started
        self.wait_shares.append((self.run.waiting - waiting) / (self.run.stepping - stepping))
        return seconds


@dataclass
class Training:
    """Seconds per epoch by side (warm-up left out), wait shares, cache fill times."""

    seconds: dict[str, list[float]]
    wait_share: dict[str, list[float]]
    cache_seconds: dict[str, float]


def run_training(setup: Setup, settings: Settings,
                 device: str = "cpu") -> tuple[Training, MedtuneSide]:
    """The four sides' epochs on ``device``, alternating round by round; returns the medtune
    ``dice_ce`` side too (its trained folds serve the sliding window and the prediction)."""
    sides: dict[str, Any] = {
        "MONAI Dataset, DiceCE": MonaiPeer(setup, settings, cached=False, device=device),
        "MONAI CacheDataset, DiceCE": MonaiPeer(setup, settings, cached=True, device=device),
        "medtune, dice_ce": MedtuneSide(setup, settings, device, loss="dice_ce"),
        "medtune, dice + CE (fused)": MedtuneSide(setup, settings, device, loss="dice",
                                                  ce_weight=1.0),
    }
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(settings.rounds):
        for name, side in sides.items():
            seconds[name].append(side.epoch())
        _progress(f"training round {round_ + 1}/{settings.rounds}: "
                  + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in seconds.items()))
    wait = {name: side.wait_shares[1:] for name, side in sides.items()
            if isinstance(side, MedtuneSide)}
    peers = [side for side in sides.values() if isinstance(side, MonaiPeer)]
    caches = {"medtune preprocessing cache": setup.cache_seconds,
              "MONAI CacheDataset": peers[1].cache_seconds}
    for name, side in sides.items():
        if isinstance(side, MonaiPeer):  # the peer's wait share, for comparison
            total = sum(seconds[name])
            wait[name] = [side.waiting / total] if total else []
    timed = {name: values[1:] for name, values in seconds.items()}
    return Training(timed, wait, caches), sides["medtune, dice_ce"]


# -- sliding window and prediction ----------------------------------------------------------------
@dataclass
class Inference:
    shape: tuple[int, ...]  # the preprocessed volume's
    windows: int
    medtune_seconds: list[float]
    monai_seconds: list[float]
    max_difference: float
    predict_seconds: list[float]
    input_shape: tuple[int, ...]
    folds: int


def run_inference(setup: Setup, settings: Settings, side: MedtuneSide, folder: Path,
                  device: str = "cpu") -> Inference:
    """Sliding window of medtune and MONAI on one preprocessed volume (alternating), then the
    prediction of that volume through a kept model of the trained folds, on ``device`` (CUDA:
    under autocast on both sides, as the task predicts there)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers import sliding_window_inference

    from medtune.plugins.scans.layout import read_case
    from medtune.plugins.scans.predict import class_probabilities, predict_folder
    from medtune.plugins.scans.preprocess import preprocess
    from medtune.plugins.scans.sample import write_sample
    from medtune.plugins.scans.task import write_model

    plan = setup.plan
    large = write_sample(folder / "volume", cases=2, size=settings.volume_size, seed=SEED + 1)
    case = large.test[0]
    volume, _ = read_case(case, large)
    image, _ = preprocess(volume, None, plan)
    model = side.model.eval()
    target = torch.device(device)
    amp = target.type == "cuda"

    def through_medtune() -> torch.Tensor:
        return class_probabilities(model, image, plan, overlap=OVERLAP, device=target, amp=amp)

    def through_monai() -> torch.Tensor:  # the same steps: copy in, windows, softmax, copy out
        inputs = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(target)
        with torch.no_grad(), torch.autocast(target.type, enabled=amp):
            logits = sliding_window_inference(inputs, roi_size=plan.patch_size,
                                              sw_batch_size=plan.batch_size, predictor=model,
                                              overlap=OVERLAP, mode="gaussian")
        return torch.softmax(torch.as_tensor(logits).float(), dim=1)[0].cpu()

    medtune_seconds, monai_seconds, difference = [], [], 0.0
    for repetition in range(settings.repetitions + 1):  # the first pair warms up
        start = time.perf_counter()
        ours = through_medtune()
        middle = time.perf_counter()
        theirs = through_monai()
        end = time.perf_counter()
        if repetition:
            medtune_seconds.append(middle - start)
            monai_seconds.append(end - middle)
        difference = max(difference, float((ours - theirs).abs().max()))
    padded = [max(n, p) for n, p in zip(image.shape[1:], plan.patch_size)]
    windows = len(dense_patch_slices(padded, plan.patch_size,
                                     [max(1, int(p * (1 - OVERLAP))) for p in plan.patch_size]))
    _progress(f"sliding window: medtune {statistics.median(medtune_seconds):.2f} s, MONAI "
              f"{statistics.median(monai_seconds):.2f} s")

    model_folder, single, output = folder / "model", folder / "predict_in", folder / "predict_out"
    model_folder.mkdir()
    write_model(model_folder, side.run, setup.dataset)
    single.mkdir()
    for path in case.images:
        shutil.copy(path, single / path.name)
    predict_seconds = []
    for repetition in range(settings.repetitions + 1):
        start = time.perf_counter()
        predict_folder(model_folder, single, output, device=device)
        if repetition:
            predict_seconds.append(time.perf_counter() - start)
    _progress(f"prediction of one volume: {statistics.median(predict_seconds):.2f} s")
    return Inference(tuple(image.shape[1:]), windows, medtune_seconds, monai_seconds, difference,
                     predict_seconds, tuple(volume.array.shape), len(side.run.folds))


# -- memory -----------------------------------------------------------------------------------
_MEMORY_PROBE = """
import json, resource, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from medtune.plugins.scans.plan import Plan, divisors
from medtune.plugins.scans.network import build_network
from medtune.plugins.scans.task import SGD_MOMENTUM, build_loss
plan = Plan.from_json(json.loads(open(sys.argv[1]).read()))
torch.manual_seed(0)
model = build_network(plan)
loss = build_loss({"loss": "dice_ce", "loss_options": {}, "options_by_loss": {}, "ce_weight": 0.0})
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=SGD_MOMENTUM, nesterov=True)
images = torch.randn(plan.batch_size, len(plan.channels), *plan.patch_size)
labels = torch.randint(0, len(plan.labels), (plan.batch_size, 1, *plan.patch_size))
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()
tiny = [2 * n for n in divisors(plan.strides)]  # 2 x 2 x 2 voxels at the bottleneck
for _ in range(2):  # the libraries' lazy set-up (thread pools, convolution kernels) before `before`
    corner = (slice(0, 1), slice(None), *(slice(0, n) for n in tiny))
    loss(model(images[corner].contiguous()), labels[corner]).backward()
model.zero_grad(set_to_none=True)
before = rss()
saved = {}
def pack(tensor):
    storage = tensor.untyped_storage()
    saved[(step, storage.data_ptr())] = storage.nbytes()
    return tensor
for step in range(2):
    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        value = loss(model(images), labels)
    value.backward()
    optimizer.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak, "saved": sum(saved.values()) / 2,
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


@dataclass
class Memory:
    estimated_gb: float
    budget_gb: float
    peak_growth_gb: float  # peak RSS over the RSS before the steps
    saved_gb: float  # bytes of the tensors autograd saved, per step
    parameters: int


def run_memory(setup: Setup, settings: Settings, folder: Path) -> Memory:
    """Two training steps at the plan's patch and batch in a fresh subprocess."""
    path = folder / "plan.json"
    path.write_text(json.dumps(setup.plan.to_json(), default=str))
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), str(settings.threads)],
                            capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"the memory probe failed:\n{result.stderr}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return Memory(setup.plan.estimated_memory_gb, setup.plan.memory_budget_gb,
                  (measured["peak"] - measured["before"]) / 2**30, measured["saved"] / 2**30,
                  int(measured["parameters"]))


@dataclass
class CudaMemory:
    estimated_gb: float
    budget_gb: float
    amp_peak_gb: float  # max_memory_allocated of a step as the task trains (autocast, GradScaler)
    float32_peak_gb: float  # the same step in float32
    parameters: int
    device_gb: float  # the device's memory


def run_cuda_memory(setup: Setup) -> CudaMemory:
    """``torch.cuda.max_memory_allocated`` of one training step at the plan's patch and batch
    (module docstring), with and without autocast."""
    from medtune.plugins.scans.network import build_network
    from medtune.plugins.scans.task import GRADIENT_NORM, SGD_MOMENTUM, build_loss

    plan, device = setup.plan, torch.device("cuda")
    loss = build_loss({"loss": "dice_ce", "loss_options": {}, "options_by_loss": {},
                       "ce_weight": 0.0})
    peaks = {}
    gc.collect()  # the training sides' networks, optimisers and batches
    for amp in (True, False):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.manual_seed(SEED)
        model = build_network(plan).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=SGD_MOMENTUM,
                                    nesterov=True)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        images = torch.randn(plan.batch_size, len(plan.channels), *plan.patch_size, device=device)
        labels = torch.randint(0, len(plan.labels), (plan.batch_size, 1, *plan.patch_size),
                               device=device)
        for step in range(2):
            if step:  # the second step: the optimiser's buffers exist, the kernels are chosen
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=amp):
                logits = model(images)
            scaler.scale(loss(logits.float(), labels)).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRADIENT_NORM)
            scaler.step(optimizer)
            scaler.update()
        torch.cuda.synchronize()
        peaks[amp] = (torch.cuda.max_memory_allocated() - before) / 2**30
        parameters = sum(p.numel() for p in model.parameters())
        del model, optimizer, scaler, images, labels, logits
    return CudaMemory(plan.estimated_memory_gb, plan.memory_budget_gb, peaks[True], peaks[False],
                      parameters, torch.cuda.get_device_properties(0).total_memory / 2**30)


# -- report -------------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def render(setup: Setup, settings: Settings, training: Training, inference: Inference,
           memory: Memory | CudaMemory) -> list[str]:
    """The section's tables and targets (markdown lines); a :class:`CudaMemory` makes it the
    CUDA section's."""
    cuda = isinstance(memory, CudaMemory)
    plan = setup.plan
    seconds = {name: _median(values) for name, values in training.seconds.items()}
    timed = len(next(iter(training.seconds.values())))
    plain, cached = seconds["MONAI Dataset, DiceCE"], seconds["MONAI CacheDataset, DiceCE"]
    dice_ce, fused = seconds["medtune, dice_ce"], seconds["medtune, dice + CE (fused)"]
    wait = _median(training.wait_share["medtune, dice + CE (fused)"])
    wait_dice_ce = _median(training.wait_share["medtune, dice_ce"])
    sliding = _median(inference.medtune_seconds) / _median(inference.monai_seconds)
    if cuda:
        fits = max(memory.amp_peak_gb, memory.float32_peak_gb) <= memory.budget_gb
        memory_lines = [
            f"| plan's estimate (`estimated_memory_gb`, float32 model) | "
            f"{memory.estimated_gb:.3f} |",
            f"| measured on CUDA: `torch.cuda.max_memory_allocated` of one step as the task trains "
            f"(forward under autocast, DiceCE, backward with GradScaler, SGD) | "
            f"{memory.amp_peak_gb:.3f} |",
            f"| the same step in float32 (no autocast) | {memory.float32_peak_gb:.3f} |",
            f"| parameters | {memory.parameters:,} |",
            f"| budget (80 % of the device's {memory.device_gb:.0f} GiB) | "
            f"{memory.budget_gb:.1f} |",
        ]
        fit_target = (f"CUDA {memory.amp_peak_gb:.2f} GB with autocast, "
                      f"{memory.float32_peak_gb:.2f} GB in float32, of {memory.budget_gb:.1f} GB "
                      f"{_verdict(fits)}; CPU in the CPU scans section.")
        precision = ("; on CUDA with mixed precision on every side (autocast float16, GradScaler; "
                     "module docstring)")
    else:
        fits = memory.peak_growth_gb <= memory.budget_gb
        memory_lines = [
            f"| plan's estimate (`estimated_memory_gb`) | {memory.estimated_gb:.3f} |",
            f"| measured on CPU: peak RSS growth over two steps (forward, DiceCE, backward, SGD) "
            f"in a fresh process | {memory.peak_growth_gb:.3f} |",
            f"| tensors saved by autograd per step (for the activation model) | "
            f"{memory.saved_gb:.3f} |",
            f"| parameters | {memory.parameters:,} |",
            f"| budget | {memory.budget_gb:.1f} |",
            "| measured on CUDA | in the CUDA scans section (`python -m benchmarks.scans --device "
            "cuda`; pending until a GPU machine runs it) |",
        ]
        fit_target = (f"CPU {memory.peak_growth_gb:.2f} GB of {memory.budget_gb:.1f} GB "
                      f"{_verdict(fits)}; CUDA in the CUDA scans section (`--device cuda`).")
        precision = ""
    lines = [
        "### Data and plan", "",
        "| | |", "|---|---|",
        f"| sample | {settings.cases} training cases, {settings.size} x {settings.size} x "
        f"{round(0.4 * settings.size)} voxels, 2 channels (CT, T2), 3 labels; fold 0 of 2 "
        f"trains on {len(setup.folds[0].train)} |",
        f"| plan (3d) | spacing {', '.join(f'{s:.2f}' for s in plan.spacing)} mm, patch "
        f"{' x '.join(map(str, plan.patch_size))}, batch {plan.batch_size}, filters "
        f"{', '.join(map(str, plan.filters))}, budget {plan.memory_budget_gb:.1f} GB |",
        f"| epoch | {settings.iterations} iterations; {settings.rounds} rounds of the four "
        f"sides alternating, the first a warm-up; medians over the other {timed}{precision} |",
        f"| preprocessing before the epochs | medtune cache "
        f"{training.cache_seconds['medtune preprocessing cache']:.1f} s (read, normalise, "
        f"resample, write .npz), MONAI CacheDataset "
        f"{training.cache_seconds['MONAI CacheDataset']:.1f} s (not counted in the epochs) |",
        "",
        "### Training epoch", "",
        "| side | seconds per epoch (median) | data wait share (median) | MONAI Dataset / this "
        "| MONAI CacheDataset / this |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, value in seconds.items():
        share = _median(training.wait_share.get(name, []))
        lines.append(f"| {name} | {value:.2f} | {100 * share:.1f} % | {plain / value:.2f}× "
                     f"| {cached / value:.2f}× |")
    lines += [
        "",
        "Data wait share: time in `next(loader)` over the epoch's time (medtune: per epoch, from "
        "the task's own counters; MONAI: over all its epochs, warm-up included).",
        "",
        "### Sliding window and prediction", "",
        "| | medtune | MONAI | medtune / MONAI |",
        "|---|---:|---:|---:|",
        f"| sliding window, one volume {' x '.join(map(str, inference.shape))} in plan space, "
        f"{inference.windows} windows, overlap {OVERLAP}, Gaussian (s, median of "
        f"{settings.repetitions}) | {_median(inference.medtune_seconds):.3f} | "
        f"{_median(inference.monai_seconds):.3f} | {sliding:.2f}× |",
        f"| max abs difference of the class probabilities | {inference.max_difference:.1e} | | |",
        f"| prediction of one volume {' x '.join(map(str, inference.input_shape[1:]))} "
        f"({inference.input_shape[0]} channels): load model, read, preprocess, sliding window "
        f"over {inference.folds} folds, restore, write (s, median of {settings.repetitions}) | "
        f"{_median(inference.predict_seconds):.2f} | | |",
        "",
        "### Memory of one training step", "",
        "| | GB |", "|---|---:|",
        *memory_lines,
        "",
        "### Targets", "",
        f"- never slower than plain MONAI (≥ {TARGET_NEVER_SLOWER:.1f}×): medtune dice_ce "
        f"{plain / dice_ce:.2f}× {_verdict(plain / dice_ce >= TARGET_NEVER_SLOWER)}; fused "
        f"{plain / fused:.2f}× {_verdict(plain / fused >= TARGET_NEVER_SLOWER)}; against "
        f"CacheDataset: dice_ce {cached / dice_ce:.2f}× "
        f"{_verdict(cached / dice_ce >= TARGET_NEVER_SLOWER)}, fused {cached / fused:.2f}× "
        f"{_verdict(cached / fused >= TARGET_NEVER_SLOWER)}.",
        f"- cached preprocessing + fused loss at least {TARGET_FUSED:.1f}× faster: against "
        f"plain MONAI {plain / fused:.2f}× {_verdict(plain / fused >= TARGET_FUSED)}; against "
        f"CacheDataset {cached / fused:.2f}× {_verdict(cached / fused >= TARGET_FUSED)}.",
        f"- data wait under {100 * TARGET_WAIT:.0f} % of the training step: fused "
        f"{100 * wait:.1f} %, dice_ce {100 * wait_dice_ce:.1f} % "
        f"{_verdict(max(wait, wait_dice_ce) < TARGET_WAIT)}.",
        f"- sliding window at parity with MONAI (time ratio ≤ {PARITY:.2f}, outputs within "
        f"{AGREEMENT:.0e}): {sliding:.2f}×, {inference.max_difference:.1e} "
        f"{_verdict(sliding <= PARITY and inference.max_difference <= AGREEMENT)}.",
        f"- the plan's patch and batch fit its budget: {fit_target}",
    ]
    return lines


def section_name(device: str) -> str:
    """The markers' name of ``device``'s scans section: ``scans`` (CPU), ``scans-cuda``."""
    return SECTION if device == "cpu" else f"{SECTION}-{device}"


def render_section(machine_rows: Sequence[tuple[str, str]], lines: Sequence[str], quick: bool,
                   measured: str, device: str = "cpu") -> str:
    """The whole scans section of ``device`` (``cpu`` or ``cuda``), between its markers."""
    name = section_name(device)
    rows = dict(machine_rows)
    where = f"CUDA, {rows['GPU']}" if device == "cuda" and "GPU" in rows else device.upper()
    header = [
        marker(name, "begin"),
        f"## Scans task: training epoch, sliding window, memory ({where})",
        "",
        "Written by `python -m benchmarks.scans` (options: `--help`; protocol in its docstring); "
        "rerun it instead of editing.",
        "",
    ]
    if quick:
        header += ["**Quick run** (`--quick`): tiny data and one timed epoch, for smoke tests; "
                   "the numbers say nothing.", ""]
    header += ["| | |", "|---|---|", *(f"| {item} | {value} |" for item, value in machine_rows), ""]
    return "\n".join([*header, *lines, "", measured, marker(name, "end")])


def write(path: Path, section: str, name: str = SECTION) -> None:
    """Replace the section ``name`` of ``path`` (``scans``: CPU, ``scans-cuda``: CUDA), or insert
    it after the scans sections before it (``scans-cuda`` after ``scans``), else after the search
    section, else at the end; the rest of the file, the other device's section included, is kept
    as is."""
    previous = path.read_text() if path.exists() else ""
    after = (*([SECTION] if name != SECTION else []), AFTER)
    path.write_text(replace_section(previous, name, section, after))


# -- command line -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks.scans") -> int:
    """Run the scans benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny data, one timed epoch (a smoke test; writes only with --output)")
    parser.add_argument("--output", type=Path, default=None,
                        help="the markdown file to write the section into (default: "
                        f"{DEFAULT_OUTPUT}, except with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 1: steadier on a shared machine)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where every side trains and predicts (default cpu); cuda writes "
                        "the CUDA scans section and needs a CUDA device (else exit status 2)")
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: --device cuda: torch {torch.__version__} sees no CUDA device here",
              file=sys.stderr)
        return 2
    if device == "cuda":
        settings = QUICK_CUDA if args.quick else FULL_CUDA
    else:
        settings = QUICK if args.quick else FULL
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        settings = replace(settings, threads=args.threads)
    command = " ".join([prog, *map(shlex.quote, arguments)])
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    foreign = machine.ForeignLoad()
    start = time.perf_counter()
    try:
        machine_rows = machine.describe(device, command, ROOT, settings.threads)
        with tempfile.TemporaryDirectory(prefix="medtune-scans-bench-") as temporary:
            folder = Path(temporary)
            setup = prepare(folder, settings)
            _progress(f"sample written and planned: patch {setup.plan.patch_size}, batch "
                      f"{setup.plan.batch_size}")
            training, side = run_training(setup, settings, device)
            inference = run_inference(setup, settings, side, folder, device)
            if device == "cuda":
                del side  # its networks leave the GPU before the memory is measured
                memory: Memory | CudaMemory = run_cuda_memory(setup)
                _progress(f"memory: {memory.amp_peak_gb:.3f} GB peak (autocast), "
                          f"{memory.float32_peak_gb:.3f} GB (float32), estimate "
                          f"{memory.estimated_gb:.3f} GB")
            else:
                memory = run_memory(setup, settings, folder)
                _progress(f"memory: {memory.peak_growth_gb:.3f} GB peak growth, estimate "
                          f"{memory.estimated_gb:.3f} GB")
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (tests)
    machine_rows.append(("load average at end (1, 5, 15 min)", machine.load_average()))
    machine_rows.append(("CPU time used by other processes during the run", foreign.describe()))
    measured = (f"Measured by `{command}` on {dict(machine_rows)['date']} in "
                f"{time.perf_counter() - start:.0f} s.")
    section = render_section(machine_rows, render(setup, settings, training, inference, memory),
                             args.quick, measured, device)
    output = args.output if args.output is not None else (None if args.quick else DEFAULT_OUTPUT)
    if output is not None:
        write(output, section, section_name(device))
        _progress(f"wrote {output}")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
