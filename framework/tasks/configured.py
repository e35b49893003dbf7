"""A study's objective with its fixed settings, merged under every configuration a searcher
proposes: a task plugin by name, or a ``"module:function"``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConfiguredObjective:
    """``objective({**settings, **config}, resource, seed, report)``, picklable for workers.

    ``reference`` is a task's name (no ``:``), built through the registry where the trial runs
    (workers find the task through their own installed plugins), or a ``"module:function"``
    imported there.

    ``objectives``: the names of a study's several objectives (``[study] objectives``); the
    trial's value is then the first one's, taken from the mapping the objective returns
    (which needs no ``"value"`` key), so a study's best-trial code reads it as usual. A name
    missing from the mapping fails the trial with a message naming it.
    """

    reference: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    objectives: tuple[str, ...] = ()

    @property
    def task(self) -> str | None:
        """The task plugin's name, or None for a ``"module:function"`` objective."""
        return None if ":" in self.reference else self.reference

    def resolve(self, import_path: Sequence[str] = ()) -> Callable[..., Any]:
        """The callable objective: the task (see :func:`medtune.tasks.load_task`) or the
        imported function (see :func:`medtune.study.executors.resolve_objective`, which looks
        in ``import_path`` too)."""
        if self.task is not None:
            from medtune.tasks.contract import load_task

            return load_task(self.task)
        from medtune.study.executors import resolve_objective

        return resolve_objective(self.reference, import_path)

    @property
    def trial_timeout(self) -> float | None:
        """The time limit (seconds) the task or the named objective declares for one trial, if
        any (see :func:`medtune.study.executors.declared_trial_timeout`)."""
        return getattr(self.resolve(), "trial_timeout", None)

    def __call__(self, config: Mapping[str, Any], resource: float | None, seed: int,
                 report: Callable[[float, float], None] | None = None) -> float | Mapping[str, float]:
        returned = self.resolve()({**self.settings, **config}, resource, seed, report)
        if len(self.objectives) < 2 or not isinstance(returned, Mapping):
            return returned
        missing = [name for name in self.objectives if name not in returned]
        if missing:
            raise ValueError(
                f"the objective returned no {', '.join(map(repr, missing))} (it returned: "
                f"{', '.join(map(str, returned)) or 'nothing'}); [study] objectives names "
                "values the objective must return in its mapping")
        return {**returned, "value": returned[self.objectives[0]]}
