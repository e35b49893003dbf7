"""The gallery example hyperband_bohb (Bertrand2019, Fig. 2.10) runs from its TOML file, its
studies then put side by side by `medtune compare`. A tiny variant (sizes and budgets rewritten
in the TOML text) runs in CI; the full example is a slow test. (glf_small_lesions, Seo2021, has
its own module: test_example_glf.py.)"""

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
HYPERBAND = EXAMPLES / "hyperband_bohb.toml"

#: setting -> value of the tiny hyperband_bohb (a few seconds per method)
HYPERBAND_TINY = {"train_size": "8", "val_size": "8", "timeout": "6", "R": "3", "epochs": "3"}
#: The bracket searchers' keys, which "bayes" does not take (the TOML says to delete them).
BRACKET_KEYS = ("R", "eta", "iterations")


def _study_text(searcher: str, seed: int, tiny: bool) -> str:
    """The hyperband_bohb study of one method and seed, written as the TOML's comment says."""
    text = HYPERBAND.read_text()
    if tiny:
        text = rewrite_settings(text, HYPERBAND_TINY)
    study, rest = text.split("\n[searcher]\n", 1)
    study = rewrite_settings(study, {"name": f'"hyperband_bohb_{searcher}_seed{seed}"', "seed": str(seed)})
    rest = rewrite_settings(rest, {"name": f'"{searcher}"'})
    if searcher == "bayes":
        for key in BRACKET_KEYS:
            rest, count = re.subn(rf"(?m)^{key} = .*\n", "", rest)
            assert count == 1, key
    return f"{study}\n[searcher]\n{rest}"


def _run(path: Path, monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # the whole table on one line per row
    assert main(["run", str(path)]) == 0
    return capsys.readouterr().out


def _trials(study: Path) -> list[dict]:
    with sqlite3.connect(study) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT state, config, metrics, resource, value FROM trials").fetchall()
    return [{**dict(row), "config": json.loads(row["config"]),
             "metrics": json.loads(row["metrics"] or "{}")} for row in rows]


def _run_hyperband(folder: Path, seeds: tuple[int, ...], tiny: bool, monkeypatch,
                   capsys) -> dict[str, list[dict]]:
    studies = {}
    for seed in seeds:
        for searcher in ("bayes", "hyperband", "bohb"):
            path = folder / f"{searcher}_{seed}.toml"
            path.write_text(_study_text(searcher, seed, tiny))
            out = _run(path, monkeypatch, capsys)
            assert "Stopped (timeout)" in out, out[-500:]
            name = f"hyperband_bohb_{searcher}_seed{seed}"
            studies[name] = _trials(folder / "studies" / f"{name}.sqlite")
            assert (folder / "studies" / f"{name}_report" / "best_by_trial.png").stat().st_size
    return studies


def _check_hyperband(studies: dict[str, list[dict]], epochs: float, budget_levels: int) -> None:
    """Every study has completed trials; the bracket searchers trained at ``budget_levels``
    or more resource levels up to ``epochs``, BO every model for the full ``epochs``."""
    for name, trials in studies.items():
        complete = [t for t in trials if t["state"] == "COMPLETE"]
        assert complete and all(0.0 <= t["value"] <= 1.0 for t in complete), name
        assert {t["config"]["loss"] for t in trials} <= {"dice", "tversky", "glf"}
        resources = {t["resource"] for t in trials}
        if "_bayes_" in name:
            assert resources == {None}  # every model trained for the full `epochs`
        else:
            assert None not in resources and len(resources) >= budget_levels, (name, resources)
            assert max(resources) <= epochs, (name, resources)


def _compare(folder: Path, seeds: tuple[int, ...], monkeypatch, capsys) -> None:
    """`medtune compare` over every study of the example: one figure, one row per method whose
    best value is the mean of its studies' best values."""
    studies = [folder / "studies" / f"hyperband_bohb_{searcher}_seed{seed}.sqlite"
               for searcher in ("bayes", "hyperband", "bohb") for seed in seeds]
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["compare", *map(str, studies), "--out", str(folder / "comparison")]) == 0
    out = capsys.readouterr().out
    assert (folder / "comparison" / "comparison.png").stat().st_size > 0
    for searcher in ("bayes", "hyperband", "bohb"):
        best = []
        for seed in seeds:
            with sqlite3.connect(folder / "studies" / f"hyperband_bohb_{searcher}_seed{seed}.sqlite") as db:
                best.append(db.execute("SELECT MAX(value) FROM trials WHERE state = 'COMPLETE'")
                            .fetchone()[0])
        row = next(line for line in out.splitlines() if f" {searcher} " in line)
        assert f"{sum(best) / len(best):.4g} ± " in row and f" {len(seeds)} " in row, row


def test_tiny_hyperband_bohb(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    studies = _run_hyperband(tmp_path, (0,), True, monkeypatch, capsys)
    _check_hyperband(studies, epochs=3, budget_levels=1)
    _compare(tmp_path, (0,), monkeypatch, capsys)
    for name in studies:  # one per searcher
        check_recorded(name, tmp_path / "studies" / f"{name}.sqlite")


@pytest.mark.slow
def test_hyperband_bohb_two_seeds_of_each_method(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    studies = _run_hyperband(tmp_path, (0, 1), False, monkeypatch, capsys)
    _check_hyperband(studies, epochs=9, budget_levels=2)
    _compare(tmp_path, (0, 1), monkeypatch, capsys)
