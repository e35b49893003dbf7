"""`medtune export` and `medtune predict`: a trial's artifacts copied out with their manifest,
and predictions delegated to the task that trained them; every refusal is one line, exit 2,
with nothing written."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import medtune
import medtune.registry as registry_module
from medtune.cli import main
from medtune.registry import Registry
from medtune.study import RunOptions, StudyStore, run_study
from medtune.tasks import ConfiguredObjective
from tests.framework import artifact_fakes
from tests.framework.study_fakes import FakeSearcher

CONFIG = """
[study]
name = "painted"
direction = "minimize"
keep_best = {keep_best}

[objective]
{objective}

[space.x]
type = "float"
low = -1
high = 1
"""


@pytest.fixture(autouse=True)
def fake_tasks(monkeypatch):
    """The tasks of :mod:`tests.framework.artifact_fakes`, and no other plugin."""
    registry = Registry(entry_points=[])
    registry.register(artifact_fakes.FakeTasks(), "fake_tasks")
    monkeypatch.setattr(registry_module, "_REGISTRY", registry)
    artifact_fakes.predictions.clear()


def _study(folder: Path, task: str = "painter", keep_best: int = 0, n_trials: int = 4) -> Path:
    path = folder / "s.db"
    if ":" in task:
        objective, line = task, f'function = "{task}"'
    else:
        objective, line = ConfiguredObjective(task), f'task = "{task}"'
    text = CONFIG.format(keep_best=keep_best, objective=line)
    with StudyStore.create(path, name="painted", seed=1, config_text=text) as store:
        run_study(store, FakeSearcher(store.seed), objective,
                  RunOptions(n_trials=n_trials, keep_best=keep_best, progress=False))
    return path


def _refused(capsys, *args: str) -> str:
    """The one line ``medtune ARGS`` prints when it refuses (exit 2)."""
    capsys.readouterr()
    assert main(list(args)) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ") and out.count("\n") == 1, out
    return out.strip()


def _folders(tmp_path: Path, count: int = 2) -> list[Path]:
    folders = []
    for name in ("inputs", "labels")[:count]:
        (tmp_path / name).mkdir()
        for case in ("case_1.nii.gz", "case_2.nii.gz"):
            (tmp_path / name / case).write_text(name)
        folders.append(tmp_path / name)
    return folders


def test_export_copies_the_best_trial_with_its_manifest(tmp_path, capsys):
    study, out = _study(tmp_path), tmp_path / "models" / "best"
    assert main(["export", str(study), str(out)]) == 0
    with StudyStore(study, read_only=True) as store:
        best = store.best_trial()
    assert f"Exported trial {best.id} of study painted" in capsys.readouterr().out
    assert json.loads((out / "weights.json").read_text()) == {"x": best.config["x"]}
    assert (out / "fold_0" / "bias.txt").read_text() == str(best.config["index"])
    manifest = json.loads((out / "medtune_model.json").read_text())
    exported = datetime.fromisoformat(manifest.pop("exported"))
    assert exported.utcoffset() == timedelta(0)
    assert datetime.now(timezone.utc) - exported < timedelta(minutes=5)
    assert manifest == {"format_version": 1, "task": "painter", "study": "painted",
                        "trial": best.id, "value": best.value, "direction": "minimize",
                        "config": best.config, "medtune_version": medtune.__version__}
    assert sorted(p.name for p in out.parent.iterdir()) == ["best"]  # no temporary left
    assert (tmp_path / "s.artifacts" / f"trial_{best.id}" / "weights.json").is_file()  # copied


def test_export_a_chosen_trial(tmp_path):
    study, out = _study(tmp_path), tmp_path / "two"
    assert main(["export", str(study), "--trial", "2", str(out)]) == 0
    manifest = json.loads((out / "medtune_model.json").read_text())
    with StudyStore(study, read_only=True) as store:
        assert (manifest["trial"], manifest["value"]) == (2, store.trial(2).value)


def test_export_refusals_name_the_problem_and_write_nothing(tmp_path, capsys):
    study = _study(tmp_path, keep_best=1)
    with StudyStore(study, read_only=True) as store:
        best, worst = store.best_trial(), max(store.trials(), key=lambda t: t.value)
    out = tmp_path / "out"
    message = _refused(capsys, "export", str(study), "--trial", str(worst.id), str(out))
    assert f"trial {worst.id} of {study} (COMPLETE) keeps no artifacts" in message
    assert "medtune.study.artifacts.trial_folder()" in message and "keep_best = 1" in message
    assert message.endswith(f"the trials that keep them: {best.id}")
    assert f"{study} has no trial 99" in _refused(capsys, "export", str(study), "--trial", "99",
                                                  str(out))
    assert not out.exists()
    out.mkdir()
    assert _refused(capsys, "export", str(study), str(out)) == (
        f"error: {out} already exists: export into a new folder")
    bare = tmp_path / "bare"
    bare.mkdir()
    message = _refused(capsys, "export", str(_study(bare, "tests.framework.artifact_fakes:"
                                                          "keeps_nothing")), str(bare / "out"))
    assert "no trial of" in message and "keeps artifacts" in message
    assert "trial_folder()" in message and "keep_best" in message
    assert not (bare / "out").exists()


def test_predict_with_an_exported_model_delegates_to_its_task(tmp_path, capsys):
    study, model = _study(tmp_path), tmp_path / "model"
    assert main(["export", str(study), str(model)]) == 0
    inputs, labels = _folders(tmp_path)
    output = tmp_path / "predictions" / "run1"
    assert main(["predict", str(model), "--input", str(inputs), "--output", str(output),
                 "--labels", str(labels), "--tta"]) == 0
    assert artifact_fakes.predictions == [{"model_folder": model, "inputs": inputs,
                                           "output": output, "labels": labels, "tta": True}]
    x = json.loads((model / "weights.json").read_text())["x"]
    assert {p.name: p.read_text() for p in output.iterdir()} == {
        "case_1.nii.gz": f"{x} True", "case_2.nii.gz": f"{x} True"}
    trial = json.loads((model / "medtune_model.json").read_text())["trial"]
    assert f"Predictions of trial {trial} of study painted" in capsys.readouterr().out


def test_predict_with_a_study_uses_its_best_trial_that_kept_artifacts(tmp_path):
    study = _study(tmp_path, keep_best=2)
    (inputs,) = _folders(tmp_path, 1)
    output = tmp_path / "out"
    output.mkdir()  # an empty folder is fine
    assert main(["predict", str(study), "--input", str(inputs), "--output", str(output)]) == 0
    with StudyStore(study, read_only=True) as store:
        best = store.best_trial()
    (call,) = artifact_fakes.predictions
    assert call["model_folder"] == tmp_path / "s.artifacts" / f"trial_{best.id}"
    assert call["labels"] is None and call["tta"] is False


def test_a_model_from_a_newer_medtune_is_refused_and_nothing_is_written(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["export", str(_study(tmp_path)), str(model)]) == 0
    manifest = json.loads((model / "medtune_model.json").read_text())
    (model / "medtune_model.json").write_text(json.dumps({**manifest, "format_version": 2}))
    (inputs,) = _folders(tmp_path, 1)
    output = tmp_path / "out"
    assert _refused(capsys, "predict", str(model), "--input", str(inputs), "--output",
                    str(output)) == (f"error: {model} was exported by a newer medtune (format 2, "
                                     "this one reads up to 1): upgrade medtune")
    assert not output.exists() and artifact_fakes.predictions == []


def test_predict_checks_its_folders_before_writing(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["export", str(_study(tmp_path)), str(model)]) == 0
    (inputs,) = _folders(tmp_path, 1)
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.nii.gz").write_text("mine")
    args = ("predict", str(model), "--input", str(inputs), "--output")
    assert "is not an empty folder: predict into a new or empty folder" in _refused(
        capsys, *args, str(output))
    assert [p.name for p in output.iterdir()] == ["old.nii.gz"]
    fresh = tmp_path / "fresh"
    assert f"--input {tmp_path / 'nowhere'}: no such folder" in _refused(
        capsys, "predict", str(model), "--input", str(tmp_path / "nowhere"), "--output",
        str(fresh))
    assert f"--labels {tmp_path / 'nolabels'}: no such folder" in _refused(
        capsys, *args, str(fresh), "--labels", str(tmp_path / "nolabels"))
    assert f"{inputs} has no medtune_model.json" in _refused(
        capsys, "predict", str(inputs), "--input", str(inputs), "--output", str(fresh))
    assert "no such exported model or study" in _refused(
        capsys, "predict", str(tmp_path / "missing"), "--input", str(inputs), "--output",
        str(fresh))
    assert not fresh.exists() and artifact_fakes.predictions == []


def test_a_task_that_cannot_predict_leaves_no_output_folder(tmp_path, capsys):
    study = _study(tmp_path, "mute")
    (inputs,) = _folders(tmp_path, 1)
    output = tmp_path / "out"
    assert "task 'mute' cannot predict" in _refused(
        capsys, "predict", str(study), "--input", str(inputs), "--output", str(output))
    assert not output.exists()


def test_a_function_objective_cannot_predict(tmp_path, capsys):
    study = _study(tmp_path, "tests.framework.artifact_fakes:keeps_weights")
    (inputs,) = _folders(tmp_path, 1)
    assert "trained by the objective tests.framework.artifact_fakes:keeps_weights, a function, " \
           "not a task" in _refused(capsys, "predict", str(study), "--input", str(inputs),
                                    "--output", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
