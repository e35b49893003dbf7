"""``function = "module:function"`` finds a module beside the configuration or in the current
directory, without PYTHONPATH, in the driver and in worker processes; and says where it looked
when it cannot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medtune.cli import main
from medtune.study import StudyStore, TrialState

OBJECTIVE = "def objective(config, resource, seed, report):\n    return (config['x'] - 0.3) ** 2\n"


def _experiment(tmp_path: Path, module: str, executor: str = "inline") -> Path:
    """A folder holding ``<module>.py`` and ``study.toml`` whose objective is in it."""
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / f"{module}.py").write_text(OBJECTIVE)
    workers = "n_workers = 1" if executor == "process" else ""
    (folder / "study.toml").write_text(
        f'[study]\nname = "quad"\ndirection = "minimize"\nn_trials = 3\n'
        f'storage = "{tmp_path / "s.sqlite"}"\nexecutor = "{executor}"\n{workers}\n\n'
        f'[searcher]\nname = "random"\n\n[objective]\nfunction = "{module}:objective"\n\n'
        '[space.x]\ntype = "float"\nlow = -1\nhigh = 1\n')
    return folder


@pytest.fixture
def bare_path(monkeypatch):
    """sys.path without the current directory (as under the ``medtune`` command), restored
    after the test."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])


def _completed(tmp_path: Path) -> int:
    with StudyStore(tmp_path / "s.sqlite") as store:
        return store.count([TrialState.COMPLETE])


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_a_module_in_the_current_directory_is_found(tmp_path, monkeypatch, bare_path, executor):
    module = f"quad_here_{executor}"
    folder = _experiment(tmp_path, module, executor)
    monkeypatch.chdir(folder)
    assert main(["run", "study.toml"]) == 0
    assert _completed(tmp_path) == 3  # the workers found it too
    monkeypatch.delitem(sys.modules, module)


def test_a_module_beside_the_configuration_is_found_from_elsewhere(tmp_path, monkeypatch,
                                                                   bare_path):
    folder = _experiment(tmp_path, "quad_beside")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(folder / "study.toml")]) == 0
    assert _completed(tmp_path) == 3
    monkeypatch.delitem(sys.modules, "quad_beside")


def test_a_module_that_is_nowhere_is_refused_naming_where_it_was_looked_for(
    tmp_path, monkeypatch, bare_path, capsys
):
    folder = _experiment(tmp_path, "quad_unused")
    config = folder / "study.toml"
    config.write_text(config.read_text().replace("quad_unused:", "quad_nowhere:"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(config)]) == 2
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "cannot import module 'quad_nowhere'" in line
    assert f"searched the installed packages and PYTHONPATH and then {folder}, {elsewhere}" in line
    assert not (tmp_path / "s.sqlite").exists()
