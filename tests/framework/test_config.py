"""Study configurations: valid files parse, every mistake names the file and the key."""

from __future__ import annotations

import pytest

from medtune.config import ConfigError, load_config, parse_config

MINIMAL = """
[space.lr]
type = "float"
low = 1e-4
high = 1e-2
"""


def test_defaults_for_a_minimal_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(MINIMAL, tmp_path / "exp.toml")
    assert config.name == "exp" and config.direction == "maximize"
    assert config.searcher == "random" and config.executor == "inline"
    assert config.objective == "segmentation"
    assert config.storage == tmp_path / "studies" / "exp.sqlite"


def test_searcher_options_and_function_objective():
    config = parse_config(
        '[searcher]\nname = "hyperband"\nR = 9\neta = 3\n'
        '[objective]\nfunction = "pkg.mod:objective"\n[objective.settings]\nepochs = 2\n' + MINIMAL
    )
    assert config.searcher_options == {"R": 9, "eta": 3}
    assert config.objective == "pkg.mod:objective" and config.settings == {"epochs": 2}


@pytest.mark.parametrize("text,message", [
    ("[study\n", "exp.toml: not valid TOML"),
    ('[study]\nn_trials = "ten"\n' + MINIMAL, "exp.toml: study.n_trials: expected an integer"),
    ("[study]\nn_trials = 0\n" + MINIMAL, "study.n_trials: expected a positive integer"),
    ('[study]\nexecutor = "slurm"\n' + MINIMAL, "study.executor: expected one of inline, process, ray"),
    ('[study]\ndirection = "up"\n' + MINIMAL, "study.direction: expected one of"),
    ("[study]\ncolour = 1\n" + MINIMAL, "unknown key(s) colour"),
    ('[study]\non_failure = "penalize"\n' + MINIMAL, "needs a penalty value"),
    ("[searcher]\nR = 3\n" + MINIMAL, "searcher: missing key 'name'"),
    ('[objective]\ntask = "classification"\n' + MINIMAL, "objective.task: no task named 'classification'"),
    ('[objective]\ntask = "segmentaton"\n' + MINIMAL, "Did you mean 'segmentation'? Available: 'nas'"),
    ('[objective]\ntask = "segmentation"\n[objective.settings]\nepoch = 2\n' + MINIMAL,
     "objective.settings: segmentation task: unknown setting 'epoch' (did you mean 'epochs'?)"),
    ('[objective]\nfunction = "nocolon"\n' + MINIMAL, 'expected "package.module:function"'),
    ('[objective]\ntask = "segmentation"\nfunction = "a:b"\n' + MINIMAL, "exactly one of"),
    ("[study]\nseed = 1\n", "missing key 'space'"),
    ("[space]\nlr = 3\n", "space.lr: expected a table"),
    ("[extras]\n" + MINIMAL, "unknown table(s) extras"),
    ('[table]\nrows = ["lr"]\n' + MINIMAL, "table: missing key 'columns'"),
    ('[table]\nrows = []\ncolumns = ["value"]\n' + MINIMAL, "table.rows: expected a non-empty list"),
    ('[table]\nrows = ["width"]\ncolumns = ["value"]\n' + MINIMAL, "table.rows: 'width' not in the space"),
    ('[table]\nrows = ["lr"]\ncolumns = [1]\n' + MINIMAL, "table.columns: expected a non-empty list of names"),
    ('[table]\nrows = ["lr"]\ncolumns = ["value"]\nsort = 1\n' + MINIMAL, "table: unknown key(s) sort"),
    ("[replay]\nruns = 5\n" + MINIMAL, "replay: missing key 'searchers'"),
    ("[replay]\nsearchers = []\n" + MINIMAL, "replay.searchers: expected a non-empty list"),
    ('[replay]\nsearchers = ["random"]\nruns = 0\n' + MINIMAL, "replay.runs: expected a positive"),
    ('[replay]\nsearchers = ["random"]\ngoals = ["nearly best"]\n' + MINIMAL,
     'replay.goals: expected "best", "within x%" or "top x%"'),
    ('[replay]\nsearchers = ["random"]\ngoals = ["best 5%"]\n' + MINIMAL, "replay.goals: expected"),
    ('[replay]\nsearchers = ["random"]\ngoals = ["top 200%"]\n' + MINIMAL, "fraction is in (0, 1]"),
    ('[replay]\nsearchers = ["random"]\n[replay.options.bayes]\nrestarts = 0\n' + MINIMAL,
     "replay.options.bayes: 'bayes' is not one of replay.searchers"),
    ('[replay]\nsearchers = ["random"]\nrepeat = 2\n' + MINIMAL, "replay: unknown key(s) repeat"),
])
def test_errors_name_the_file_and_key(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "exp.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("exp.toml")


def test_results_table():
    config = parse_config('[table]\nrows = ["lr"]\ncolumns = ["value", "dice_child"]\n' + MINIMAL,
                          "exp.toml")
    assert config.table.rows == ("lr",) and config.table.columns == ("value", "dice_child")
    assert config.table.title == "exp: mean ± std by lr"
    assert parse_config(MINIMAL).table is None


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "missing.toml")


def test_replay_table():
    config = parse_config('[replay]\nsearchers = ["random", "bayes"]\nruns = 50\n'
                          'goals = ["best", "within 1%", "top 5%"]\n'
                          '[replay.options.bayes]\nrestarts = 0\n' + MINIMAL)
    spec = config.replay
    assert spec.searchers == ("random", "bayes") and spec.runs == 50
    assert [g.label for g in spec.goals] == ["Best model", "Within 1%", "Top 5%"]
    assert spec.goals[2].kind == "top" and spec.goals[2].fraction == pytest.approx(0.05)
    assert spec.options == {"bayes": {"restarts": 0}}
    assert parse_config(MINIMAL).replay is None
