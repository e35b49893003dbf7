"""The contract every task passes, built-in or third-party (the example plugin's ``quadratic``):
typed settings whose defaults are valid, one error naming an unknown or mistyped setting,
``threads`` checked, no figures without trials, a sound time limit and default table."""

from __future__ import annotations

import math

import pytest

import medtune
from medtune import registry as registry_module
from medtune.errors import MedtuneError
from medtune.tasks import TYPES, ConfiguredObjective, Task, declared_settings, load_task

TASKS = [*medtune.available("task"), "quadratic"]


@pytest.fixture
def task(request, monkeypatch, installed_plugins) -> Task:
    """The task named by the test's parameter, from the installed plugins and the example plugin."""
    monkeypatch.syspath_prepend(str(installed_plugins["example_plugin"]))
    monkeypatch.setattr(registry_module, "_REGISTRY", registry_module.Registry())
    return load_task(request.param)


def _first_of(task: Task) -> tuple[str, str]:
    name, setting = next(iter(declared_settings(task.settings).items()))
    return name, setting.kinds[0]


@pytest.mark.parametrize("task", TASKS, indirect=True)
def test_declares_typed_settings_with_valid_defaults(task):
    assert isinstance(task, Task) and task.name in medtune.available("task")
    declared = declared_settings(task.settings)
    assert declared, "a task declares at least one setting"
    for name, setting in declared.items():
        assert set(setting.kinds) <= set(TYPES), name
        assert setting.accepts(setting.default), name
    settings = task.validate({})
    assert set(declared) <= set(settings)


@pytest.mark.parametrize("task", TASKS, indirect=True)
def test_an_unknown_setting_is_named_with_the_closest_one(task):
    name, _ = _first_of(task)
    with pytest.raises(MedtuneError) as err:
        task({name + name[-1]: 1})
    message = str(err.value)
    assert message.startswith(f"{task.name} task: unknown setting {name + name[-1]!r}")
    assert f"did you mean {name!r}?" in message


@pytest.mark.parametrize("task", TASKS, indirect=True)
def test_a_mistyped_setting_is_named_with_its_type(task):
    name, kind = _first_of(task)
    wrong = 3 if kind == "string" else "wrong"
    with pytest.raises(MedtuneError, match=f"^{task.name} task: {name} must be {TYPES[kind][1]}"):
        task({name: wrong})


@pytest.mark.parametrize("task", TASKS, indirect=True)
def test_threads_are_checked_before_any_work(task):
    if "threads" not in task.settings:
        pytest.skip(f"the {task.name} task has no threads setting")
    with pytest.raises(MedtuneError, match=f"{task.name} task: threads must be"):
        task({"threads": -1})


@pytest.mark.parametrize("task", TASKS, indirect=True)
def test_no_trials_no_figures(task, tmp_path):
    assert task.figures([], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", TASKS, indirect=True)
def test_time_limit_and_default_table_are_sound(task):
    limit = task.trial_timeout
    assert limit is None or (isinstance(limit, (int, float)) and 0 < limit < math.inf)
    if task.table is None:
        assert task.default_table(task.settings) is None
        return
    assert set(task.table) <= {"title", "rows", "columns"}
    for key in ("rows", "columns"):
        assert task.table[key] and all(isinstance(v, str) for v in task.table[key])
    assert set(task.table["rows"]) <= set(task.settings)
    assert task.default_table(task.table["rows"])["rows"] == task.table["rows"]
    assert task.default_table([]) is None


@pytest.mark.parametrize("task", TASKS, indirect=True)
def test_a_study_reaches_it_by_name(task):
    assert isinstance(ConfiguredObjective(task.name).resolve(), type(task))


@pytest.mark.parametrize("task", TASKS, indirect=True)
def test_a_study_without_finished_trials_has_no_task_tables(task):
    assert task.tables([]) == []
