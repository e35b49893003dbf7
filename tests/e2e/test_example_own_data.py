"""The own-scans workflow as the README's section "Your own scans" gives it: its commands
(``medtune sample``, ``plan``, ``run`` of examples/own_data_3d.toml, ``export``, ``predict``)
run in order in an empty folder, the example in its tiny variant (one configuration trained
two epochs, a few batches each). The predictions must be label maps of the dataset's labels on
each input's own grid (shape and affine). Without the dataset, the example fails in one line
naming the command that writes it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np

from medtune.cli import main
from tests.conftest import rewrite_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_data_3d.toml"
README = ROOT / "README.md"
#: setting -> value of the tiny variant: Hyperband with R = 2 < eta is one bracket of one
#: configuration trained for R = 2 epochs, of 2 batches per fold and epoch
TINY = {"R": "2", "iterations": "2"}


def readme_commands() -> list[list[str]]:
    """The ``medtune`` commands of the first bash block of the README's "Your own scans"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Your own scans\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's section 'Your own scans' has no ```bash block"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [words for words in commands if words and words[0] == "medtune"]


def test_readme_commands_train_export_and_predict_on_input_grids(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    tiny = tmp_path / "own_data_3d_tiny.toml"
    tiny.write_text(rewrite_settings(EXAMPLE.read_text(), TINY))
    commands = readme_commands()
    assert [words[1] for words in commands] == ["sample", "plan", "run", "export", "predict"]
    outputs = {}
    for words in commands:
        arguments = [str(tiny) if word == "examples/own_data_3d.toml" else word
                     for word in words[1:]]
        assert main(arguments) == 0, words
        outputs[words[1]] = capsys.readouterr().out
    assert "wrote dataset OrganPhantom to data" in outputs["sample"]
    assert "wrote data/plan.json" in outputs["plan"]
    assert "1 complete, 0 pruned, 0 failed" in outputs["run"]

    export = dict(zip(["study", "out"], commands[3][2:]))
    model = tmp_path / export["out"]
    manifest = json.loads((model / "medtune_model.json").read_text())
    assert manifest["task"] == "scans" and manifest["study"] == "own_data_3d"
    assert {"loss", "lr"} <= set(manifest["config"])
    for name in ("model.json", "plan.json", "fold_0/weights.pt", "fold_1/weights.pt"):
        assert (model / name).stat().st_size > 0, name

    predict = commands[4]
    inputs, output = (tmp_path / predict[predict.index(flag) + 1]
                      for flag in ("--input", "--output"))
    assert "--labels" in predict and "--tta" in predict
    dataset = json.loads((tmp_path / "data" / "dataset.json").read_text())
    labels = set(dataset["labels"].values())
    cases = sorted(path.name.removesuffix("_0000.nii.gz") for path in inputs.glob("*_0000.nii.gz"))
    assert cases and sorted(p.name for p in output.iterdir()) == [f"{c}.nii.gz" for c in cases]
    for case in cases:
        image = nib.load(inputs / f"{case}_0000.nii.gz")
        prediction = nib.load(output / f"{case}.nii.gz")
        assert prediction.shape == image.shape, case
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-5, err_msg=case)
        values = np.asarray(prediction.dataobj)
        assert np.array_equal(values, np.round(values)) and set(np.unique(values)) <= labels, case
        assert f"{case} " in outputs["predict"], case  # its row of the Dice table
    assert "mean" in outputs["predict"] and "Predictions of trial" in outputs["predict"]


def test_without_the_dataset_the_example_says_to_write_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["run", str(EXAMPLE)]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, out
    assert out.startswith("error:") and "data" in out and "medtune sample data" in out, out
    assert not (tmp_path / "studies").exists()
