"""An objective with fixed settings merged under every configuration a searcher proposes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConfiguredObjective:
    """``objective({**settings, **config}, resource, seed, report)``, picklable for workers.

    ``reference`` is the objective's ``"module:function"`` name, imported where it runs.
    """

    reference: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trial_timeout(self) -> float | None:
        """The time limit (seconds) the named objective declares for one trial, if any (see
        :func:`medtune.study.executors.declared_trial_timeout`)."""
        from medtune.study.executors import declared_trial_timeout

        return declared_trial_timeout(self.reference)

    def __call__(self, config: Mapping[str, Any], resource: float | None, seed: int,
                 report: Callable[[float, float], None] | None = None) -> float | Mapping[str, float]:
        from medtune.study.executors import resolve_objective

        return resolve_objective(self.reference)({**self.settings, **config}, resource, seed, report)
