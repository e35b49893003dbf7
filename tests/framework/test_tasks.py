"""The task contract of the core: settings checked against their declaration, the shared NaN
exit, the budget, threads, default tables, and tasks found by name through the registry."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import medtune
from medtune import registry as registry_module
from medtune.config import ConfigError, parse_config
from medtune.errors import MedtuneError, PluginError, UnknownPluginError
from medtune.study.executors import make_executor
from medtune.tasks import ConfiguredObjective, Setting, Task, check_settings, load_task, stop_if_diverged


class Toy(Task):
    """A task whose loss is ``x`` itself: NaN and infinity reach the shared exit."""

    name = "toy"
    settings = {"x": 0.5, "epochs": 2, "mode": "plain", "options": Setting({}, example="{a = 1}"),
                "scale": Setting(None, "number", optional=True), "threads": 0}
    trial_timeout = 12.0
    table = {"rows": ["mode"], "columns": ["value"]}

    def check(self, settings):
        if settings["scale"] is None:
            settings["scale"] = 2.0
        return settings

    def train(self, settings, resource, seed, report):
        stop_if_diverged(torch.tensor(settings["x"]))
        epochs = self.budget(resource, settings["epochs"])
        return {"value": settings["scale"] * settings["x"], "epochs": epochs,
                "threads": torch.get_num_threads()}


class NotATask:
    def __call__(self, config, resource, seed, report):
        return 0.0


class _ToyPlugin:
    @medtune.hookimpl
    def medtune_tasks(self):
        return {"toy": Toy, "not_a_task": NotATask}


@pytest.fixture
def toy_registry(monkeypatch):
    """The installed plugins and the toy task, for one test."""
    reg = registry_module.Registry()
    reg.register(_ToyPlugin(), "toy_plugin")
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


def test_settings_merge_over_the_declared_defaults():
    settings = check_settings("toy", Toy.settings, {"x": 2, "mode": "fast"})
    assert settings == {"x": 2, "epochs": 2, "mode": "fast", "options": {}, "scale": None, "threads": 0}
    assert check_settings("toy", Toy.settings, {"scale": 3})["scale"] == 3  # optional: a number too


def test_an_unknown_setting_names_the_closest_declared_one():
    with pytest.raises(MedtuneError) as err:
        check_settings("toy", Toy.settings, {"epoch": 3, "zzz": 1})
    message = str(err.value)
    assert message.startswith("toy task: unknown setting 'epoch' (did you mean 'epochs'?)")
    assert "unknown setting 'zzz';" in message  # nothing close: no suggestion
    assert "the settings of the toy task are x, epochs, mode, options, scale, threads" in message


@pytest.mark.parametrize("config, message", [
    ({"epochs": 2.5}, "epochs must be a whole number, got 2.5"),
    ({"epochs": True}, "epochs must be a whole number, got True"),
    ({"x": "0.5"}, "x must be a number, got '0.5'"),
    ({"mode": 3}, "mode must be a string, got 3"),
    ({"options": [1]}, "options must be a table, e.g. {a = 1}, got [1]"),
    ({"scale": "big"}, "scale must be a number or nothing, got 'big'"),
])
def test_a_mistyped_setting_is_refused_with_its_type(config, message):
    with pytest.raises(MedtuneError) as err:
        check_settings("toy", Toy.settings, config)
    assert str(err.value) == f"toy task: {message}"


def test_a_setting_may_accept_several_types():
    shape = Setting(None, type=("list", "string"), optional=True)
    settings = {"shape": shape}
    assert check_settings("toy", settings, {"shape": "8x8"})["shape"] == "8x8"
    assert check_settings("toy", settings, {"shape": [8, 8]})["shape"] == [8, 8]
    with pytest.raises(MedtuneError) as err:
        check_settings("toy", settings, {"shape": 8})
    assert str(err.value) == "toy task: shape must be a list or a string or nothing, got 8"


def test_every_problem_is_named_in_one_error():
    with pytest.raises(MedtuneError) as err:
        check_settings("toy", Toy.settings, {"epochs": "2", "modes": "fast"})
    assert "epochs must be a whole number" in str(err.value) and "did you mean 'mode'" in str(err.value)


def test_calling_a_task_checks_trains_and_completes_the_settings():
    assert Toy()({"x": 0.25}, resource=3) == {"value": 0.5, "epochs": 3, "threads": torch.get_num_threads()}
    with pytest.raises(MedtuneError, match="toy task: the budget must be at least one epoch, got 0.2"):
        Toy()({}, resource=0.2)
    with pytest.raises(MedtuneError, match="toy task: threads must be a whole number >= 1"):
        Toy()({"threads": -1})


def test_threads_apply_to_the_trial_only():
    before = torch.get_num_threads()
    assert Toy()({"threads": 1})["threads"] == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_diverged_loss_ends_the_trial_with_nan(loss):
    result = Toy()({"x": loss})
    assert set(result) == {"value"} and math.isnan(result["value"])


def test_a_task_without_train_says_so():
    with pytest.raises(NotImplementedError, match="task 'unnamed' does not define train"):
        Task()({})


def test_the_default_table_needs_its_rows_searched():
    assert Toy().default_table(["mode", "x"]) == {"rows": ["mode"], "columns": ["value"]}
    assert Toy().default_table(["x"]) is None
    assert Task().default_table(["x"]) is None


def test_tasks_are_found_by_name_and_suggested(toy_registry):
    assert isinstance(load_task("toy"), Toy) and "toy" in medtune.available("task")
    with pytest.raises(UnknownPluginError) as err:
        load_task("tyo")
    assert "no task named 'tyo'. Did you mean 'toy'?" in str(err.value)
    assert "'segmentation'" in str(err.value).split("Available:")[1]
    with pytest.raises(PluginError, match="is a NotATask, not a medtune.tasks.Task"):
        load_task("not_a_task")


def test_a_configured_task_is_resolved_where_it_runs(toy_registry):
    objective = ConfiguredObjective("toy", {"x": 1.0, "scale": 3.0})
    assert objective.task == "toy" and ConfiguredObjective("pkg.mod:fn").task is None
    copy = pickle.loads(pickle.dumps(objective))  # only the name and the settings travel
    assert copy({"x": 2.0}, None, 0)["value"] == 6.0
    assert objective.trial_timeout == 12.0
    assert make_executor("inline", objective).trial_timeout == 12.0
    assert make_executor("inline", objective, trial_timeout=0).trial_timeout is None
    # the built-in tasks declare none: a trial lasts as long as its settings ask
    assert make_executor("inline", ConfiguredObjective("segmentation")).trial_timeout is None


SPACE = '\n[space.mode]\ntype = "categorical"\nchoices = ["plain", "fast"]\n'


def test_a_configuration_names_its_task_through_the_registry(toy_registry):
    config = parse_config('[objective]\ntask = "toy"\n[objective.settings]\nx = 0.1\n' + SPACE, "exp.toml")
    assert config.objective == "toy" and config.settings == {"x": 0.1}
    assert config.table.rows == ("mode",) and config.table.title == "exp: mean ± std by mode"
    own = parse_config('[objective]\ntask = "toy"\n[table]\nrows = ["mode"]\ncolumns = ["epochs"]\n' + SPACE)
    assert own.table.columns == ("epochs",)  # the study's own table wins


@pytest.mark.parametrize("objective, message", [
    ('task = "tyo"', "exp.toml: objective.task: no task named 'tyo'. Did you mean 'toy'? Available: "),
    ('task = "toy"\n[objective.settings]\nepoch = 3',
     "exp.toml: objective.settings: toy task: unknown setting 'epoch' (did you mean 'epochs'?)"),
    ('task = "toy"\n[objective.settings]\nx = "high"', "objective.settings: toy task: x must be a number"),
])
def test_a_configuration_refuses_unknown_tasks_and_settings(toy_registry, objective, message):
    with pytest.raises(ConfigError) as err:
        parse_config(f"[objective]\n{objective}\n" + SPACE, "exp.toml")
    assert message in str(err.value)
