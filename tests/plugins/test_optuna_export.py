"""``medtune export-optuna``: a medtune study copied into an Optuna storage opens with Optuna's
``load_study`` with the same trials, parameters, values and intermediate values."""

from __future__ import annotations

import argparse
import io
import sys

import pytest
from rich.console import Console

import medtune
from medtune.cli import main
from medtune.plugins.optuna_export import (
    COMMANDS,
    ExportOptunaCommand,
    OptunaExportError,
    export_to_optuna,
)
from medtune.study import RunOptions, StudyStore, TrialPruned, TrialState, run_study
from medtune.study.store import StudyStoreError
from tests.plugins.test_searchers import mixed_objective, mixed_space

optuna = pytest.importorskip("optuna")

SPACE_TOML = """
[space.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true

[space.width]
type = "ordinal"
values = [8, 16, 32]

[space.loss]
type = "categorical"
choices = ["dice", "glf"]

[space.beta2]
type = "float"
low = 0.5
high = 2
condition = {loss = ["glf"]}
"""


def objective(config, resource, seed, report):
    """`mixed_objective`, reported at two steps; every fifth width-8 trial fails, and every
    width-32 one with a large rate is pruned after its first step."""
    value = mixed_objective(config)
    report(1, value + 1.0)
    if config["width"] == 32 and config["lr"] > 3e-3:
        raise TrialPruned()
    if config["width"] == 8 and seed % 5 == 0:
        raise RuntimeError("diverged")
    report(2, value + 0.5)
    return value


def small_study(path, *, config_text: str = SPACE_TOML, direction: str = "minimize") -> list:
    """A finished 24-trial random search over `mixed_space`; returns its trials."""
    with StudyStore.create(path, name="small", direction=direction, seed=3,
                           config_text=config_text) as store:
        searcher = medtune.create("searcher", "random", space=mixed_space(), seed=store.seed,
                                  direction=direction)
        run_study(store, searcher, objective, RunOptions(n_trials=24, progress=False))
        return store.trials()


@pytest.mark.parametrize("config_text", [SPACE_TOML, ""], ids=["stored space", "no space"])
def test_an_exported_study_loads_with_the_same_trials_and_values(config_text, tmp_path):
    trials = small_study(tmp_path / "small.sqlite", config_text=config_text)
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    done = export_to_optuna(tmp_path / "small.sqlite", url)
    assert (done.study_name, done.trials, done.left_out) == ("small", 24, 0)

    study = optuna.load_study(study_name="small", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["seed"] == 3
    loaded = study.trials
    assert len(loaded) == len(trials)
    states = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED",
              TrialState.FAIL: "FAIL"}
    for trial, exported in zip(trials, loaded, strict=True):
        assert exported.params == trial.config
        assert exported.state.name == states[trial.state]
        assert exported.value == (None if trial.state is TrialState.FAIL else trial.value)
        assert exported.intermediate_values == {int(k): v for k, v in trial.intermediate.items()}
        assert exported.user_attrs["medtune_trial_id"] == trial.id
        assert exported.user_attrs["seed"] == trial.seed
        assert exported.user_attrs["resource"] is None
        assert exported.duration.total_seconds() == pytest.approx(
            (trial.finished - trial.started).total_seconds(), abs=1e-3)
        if trial.state is TrialState.FAIL:
            assert exported.user_attrs["failure_reason"] == trial.failure_reason.value
    best = min((t for t in trials if t.state is TrialState.COMPLETE), key=lambda t: t.value)
    assert (study.best_trial.params, study.best_value) == (best.config, best.value)
    width = loaded[0].distributions["width"]
    if config_text:  # the study's space: ordinals are categorical over their values
        assert width == optuna.distributions.CategoricalDistribution((8, 16, 32))
        assert loaded[0].distributions["lr"] == optuna.distributions.FloatDistribution(
            1e-4, 1e-1, log=True)
    else:  # spanned by the values the trials took
        widths = sorted({t.config["width"] for t in trials})
        assert width == optuna.distributions.IntDistribution(widths[0], widths[-1])


def test_direction_and_a_name_of_ones_own(tmp_path):
    small_study(tmp_path / "small.sqlite", direction="maximize")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    export_to_optuna(tmp_path / "small.sqlite", url, study_name="renamed")
    study = optuna.load_study(study_name="renamed", storage=url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_steps_that_are_not_whole_numbers_are_numbered_in_order(tmp_path):
    path = tmp_path / "fractional.sqlite"

    def halves(config, resource, seed, report):
        report(0.5, 3.0)
        report(1.5, 2.0)
        return 1.0

    with StudyStore.create(path, seed=0) as store:
        searcher = medtune.create("searcher", "random", space=mixed_space(), seed=0)
        run_study(store, searcher, halves, RunOptions(n_trials=2, progress=False))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    export_to_optuna(path, url)
    trial = optuna.load_study(study_name="fractional", storage=url).trials[0]
    assert trial.intermediate_values == {0: 3.0, 1: 2.0}
    assert trial.user_attrs["steps"] == [0.5, 1.5]


def command_run(argv: list[str]) -> tuple[int, str]:
    """``medtune export-optuna ARGV`` through the command class, as the command line runs a
    plugin command; returns its status and output."""
    parser = argparse.ArgumentParser(prog="medtune export-optuna")
    command = COMMANDS["export-optuna"]()
    command.add_arguments(parser)
    out = io.StringIO()
    status = command.run(parser.parse_args(argv), Console(file=out, width=10_000))
    return status, out.getvalue()


def test_the_command_exports_and_refuses_a_name_taken_without_writing(tmp_path):
    small_study(tmp_path / "small.sqlite")
    database = tmp_path / "optuna.db"
    url = f"sqlite:///{database}"
    status, out = command_run([str(tmp_path / "small.sqlite"), url])
    assert status == 0
    assert out == (f"Exported 24 trials of {tmp_path / 'small.sqlite'} to the Optuna study "
                   f"'small' in {url}; view it with `optuna-dashboard {url}`.\n")
    before = database.read_bytes()
    with pytest.raises(OptunaExportError, match=r"already has an Optuna study named 'small'; "
                                                "choose another name with --study-name, or "
                                                "another storage$"):
        command_run([str(tmp_path / "small.sqlite"), url])
    assert database.read_bytes() == before
    assert optuna.study.get_all_study_names(url) == ["small"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["missing.sqlite", "sqlite:///{tmp}/o.db"], "no study at missing.sqlite"),
    (["{tmp}/small.sqlite", "optuna.db"], r"cannot open 'optuna.db' as an Optuna storage \("
                                          r".*\); give a database URL such as "
                                          r"sqlite:///optuna.db$"),
    (["{tmp}/small.sqlite", "sqlite:///{tmp}/no/such/folder.db"],
     "cannot open 'sqlite:///.*/no/such/folder.db' as an Optuna storage"),
])
def test_bad_input_is_one_line_and_writes_nothing(arguments, message, tmp_path, monkeypatch):
    small_study(tmp_path / "small.sqlite")
    monkeypatch.chdir(tmp_path)

    def files():  # reading a study may leave SQLite's -wal and -shm files beside it
        return sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("small."))

    before = files()
    with pytest.raises((OptunaExportError, StudyStoreError), match=message) as error:
        command_run([a.format(tmp=tmp_path) for a in arguments])
    assert "\n" not in str(error.value)
    assert files() == before


def test_without_optuna_the_export_says_how_to_install_it(tmp_path, monkeypatch):
    small_study(tmp_path / "small.sqlite")
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(OptunaExportError, match=r"^export-optuna needs Optuna, which is not "
                                                r"installed: pip install 'medtune\[optuna\]'$"):
        export_to_optuna(tmp_path / "small.sqlite", f"sqlite:///{tmp_path / 'o.db'}")
    assert not (tmp_path / "o.db").exists()


@pytest.mark.skipif("export-optuna" not in medtune.available("command"),
                    reason="the export-optuna command is not registered by the built-in plugin")
def test_medtune_export_optuna_on_the_command_line(tmp_path, capsys):
    small_study(tmp_path / "small.sqlite")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["export-optuna", str(tmp_path / "small.sqlite"), url]) == 0
    assert "Exported 24 trials" in capsys.readouterr().out
    assert main(["export-optuna", str(tmp_path / "small.sqlite"), url]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ") and out.count("\n") == 1
    assert len(optuna.load_study(study_name="small", storage=url).trials) == 24


def test_the_command_is_a_medtune_command():
    assert isinstance(ExportOptunaCommand(), medtune.commands.Command)
    assert COMMANDS == {"export-optuna": ExportOptunaCommand} and ExportOptunaCommand.help
