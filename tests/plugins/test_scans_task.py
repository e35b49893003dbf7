"""The ``scans`` task: settings checks, patch sampling, the out-of-memory retry, a tiny
cross-validated training on the sample dataset that keeps its model, and the ``sample`` and
``plan`` commands."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medtune.errors import MedtuneError
from medtune.plugins.scans import task as task_module
from medtune.plugins.scans.plan import Plan
from medtune.plugins.scans.task import (
    PatchBatches,
    ScansTask,
    TrainingCase,
    foreground_voxels,
    shrunk,
)
from medtune.study.executors.trial import TrialTask, run_trial
from medtune.study.store import FailureReason, TrialState

#: Small enough to train two folds for two epochs in seconds on one CPU thread.
TINY = {"folds": 2, "epochs": 2, "iterations": 2, "batch_size": 2, "patch_size": [16, 16, 8],
        "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The sample dataset (4 training cases of 24 x 24 x 10 voxels) with its plan.json."""
    from medtune.cli import main

    folder = tmp_path_factory.mktemp("scans") / "phantom"
    assert main(["sample", str(folder), "--cases", "4", "--size", "24"]) == 0
    assert main(["plan", str(folder)]) == 0
    return folder


def _plan(configuration: str = "3d", patch=(16, 16, 8), batch: int = 2) -> Plan:
    plan = Plan(dataset="phantom", channels=("CT", "T2"),
                labels={"background": 0, "organ": 1, "lesion": 2}, configuration=configuration,
                spacing=(0.8, 0.8, 2.5), normalisation=({"scheme": "zscore"}, {"scheme": "zscore"}),
                patch_size=tuple(patch), batch_size=batch, kernels=(), strides=(), filters=(16,),
                memory_budget_gb=4.0, estimated_memory_gb=0.0, median_shape=(24, 24, 10))
    return plan.with_overrides(patch_size=tuple(patch))


def _case(shape=(20, 12, 6)) -> TrainingCase:
    label = np.zeros(shape, np.int16)
    label[5:9, 5:9, 2:4] = 1
    label[6, 6, 3] = 2
    image = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    return TrainingCase(image, label, foreground_voxels(label, (1, 2), np.random.default_rng(0)))


@pytest.mark.parametrize("settings, message", [
    ({"configuration": "4d"}, "configuration must be one of 3d, 2d"),
    ({"patch_size": [16, 16]}, "patch_size must be 3 whole numbers"),
    ({"patch_size": "16x16"}, "patch_size must be 3 whole numbers"),
    ({"patch_size": "16x16xa"}, "patch_size must be 3 whole numbers"),
    ({"configuration": "2d", "patch_size": [16, 16, 8]}, "patch_size must be 2 whole numbers"),
    ({"oversample_foreground": 1.5}, "oversample_foreground must be in"),
    ({"sw_overlap": 1.0}, "sw_overlap must be in"),
    ({"ce_weight": 1.0}, "dice_ce has its own"),
    ({"loss": "glf", "loss_options": {"adaptive": "exploratory"}, "ce_weight": 1.0},
     "set ce_weight = 0"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda"),
    ({"loss": "dice_ec"}, "did you mean 'dice_ce'"),
])
def test_settings_are_checked_before_any_work(settings, message):
    with pytest.raises(MedtuneError, match=message):
        ScansTask()(settings)


def test_a_patch_size_may_be_a_string_that_a_categorical_parameter_searches():
    assert ScansTask().validate({"patch_size": "32x32x16"})["patch_size"] == (32, 32, 16)
    assert ScansTask().validate({"patch_size": [32, 32, 16]})["patch_size"] == (32, 32, 16)


def test_a_missing_dataset_folder_is_refused_before_the_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = ScansTask()
    with pytest.raises(MedtuneError, match="`medtune sample data`"):
        task.preflight(task.validate({}))


def test_a_broken_case_is_refused_before_the_study_when_there_is_no_plan(data, tmp_path, monkeypatch):
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    (copy / "plan.json").unlink()
    path = copy / "imagesTr/case_001_0000.nii.gz"
    image = nib.load(str(path))
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    voxels[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), str(path))
    monkeypatch.chdir(tmp_path)
    task = ScansTask()
    with pytest.raises(MedtuneError, match="case_001.*NaN"):
        task.preflight(task.validate({}))
    assert not (copy / "plan.json").exists()


def test_a_missing_data_folder_is_named(tmp_path):
    with pytest.raises(MedtuneError, match="does not exist"):
        ScansTask()({"data": str(tmp_path / "nowhere"), **TINY})


@pytest.mark.parametrize("configuration, patch", [("3d", (16, 16, 8)), ("2d", (16, 16))])
def test_patches_are_padded_oversampled_and_augmented(configuration, patch):
    plan = _plan(configuration, patch)
    batches = PatchBatches([_case()], plan, iterations=4, oversample_foreground=1.0,
                           augment=task_module.augmentation(plan), seed=(0, 0))
    drawn = list(batches)
    assert len(drawn) == 4
    for images, labels in drawn:
        assert images.shape == (2, 2, *patch) and images.dtype == torch.float32
        assert labels.shape == (2, 1, *patch) and labels.dtype == torch.int64
        # every patch is centred on foreground (the case is padded to hold the patch)
        assert all((labels[i] > 0).any() for i in range(2))
    again = list(PatchBatches([_case()], plan, iterations=4, oversample_foreground=1.0,
                              augment=task_module.augmentation(plan), seed=(0, 0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(drawn, again))


def test_uniform_patches_follow_nnunet_share():
    plan = _plan(batch=3)
    batches = PatchBatches([_case()], plan, iterations=1, oversample_foreground=0.33,
                           augment=None, seed=(0, 0))
    assert batches.uniform == 2  # round(3 * 0.67): the last patch of each batch is foreground


def test_out_of_memory_shrinks_the_batch_then_the_patch():
    plan = _plan(batch=2)
    assert shrunk(plan).batch_size == 1
    smaller = shrunk(shrunk(plan))
    assert smaller.batch_size == 1 and math.prod(smaller.patch_size) == math.prod(plan.patch_size) // 2
    assert all(p % d == 0 for p, d in zip(smaller.patch_size, np.prod(smaller.strides, axis=0)))


def _run(settings, data, tmp_path, resource=None):
    trial = TrialTask(trial_id=1, config={"data": str(data), **settings}, resource=resource, seed=0,
                      artifact_dir=str(tmp_path / "artifacts"))
    return run_trial(ScansTask(), trial)


def test_trains_cross_validated_and_keeps_its_model(data, tmp_path):
    result = _run(TINY, data, tmp_path)
    assert result.state is TrialState.COMPLETE, result.traceback
    assert 0.0 <= result.value <= 1.0
    assert [step for step, _ in result.execution.intermediate] == [1.0, 2.0]
    assert result.execution.intermediate[-1][1] == pytest.approx(result.value)
    metrics = result.execution.metrics
    folds = [metrics["fold_0_dice"], metrics["fold_1_dice"]]
    assert result.value == pytest.approx(np.mean(folds))
    for name in ("organ", "lesion"):
        assert 0.0 <= metrics[f"dice_{name}"] <= 1.0
        assert 0.0 <= metrics[f"surface_dice_{name}"] <= 1.0
    assert metrics["batch_size_used"] == 2 and metrics["patch_voxels_used"] == 16 * 16 * 8
    assert metrics["oom_retries"] == 0 and metrics["seconds_per_epoch"] > 0
    assert 0.0 < metrics["data_wait_share"] < 1.0
    kept = tmp_path / "artifacts" / "trial_1"
    assert result.kept_artifacts and kept.is_dir()
    model = json.loads((kept / "model.json").read_text())
    assert model["task"] == "scans" and model["format_version"] == 1
    assert [f["index"] for f in model["folds"]] == [0, 1]
    plan = Plan.from_json(json.loads((kept / "plan.json").read_text()))
    assert plan.patch_size == (16, 16, 8) and plan == Plan.from_json(model["plan"])
    for fold in (0, 1):
        state = torch.load(kept / f"fold_{fold}" / "weights.pt", weights_only=True)
        assert state and all(torch.isfinite(t).all() for t in state.values())


def test_two_dimensional_and_exploratory_glf_train(data, tmp_path):
    settings = {**TINY, "epochs": 1, "iterations": 1, "configuration": "2d", "patch_size": [16, 16],
                "loss": "glf", "loss_options": {"adaptive": "exploratory"},
                "exploratory_options": {"candidate_forwards": "loop"}}
    result = _run(settings, data, tmp_path)
    assert result.state is TrialState.COMPLETE, result.traceback
    assert math.isfinite(result.value)
    assert len(result.execution.metrics["glf_alpha_p"]) == 1


class _MemoryLimit(torch.nn.Module):
    """A network that runs out of memory when a forward holds more than ``limit`` voxels."""

    def __init__(self, network: torch.nn.Module, limit: int):
        super().__init__()
        self.network, self.limit = network, limit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] * math.prod(images.shape[2:]) > self.limit:
            raise torch.OutOfMemoryError("out of memory (a test's limit)")
        return self.network(images)


@pytest.fixture
def memory_limit(monkeypatch):
    """Set the voxels a forward may hold."""
    def limit(voxels: int) -> None:
        build = task_module.build_network
        monkeypatch.setattr(task_module, "build_network",
                            lambda plan: _MemoryLimit(build(plan), voxels))
    return limit


def test_out_of_memory_retries_once_with_half_the_batch(data, tmp_path, memory_limit):
    memory_limit(16 * 16 * 8 + 1)  # a batch of 2 patches does not fit, one does
    result = _run({**TINY, "epochs": 1, "iterations": 1}, data, tmp_path, resource=1)
    assert result.state is TrialState.COMPLETE, result.traceback
    metrics = result.execution.metrics
    assert metrics["batch_size_used"] == 1 and metrics["oom_retries"] == 1
    assert metrics["patch_voxels_used"] == 16 * 16 * 8


def test_a_second_out_of_memory_fails_the_trial(data, tmp_path, memory_limit):
    memory_limit(16 * 16 * 8 // 2 - 1)  # not even half the patch fits
    result = _run({**TINY, "batch_size": 1, "epochs": 1, "iterations": 1}, data, tmp_path)
    assert result.state is TrialState.FAIL
    assert result.failure_reason is FailureReason.OUT_OF_MEMORY
    assert not (tmp_path / "artifacts" / "trial_1").exists()
