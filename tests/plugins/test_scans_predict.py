"""Prediction with a kept ``scans`` model: NIfTI outputs in each input's own geometry, scores
against reference labels, test-time augmentation, and inputs that are refused by name."""

from __future__ import annotations

import io
import shutil

import nibabel as nib
import numpy as np
import pytest
from rich.console import Console

from medtune.errors import MedtuneError
from medtune.plugins.scans.sample import write_sample
from medtune.plugins.scans.task import ScansTask
from medtune.study.executors.trial import TrialTask, run_trial
from medtune.study.store import TrialState
from medtune.tasks import load_task

LABELS = {0, 1, 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The sample dataset and the model folder of a one-epoch, two-fold training on it."""
    root = tmp_path_factory.mktemp("scans_predict")
    data = write_sample(root / "phantom", cases=4, size=24).root
    settings = {"data": str(data), "folds": 2, "epochs": 1, "iterations": 2, "batch_size": 2,
                "patch_size": [16, 16, 8], "threads": 1, "device": "cpu"}
    result = run_trial(ScansTask(), TrialTask(1, settings, None, 0, str(root / "artifacts")))
    assert result.state is TrialState.COMPLETE, result.traceback
    return data, root / "artifacts" / "trial_1"


def test_predictions_keep_each_inputs_geometry(trained, tmp_path):
    data, model = trained
    output = tmp_path / "out"
    output.mkdir()
    console = Console(file=io.StringIO(), width=120)
    scores = load_task("scans").predict(model, data / "imagesTs", output,
                                        labels=data / "labelsTs", console=console)
    inputs = sorted((data / "imagesTs").glob("*_0000.nii.gz"))
    assert len(inputs) == 2
    for image_path in inputs:
        name = image_path.name.removesuffix("_0000.nii.gz")
        image = nib.load(image_path)
        predicted = nib.load(output / f"{name}.nii.gz")
        assert predicted.shape == image.shape
        np.testing.assert_allclose(predicted.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(predicted.dataobj)).tolist()) <= LABELS
        case = scores["cases"][name]
        assert set(case) == {"dice_organ", "dice_lesion", "mean_dice"}
        assert all(0.0 <= v <= 1.0 for v in case.values())
    assert scores["mean"]["mean_dice"] == pytest.approx(
        np.mean([s["mean_dice"] for s in scores["cases"].values()]))
    assert "Dice of the predictions" in console.file.getvalue()
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no temporary left


def test_mirroring_and_no_labels(trained, tmp_path):
    data, model = trained
    assert ScansTask().predict(model, data / "imagesTs", tmp_path / "out", tta=True) == {}
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 2


def test_bad_inputs_are_named(trained, tmp_path):
    data, model = trained
    task = ScansTask()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedtuneError, match="no input images"):
        task.predict(model, empty, tmp_path / "out")
    one_channel = tmp_path / "one_channel"
    one_channel.mkdir()
    for path in (data / "imagesTs").glob("*_0000.nii.gz"):
        shutil.copy(path, one_channel / path.name)
    with pytest.raises(MedtuneError, match="is missing"):
        task.predict(model, one_channel, tmp_path / "out")
    no_labels = tmp_path / "labels"
    no_labels.mkdir()
    with pytest.raises(MedtuneError, match="no label"):
        task.predict(model, data / "imagesTs", tmp_path / "out", labels=no_labels)
    with pytest.raises(MedtuneError, match="holds no model.json"):
        task.predict(tmp_path, data / "imagesTs", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


STUDY = """
[study]
name = "scans_workflow"
direction = "maximize"
n_trials = 1
storage = "study.sqlite"

[searcher]
name = "random"

[objective]
task = "scans"

[objective.settings]
data = "phantom"
folds = 2
epochs = 1
iterations = 2
batch_size = 2
patch_size = [16, 16, 8]
threads = 1
device = "cpu"

[space.lr]
type = "categorical"
choices = [0.01]
"""


def test_the_workflow_on_the_command_line(tmp_path, monkeypatch, capsys):
    """sample, plan, a study of the task, export, predict with labels and mirroring."""
    from medtune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(STUDY)
    assert main(["sample", "phantom", "--cases", "4", "--size", "24"]) == 0
    assert "next: medtune plan phantom" in capsys.readouterr().out
    assert main(["plan", "phantom"]) == 0
    assert (tmp_path / "phantom" / "plan.json").is_file()
    assert main(["run", "study.toml"]) == 0
    assert main(["export", "study.sqlite", "model"]) == 0
    assert (tmp_path / "model" / "fold_1" / "weights.pt").is_file()
    capsys.readouterr()
    assert main(["predict", "model", "--input", "phantom/imagesTs", "--output", "out",
                 "--labels", "phantom/labelsTs", "--tta"]) == 0
    printed = capsys.readouterr().out
    assert "Dice of the predictions" in printed and "case_004" in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_004.nii.gz", "case_005.nii.gz"]
