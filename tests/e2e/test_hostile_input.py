"""Hostile and broken input on the command line: one line naming the problem, exit status 2,
and nothing written (no study file, no folder, no report)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from medtune.cli import main

SPACE = '[space.x]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n'
OBJECTIVE = '[objective]\nfunction = "tests.framework.study_fakes:quadratic"\n'


def _foreign(folder: Path) -> str:
    with sqlite3.connect(folder / "foreign.db") as db:
        db.execute("CREATE TABLE patients (id INTEGER)")
    return "foreign.db"


def _garbage(folder: Path) -> str:
    (folder / "garbage.db").write_bytes(b"not a database\n" * 64)
    return "garbage.db"


#: (what is wrong, the file it is given as, its text or a builder, command, expected message)
CASES = [
    ("malformed TOML", "bad.toml", "[study\n", "run", "bad.toml: not valid TOML"),
    ("a wrong type", "bad.toml", '[study]\nn_trials = "ten"\n' + SPACE, "run",
     "study.n_trials: expected an integer"),
    ("an unknown searcher", "bad.toml", '[searcher]\nname = "bogus"\n' + SPACE, "run",
     "no searcher named 'bogus'. Available:"),
    ("a negative budget", "bad.toml", '[searcher]\nname = "hyperband"\nR = -3\n' + SPACE, "run",
     "R (the maximum resource) must be a number >= 1, got -3"),
    ("a negative timeout", "bad.toml", "[study]\ntimeout = -5\n" + SPACE, "run",
     "study.timeout: expected a positive number of seconds"),
    ("an objective that does not import", "bad.toml",
     '[objective]\nfunction = "no_such_package.module:objective"\n' + SPACE, "run",
     "objective: cannot import module 'no_such_package.module'"),
    ("an unwritable study path", "bad.toml",
     '[study]\nstorage = "/proc/medtune/study.sqlite"\n' + OBJECTIVE + SPACE, "run",
     "study.storage: cannot create /proc/medtune/study.sqlite"),
    ("a negative seed", "bad.toml", "[study]\nseed = -1\n" + OBJECTIVE + SPACE, "run",
     "study.seed: expected a non-negative integer, got -1"),
    ("a NaN penalty", "bad.toml",
     '[study]\non_failure = "penalize"\npenalty = nan\n' + OBJECTIVE + SPACE, "run",
     "study.penalty: expected a finite number, got nan"),
    ("a configuration that is not UTF-8", "bad.toml", b"\xff\xfe[study]\n" + SPACE.encode(),
     "run", "bad.toml: not a UTF-8 text file"),
    ("a study key in the searcher's table", "bad.toml",
     '[searcher]\nname = "random"\nn_trials = 5\n' + OBJECTIVE + SPACE, "run",
     "[searcher] n_trials: it belongs in [study], not in [searcher]"),
    ("an option the searcher does not take", "bad.toml",
     '[searcher]\nname = "random"\ngenerations = 5\n' + OBJECTIVE + SPACE, "run",
     "searcher 'random': Searcher.__init__() got an unexpected keyword argument 'generations'"),
    ("a missing study", None, None, "resume", "no study at missing.db"),
    ("a study name that is no study", None, None, "status",
     "no study 'missing': neither a file missing nor studies/missing.sqlite exists"),
    ("a foreign SQLite file", "foreign.db", _foreign, "status",
     "is an SQLite database but not a medtune study"),
    ("a corrupt file", "garbage.db", _garbage, "report",
     "is damaged or not an SQLite database"),
]


@pytest.mark.parametrize(("problem", "name", "content", "command", "message"), CASES,
                         ids=[case[0] for case in CASES])
def test_bad_input_gets_one_line_and_status_2_and_writes_nothing(
        tmp_path, monkeypatch, capsys, problem, name, content, command, message):
    monkeypatch.chdir(tmp_path)
    if callable(content):
        name = content(tmp_path)
    elif isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    missing = "missing" if command == "status" else "missing.db"
    assert main([command, name or missing]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error:") and message in out and "\n" not in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
