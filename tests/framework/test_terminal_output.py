"""What the terminal shows: user strings verbatim (never read as Rich markup or emoji codes),
whole values when the output is piped, numbers to significant digits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rich.console import Console
from rich.table import Table

from medtune.cli import main
from medtune.study import StudyStore
from medtune.tables import format_config, format_number, verbatim

#: a choice longer than an 80-column table could show
LONG_CHOICE = "lesion_" * 14 + "end"

#: every choice, by the value the objective gives it (the first is the best)
CHOICES = {"[/x]": 0.1, "[bold]y": 0.2, ":warning:": 0.3, LONG_CHOICE: 0.4}

STUDY = f"""
[study]
name = "[bold]odd[/x] study"
storage = "studies/odd.sqlite"
direction = "minimize"

[searcher]
name = "grid"

[objective]
function = "tests.framework.test_terminal_output:bracketed"

[space.choice]
type = "categorical"
choices = {list(CHOICES)!r}

[space.lr]
type = "categorical"
choices = [0.029999999999999995]

[table]
rows = ["choice"]
columns = ["value", "[red]dice"]
"""


def bracketed(config, resource, seed, report):
    """A value per choice, and metrics whose names hold markup."""
    value = CHOICES[config["choice"]]
    return {"value": value, "[red]dice": 1 - value, "loss[/]": 2 * value}


def test_bracketed_user_strings_are_printed_verbatim_by_run_and_status(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(STUDY)
    assert main(["run", "study.toml"]) == 0
    out = capsys.readouterr().out
    assert "Report:" in out and (tmp_path / "studies" / "odd_report" / "index.html").exists()
    for text in ("[bold]odd[/x] study: best trials", "choice=[/x]", "choice=[bold]y",
                 "choice=:warning:", f"choice={LONG_CHOICE}", "[red]dice", "loss[/]",
                 "[bold]odd[/x] study: mean ± std by choice"):
        assert text in out, text
    results = [line for line in out.splitlines() if line.startswith("│ [")]
    assert any("[/x]" in line and "0.900" in line for line in results), out  # the [table] row

    assert main(["status", str(tmp_path / "studies" / "odd.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "[bold]odd[/x] study" in out
    assert f"Best: trial 1, value 0.1, config choice=[/x], lr=0.03" in out


def test_piped_output_shows_whole_values_and_short_numbers(tmp_path):
    path = tmp_path / "piped.sqlite"
    with StudyStore.create(path, name="piped", direction="minimize") as store:
        trial = store.create_trial(suggestion_id=0, seed=0,
                                   config={"dataset": LONG_CHOICE, "lr": 0.029999999999999995})
        store.complete_trial(trial, 0.8634567)
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-m", "medtune.cli", "status", str(path)], env=env,
                         stdout=subprocess.PIPE, text=True, check=True, timeout=120).stdout
    assert f"config dataset={LONG_CHOICE}, lr=0.03" in out
    assert "value 0.8635" in out and "0.0299999" not in out and "…" not in out


def test_numbers_are_shown_to_significant_digits():
    assert format_number(0.029999999999999995) == "0.03"
    assert format_number(0.000123456) == "0.0001235"
    assert format_number(1.5e-05) == "1.5e-05"
    assert format_number(123456) == "123456"  # integers exactly
    assert format_number(0.123456, digits=2) == "0.12"
    assert format_number("0.029999999999999995") == "0.029999999999999995"  # text untouched
    assert format_config({"width": 16, "lr": 0.029999999999999995, "loss": "glf",
                          "bounds": [0.05, 20.000000000000004], "rule": {"step": 0.1 + 0.2}}) \
        == "bounds=[0.05, 20], loss=glf, lr=0.03, rule={step: 0.3}, width=16"


@pytest.mark.parametrize("text", ["[/x]", "[bold]y", "a [red]b[/red] c", "ends in \\",
                                  "\\[bold]x", "[link=http://x]y"])
def test_verbatim_text_prints_as_written(text):
    console = Console(record=True, width=200, emoji=False)
    table = Table(title=verbatim(text))
    table.add_column(verbatim(text))
    table.add_row(verbatim(text))
    console.print(table)
    console.print(f"[red]note:[/red] {verbatim(text)}")
    shown = console.export_text()
    assert shown.count(text) == 4, shown
