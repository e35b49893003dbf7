"""The organ-phantom examples of Bertrand2019 run from their TOML files: transfer_organs (table 3.1)
and template_deformation (table 4.2). A tiny variant of each (sizes rewritten in the TOML text)
runs in the default run, the examples as shipped are slow tests."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from medtune.cli import main
from tests.conftest import rewrite_settings
from tests.e2e.recorded import check_recorded

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRANSFER = EXAMPLES / "transfer_organs.toml"
TEMPLATE = EXAMPLES / "template_deformation.toml"

#: setting -> value of the tiny transfer_organs (one epoch per network, every method once)
TRANSFER_TINY = {"image_size": "32", "train_adults": "3", "test_adults": "2", "train_children": "2",
                 "test_children": "2", "width": "2", "hidden": "2", "source_epochs": "1",
                 "epochs": "1", "repeats": "1"}
#: setting -> value of the tiny template_deformation (the implicit refinement shortened too)
TEMPLATE_TINY = {"image_size": "32", "train_size": "5", "val_size": "5", "epochs": "1",
                 "repeats": "1",
                 "threads": '1\nimplicit_options = {global_iterations = 3, local_iterations = 3, '
                            'widths = [1.0]}'}


def _methods(text: str) -> list[str]:
    block = re.search(r"(?ms)^\[space\.method\].*?^choices = \[(.*?)\]", text).group(1)
    return re.findall(r'"([^"]+)"', block)


def _run_and_check(path: Path, folder: Path, study: str, metrics: set[str], monkeypatch,
                   capsys) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the whole table on one line per row
    text = path.read_text()
    repeats = int(re.search(r"(?m)^repeats = (\d+)", text).group(1))
    methods = _methods(text)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    spread = ".*±" if repeats > 1 else ""  # one value per row is shown without a spread
    for method in methods:  # one table row per method, mean (± std) over the repeats
        assert re.search(rf"│ {re.escape(method)}\s{spread}.*│ {repeats} │", out), method
    with sqlite3.connect(folder / "studies" / f"{study}.sqlite") as db:
        rows = db.execute("SELECT state, config, metrics FROM trials").fetchall()
    assert len(rows) == len(methods) * repeats
    assert all(state == "COMPLETE" for state, _, _ in rows)
    assert sorted(json.loads(config)["method"] for _, config, _ in rows) == sorted(methods * repeats)
    for _, _, values in rows:
        values = json.loads(values)
        assert metrics <= set(values)
        assert all(0.0 <= values[name] <= 1.0 for name in ("dice_adult", "dice_child"))
    assert (folder / "studies" / f"{study}_report" / "index.html").stat().st_size > 0


TRANSFER_METRICS = {"dice_adult", "dice_child", "parameters_added", "seconds_per_epoch"}
TEMPLATE_METRICS = {"dice_adult", "dice_child", "components", "parameters", "seconds_per_epoch"}


def test_tiny_transfer_organs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / TRANSFER.name
    path.write_text(rewrite_settings(TRANSFER.read_text(), TRANSFER_TINY))
    _run_and_check(path, tmp_path, "transfer_organs", TRANSFER_METRICS, monkeypatch, capsys)
    check_recorded("transfer_organs", tmp_path / "studies" / "transfer_organs.sqlite")


def test_tiny_template_deformation(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / TEMPLATE.name
    path.write_text(rewrite_settings(TEMPLATE.read_text(), TEMPLATE_TINY))
    _run_and_check(path, tmp_path, "template_deformation", TEMPLATE_METRICS, monkeypatch, capsys)
    check_recorded("template_deformation", tmp_path / "studies" / "template_deformation.sqlite")


@pytest.mark.slow
def test_transfer_organs_as_shipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_and_check(TRANSFER, tmp_path, "transfer_organs", TRANSFER_METRICS, monkeypatch, capsys)


@pytest.mark.slow
def test_template_deformation_as_shipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_and_check(TEMPLATE, tmp_path, "template_deformation", TEMPLATE_METRICS, monkeypatch,
                   capsys)
