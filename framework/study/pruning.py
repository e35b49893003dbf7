"""Early stopping in the driver: the :class:`PruningJudge` that answers each report of a running
trial with the study's pruner (see :mod:`medtune.pruners`).

The driver alone holds every trial's reports, so it alone decides: an executor that supports
pruning hands it each report as it happens (the inline executor calls it directly, a process
worker sends the report over its pipe, a Ray worker through an actor the driver owns, and each
waits for the answer). Each report is written to the
study file as it arrives, so a killed driver keeps the reports of the trials it had in flight
too; per-case scores stay in memory (a resumed run judges with the wilcoxon pruner against the
trials it ran itself).
"""

from __future__ import annotations

import logging

from medtune.errors import MedtuneError
from medtune.pruners import History, Pruner
from medtune.study.executors import TrialResult
from medtune.study.store import StudyStore, TrialState

logger = logging.getLogger("medtune.study")


class PruningJudge:
    """``judge(trial_id, step, value, scores) -> rule | None`` for one run of a study: records
    the report (store and :class:`History`) and asks ``pruner``.

    ``pruner`` must judge in the study's direction (with several objectives, the first's, the
    direction of the reported value); the history starts from the study's finished trials.
    """

    def __init__(self, store: StudyStore, pruner: Pruner):
        if not isinstance(pruner, Pruner):
            raise MedtuneError(f"a study's pruner is a medtune.pruners.Pruner, got "
                               f"{type(pruner).__name__}: subclass it (see its docstring)")
        if pruner.direction != store.direction:
            raise MedtuneError(
                f"study {store.name!r} is to {store.direction} its reported values, but the "
                f"{pruner.name} pruner was built to {pruner.direction} them: build it with "
                f"direction={store.direction!r}")
        self.store = store
        self.pruner = pruner
        self.history = History.from_trials(store.trials())
        self._warned = False

    def __call__(self, trial_id: int, step: float, value: float,
                 scores: tuple[float, ...] | None) -> str | None:
        self.store.report_intermediate(trial_id, step, value)
        self.history.record(trial_id, step, value, scores)
        rule = self.pruner.should_prune(trial_id, step, value, self.history)
        if rule is not None:
            logger.info("trial %d pruned at step %g: %s", trial_id, step, rule)
        return rule

    def finished(self, result: TrialResult) -> None:
        """A trial's result was recorded: a COMPLETE one counts for ``n_startup_trials``; the
        first that completed without any report is warned about, once."""
        if result.state is not TrialState.COMPLETE:
            return
        self.history.complete(result.trial_id)
        if not result.execution.intermediate and not self._warned:
            self._warned = True
            logger.warning(
                "trial %d completed without reporting an intermediate value, so the %s pruner "
                "cannot stop any trial: call report(step, value) in the objective at each epoch "
                "or resource level, or remove [pruner]", result.trial_id, self.pruner.name)
