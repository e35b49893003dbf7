"""The task contract: what a study trains, as a plugin of kind ``task``.

A task is a :class:`Task` subclass that a plugin returns from its ``medtune_tasks`` hook. It
declares its settings (:attr:`Task.settings`), trains in :meth:`Task.train`, and may declare a
time limit per trial (:attr:`Task.trial_timeout`), a results table for studies without one
(:attr:`Task.table`), report figures (:meth:`Task.figures`) and prediction with a trained
model (:meth:`Task.predict`, what ``medtune predict`` runs).

A task that can predict keeps its model while it trains: it writes what :meth:`Task.predict`
needs into :func:`medtune.study.artifacts.trial_folder` (None outside a study), and
``medtune export`` copies that folder out; :meth:`Task.predict` then reads it.

Calling a task is a study's objective, ``task(config, resource, seed, report)``: ``config``
(the fixed settings under the searched parameters) is checked by :func:`check_settings` (an
unknown or mistyped key is one error naming it and the closest declared setting), merged over
the defaults, checked further by :meth:`Task.check`, and trained under the ``threads`` setting
when the task declares one. A training whose loss is no longer finite calls
:func:`stop_if_diverged`: the trial returns NaN and fails with reason ``nan``, whichever task it
is (a network of NaN weights would otherwise be scored as if it had learnt nothing).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from medtune.errors import MedtuneError, PluginError
from medtune.tasks.figures import Figure
from medtune.tasks.threads import check_threads, trial_threads

#: the type names a setting may declare: ``name -> (test of a value, how messages say it)``
TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "integer": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "a whole number"),
    "number": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "list": (lambda v: isinstance(v, (list, tuple)), "a list"),
    "table": (lambda v: isinstance(v, Mapping), "a table"),
}


@dataclass(frozen=True)
class Setting:
    """One setting of a task: its ``default`` and its ``type`` (a key of :data:`TYPES`, or a
    tuple of keys when several are accepted, e.g. ``("list", "string")``; None: the type of the
    default). ``optional``: None is accepted too (the task then picks a value). ``example`` is
    shown when a value has the wrong type."""

    default: Any
    type: str | tuple[str, ...] | None = None
    optional: bool = False
    example: str = ""

    @property
    def kinds(self) -> tuple[str, ...]:
        """The declared types, or the one of the default."""
        kinds = self.type or _type_of(self.default)
        kinds = (kinds,) if isinstance(kinds, str) or kinds is None else tuple(kinds)
        if not kinds or any(kind not in TYPES for kind in kinds):
            raise PluginError(f"setting default {self.default!r}: give its type, one or a tuple "
                              f"of {', '.join(TYPES)} (Setting(default, type=...))")
        return kinds

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has one of the setting's types."""
        return (value is None and self.optional) or any(TYPES[kind][0](value) for kind in self.kinds)

    def expected(self) -> str:
        """The accepted types as messages say them, e.g. "a list or a string"."""
        return " or ".join(TYPES[kind][1] for kind in self.kinds) + (" or nothing" if self.optional else "")


def _type_of(default: Any) -> str | None:
    for kind in ("boolean", "integer", "number", "string", "list", "table"):
        if TYPES[kind][0](default):
            return kind
    return None


def declared_settings(settings: Mapping[str, Any]) -> dict[str, Setting]:
    """A task's :attr:`Task.settings` with every entry as a :class:`Setting`."""
    return {name: value if isinstance(value, Setting) else Setting(value)
            for name, value in settings.items()}


def check_settings(task: str, settings: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` merged over the defaults of the declared ``settings`` of task ``task``.

    Raises one :class:`~medtune.errors.MedtuneError` naming every key of ``config`` that is
    not declared (with the closest declared name) or whose value has the wrong type.
    """
    declared = declared_settings(settings)
    problems = []
    for key, value in config.items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            problems.append(f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif not declared[key].accepts(value):
            setting = declared[key]
            example = f", e.g. {setting.example}" if setting.example else ""
            problems.append(f"{key} must be {setting.expected()}{example}, got {value!r}")
    if problems:
        known = (f"; the settings of the {task} task are {', '.join(declared)}"
                 if any(p.startswith("unknown") for p in problems) else "")
        raise MedtuneError(f"{task} task: {'; '.join(problems)}{known}")
    return {**{name: setting.default for name, setting in declared.items()}, **config}


class Diverged(Exception):
    """Raised by :func:`stop_if_diverged` inside :meth:`Task.train`; the task returns NaN."""


def stop_if_diverged(loss: Any) -> None:
    """End the trial as failed (value NaN, reason ``nan``) when ``loss`` (a number or a
    one-element tensor) is NaN or infinite: a diverged training or a broken loss."""
    value = loss.item() if hasattr(loss, "item") else float(loss)
    if not math.isfinite(value):
        raise Diverged(f"the loss became {value}")


class Task:
    """Base class of a task plugin; subclasses set the class attributes and :meth:`train`."""

    #: the task's name in messages (the registry's name is the key its plugin gives it)
    name: ClassVar[str] = "unnamed"
    #: every setting the task understands: ``name -> default``, or a :class:`Setting` where
    #: the default does not say the type; searched parameters are settings too
    settings: ClassVar[Mapping[str, Any]] = {}
    #: seconds one trial may run unless the study sets its own ``trial_timeout`` (None: no limit)
    trial_timeout: ClassVar[float | None] = None
    #: whether :meth:`train` calls ``report(step, value)`` as it trains; a study with a
    #: ``[pruner]`` refuses a task that declares it never does (a plain objective function
    #: may declare it the same way, as an attribute)
    reports_intermediate: ClassVar[bool] = True
    #: the results table of a study without a ``[table]``, as a configuration's ``[table]``
    #: (``rows``, ``columns``, optional ``title``); used when every row is a searched parameter
    table: ClassVar[Mapping[str, Any] | None] = None

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Task-specific checks of the merged, well-typed ``settings`` (ranges, choices, how
        settings fit together); returns them, completed where a default depends on others.
        Raises :class:`~medtune.errors.MedtuneError` naming the setting."""
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> float | Mapping[str, Any]:
        """Train with the checked ``settings`` for budget ``resource`` (None: the task's own)
        and ``seed``, calling ``report(step, value)`` with intermediate values; return the value
        or ``{"value": ..., metric: ...}`` (see :mod:`medtune.study.executors`)."""
        raise NotImplementedError(f"task {self.name!r} does not define train(settings, resource, seed, report)")

    def figures(self, trials: Sequence[Any], folder: Path) -> list[Figure]:
        """Write the task's report figures of the study's finished ``trials`` into ``folder``;
        ``(file, caption)`` of each, ``[]`` when the trials carry nothing to draw."""
        return []

    def tables(self, trials: Sequence[Any]) -> list[Any]:
        """Result tables the task computes across the study's finished ``trials`` (e.g. paired
        tests of each row against a baseline row), each with a ``title``, a ``header`` and
        ``text_rows()`` as :class:`medtune.tables.ResultTable`; ``medtune run`` prints them
        after the results table and the report shows them. ``[]`` when there is none."""
        return []

    def predict(self, model_folder: Path, inputs: Path, output: Path, *,
                labels: Path | None = None, tta: bool = False,
                console: Any = None) -> Mapping[str, Any]:
        """Predict every input in the folder ``inputs`` with the model of ``model_folder`` (a
        trial's artifact folder, as its :meth:`train` wrote it into
        :func:`medtune.study.artifacts.trial_folder`, or a copy ``medtune export`` made) and
        write the predictions into ``output`` (an existing, empty folder; the task writes
        each file whole, e.g. under a temporary name then renamed). ``labels``: a folder of
        reference labels of the inputs, to score the predictions against; ``tta``: test-time
        augmentation; ``console``: a ``rich.console.Console`` for progress and tables, or None
        for none. Returns the scores, per input and overall (empty without ``labels``).
        Raises :class:`~medtune.errors.MedtuneError` naming the input or file that is wrong.

        The base class cannot predict and raises :class:`~medtune.errors.MedtuneError`."""
        raise MedtuneError(f"task {self.name!r} cannot predict: it defines no predict() for "
                           "its trained models; predict with a study of a task that does")

    def preflight(self, settings: dict[str, Any]) -> None:
        """Checks of a study's fixed ``settings`` (merged over the defaults) that would fail
        every trial the same way, such as a data folder that is not there; run once by
        ``medtune run`` before the study file is written. Raises
        :class:`~medtune.errors.MedtuneError` saying what to do; the base checks nothing."""

    def validate(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` checked (:func:`check_settings`, ``threads``, :meth:`check`) and merged
        over the defaults."""
        settings = check_settings(self.name, self.settings, config)
        if "threads" in settings:
            check_threads(self.name, settings["threads"])
        return self.check(settings)

    def budget(self, resource: float | None, default: int, unit: str = "epoch") -> int:
        """The trial's budget: ``resource`` rounded, or ``default`` without one; at least 1."""
        count = int(round(resource)) if resource is not None else int(default)
        if count < 1:
            raise MedtuneError(f"{self.name} task: the budget must be at least one {unit}, got {resource}")
        return count

    def default_table(self, searched: Iterable[str]) -> dict[str, Any] | None:
        """:attr:`table` for a study searching the parameters ``searched``, or None when the
        task declares none or one of its rows is not searched."""
        if self.table is None or not set(self.table.get("rows", ())) <= set(searched):
            return None
        return dict(self.table)

    def __call__(self, config: Mapping[str, Any], resource: float | None = None, seed: int = 0,
                 report: Callable[[float, float], None] | None = None) -> float | Mapping[str, Any]:
        settings = self.validate(config)
        with trial_threads(check_threads(self.name, settings.get("threads"))):
            try:
                return self.train(settings, resource, seed, report)
            except Diverged:
                return {"value": math.nan}


def load_task(name: str) -> Task:
    """The task plugin called ``name``, built through the registry (an unknown name is an
    :class:`~medtune.errors.UnknownPluginError` listing the tasks and the closest one)."""
    from medtune.registry import registry

    entry = registry().get("task", name)
    task = entry.factory()
    if not isinstance(task, Task):
        raise PluginError(f"task {name!r} of {entry.plugin.label} is a {type(task).__name__}, "
                          "not a medtune.tasks.Task; its factory must build a Task subclass")
    return task
