"""`medtune run CONFIG --scale S`: the [scale] table's settings, searcher options and study keys
multiplied by S, in a study file of its own, and every mistake refused before anything is
written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from medtune.cli import main
from medtune.config import ConfigError, load_config, parse_config
from medtune.studies import DEMO_CONFIG

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

STUDY = """
[study]
name = "scaled"
n_trials = 10
timeout = 100.0

[searcher]
name = "grid"
repeats = 2

[objective]
function = "tests.framework.test_scale:objective"

[objective.settings]
train_size = 10
epochs = 3
lr = 0.01
label = "small"

[space.width]
type = "ordinal"
values = [4, 8]

[scale]
settings = ["train_size", "epochs", "lr"]
searcher = ["repeats"]
"""


def objective(config, resource, seed, report):
    """Returns the settings the trial saw, so a test can check what was scaled."""
    return {"value": float(config["width"]), "train_size": float(config["train_size"]),
            "epochs": float(config["epochs"]), "lr": float(config["lr"])}


def test_scaling_rules_and_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(STUDY, tmp_path / "exp.toml", scale=2.5)
    assert config.settings["train_size"] == 25 and isinstance(config.settings["train_size"], int)
    assert config.settings["epochs"] == 8  # 7.5 rounded
    assert config.settings["lr"] == pytest.approx(0.025)  # floats multiplied
    assert config.settings["label"] == "small"  # not listed, untouched
    assert config.searcher_options["repeats"] == 5
    assert config.name == "scaled_x2.5"
    assert config.storage == tmp_path / "studies" / "scaled_x2.5.sqlite"
    # the stored text records the factor: the study resumes at its own size
    stored = parse_config(config.source, "stored")
    assert stored.settings == config.settings and stored.name == config.name
    # a small factor never brings an integer below 1
    small = parse_config(STUDY, "exp.toml", scale=0.01)
    assert small.settings["epochs"] == 1 and small.searcher_options["repeats"] == 1
    # without --scale the [scale] table changes nothing
    plain = parse_config(STUDY, tmp_path / "exp.toml")
    assert plain.settings["epochs"] == 3 and plain.name == "scaled" and plain.scale.factor == 1


def test_study_keys_scale_and_explicit_storage_gets_the_suffix(tmp_path):
    text = STUDY.replace('searcher = ["repeats"]', 'study = ["n_trials", "timeout"]').replace(
        'name = "scaled"', 'name = "scaled"\nstorage = "out/run.sqlite"')
    config = parse_config(text, "exp.toml", scale=3)
    assert config.n_trials == 30 and config.timeout == pytest.approx(300.0)
    assert config.storage.name == "run_x3.sqlite" and config.storage.parent.name == "out"


@pytest.mark.parametrize("text,scale,message", [
    (STUDY, 0, "--scale must be a positive number"),
    (STUDY, -2, "--scale must be a positive number"),
    (STUDY.split("[scale]")[0], 2, "--scale needs a [scale] table"),
    (STUDY.replace('"lr"]', '"lr", "depth"]'), 2, "'depth' is not set in [objective.settings]"),
    (STUDY.replace('"lr"]', '"lr", "label"]'), 2, 'label = \'small\' is not a number'),
    (STUDY.replace('searcher = ["repeats"]', 'searcher = ["eta"]'), 2, "'eta' is not set in [searcher]"),
    (STUDY.replace('searcher = ["repeats"]', 'study = ["seed"]'), 2, "only n_trials and timeout"),
    (STUDY.replace('searcher = ["repeats"]', 'searcher = ["repeats"]\nsize = 2'), 2,
     "scale: unknown key(s) size"),
    (STUDY.replace('settings = ["train_size", "epochs", "lr"]\nsearcher = ["repeats"]', ""), None,
     "scale: lists nothing to multiply"),
])
def test_bad_scales_are_refused(text, scale, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "exp.toml", scale=scale)
    assert message in str(err.value) and str(err.value).startswith("exp.toml")


def test_run_with_scale_writes_its_own_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.toml"
    path.write_text(STUDY)
    assert main(["run", str(path), "--scale", "2"]) == 0
    scaled = tmp_path / "studies" / "scaled_x2.sqlite"
    with sqlite3.connect(scaled) as db:
        metrics = [row[0] for row in db.execute("SELECT metrics FROM trials")]
    assert len(metrics) == 8  # 2 widths x repeats 2 scaled to 4
    assert all('"epochs": 6.0' in m and '"train_size": 20.0' in m for m in metrics), metrics
    assert not (tmp_path / "studies" / "scaled.sqlite").exists()
    # the default size is a separate study, so both coexist
    assert main(["run", str(path)]) == 0
    assert (tmp_path / "studies" / "scaled.sqlite").exists()
    capsys.readouterr()
    # resuming the scaled study keeps its size (nothing left to run: it stops at once)
    assert main(["resume", str(scaled)]) == 0
    assert "scaled_x2" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--scale", "0"], "--scale must be a positive number"),
    (["--scale", "nan"], "--scale must be a positive number"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    path = tmp_path / "exp.toml"
    path.write_text(STUDY)
    assert main(["run", str(path), *argv]) == 2
    out = capsys.readouterr().out
    assert message in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "studies").exists()


def test_cli_scale_without_scale_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    path = tmp_path / "exp.toml"
    path.write_text(STUDY.split("[scale]")[0])
    assert main(["run", str(path), "--scale", "2"]) == 2
    assert "--scale needs a [scale] table" in capsys.readouterr().out
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize("path", [DEMO_CONFIG, *sorted(EXAMPLES.glob("*.toml"))],
                         ids=lambda p: p.name)
def test_every_shipped_config_scales(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain, doubled = load_config(path), load_config(path, scale=2)
    assert plain.scale is not None, f"{path.name} has no [scale] table"
    assert doubled.name == plain.name + "_x2" and doubled.storage != plain.storage
    for key in plain.scale.settings:
        assert doubled.settings[key] == pytest.approx(2 * plain.settings[key]), key
    for key in plain.scale.searcher:
        assert doubled.searcher_options[key] == 2 * plain.searcher_options[key], key
