"""Tasks, what a study trains: the contract a task plugin implements (:class:`Task`), its
settings check, the helpers every task shares, and the objective a study runs.

Built-in and third-party tasks alike come from the ``medtune_tasks`` hook (plugin kind
``task``); ``[objective] task = "NAME"`` names one, ``function = "module:function"`` names a
plain objective instead.
"""

from medtune.tasks.configured import ConfiguredObjective
from medtune.tasks.contract import (
    TYPES,
    Diverged,
    Setting,
    Task,
    check_settings,
    declared_settings,
    load_task,
    stop_if_diverged,
)
from medtune.tasks.figures import Figure, pyplot
from medtune.tasks.threads import check_threads, trial_threads

__all__ = [
    "TYPES",
    "ConfiguredObjective",
    "Diverged",
    "Figure",
    "Setting",
    "Task",
    "check_settings",
    "check_threads",
    "declared_settings",
    "load_task",
    "pyplot",
    "stop_if_diverged",
    "trial_threads",
]
