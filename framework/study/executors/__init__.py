"""Executors: where trials run. The driver submits tasks and collects results; it alone writes
the study store, so workers never touch the study file.

- :mod:`.trial`: the objective contract, :func:`run_trial` and how a trial's outcome is
  classified, the same way on every executor;
- :mod:`.base`: the :class:`Executor` interface;
- :mod:`.inline` (in the driver, one trial at a time), :mod:`.process` (local worker
  processes) and :mod:`.ray` (Ray tasks on a local or remote cluster);
- :mod:`.choice`: the executors by name (:data:`EXECUTORS`); :func:`check_executor`
  validates an executor's settings without starting anything, :func:`make_executor` builds
  one.

How each enforces a time limit differs (see their docstrings): the process executor kills the
worker and starts another, Ray cancels the task (force), and the inline executor interrupts
the objective with a signal, which stops Python code and sleeps but not one long call into
native code.
"""

from medtune.study.executors.base import Executor, check_workers
from medtune.study.executors.choice import (
    EXECUTORS,
    check_executor,
    executor_class,
    make_executor,
    options_of,
)
from medtune.study.executors.inline import InlineExecutor
from medtune.study.executors.process import ProcessExecutor
from medtune.study.executors.ray import RAY_CONNECT_TIMEOUT, RayExecutor
from medtune.study.executors.trial import (
    PRUNED_AT_STEP,
    ExecutorError,
    Judge,
    Objective,
    TrialPruned,
    TrialResult,
    TrialTask,
    TrialTimeout,
    add_import_path,
    declared_trial_timeout,
    is_out_of_memory,
    objective_reference,
    resolve_objective,
    run_trial,
)

__all__ = [
    "EXECUTORS",
    "PRUNED_AT_STEP",
    "RAY_CONNECT_TIMEOUT",
    "Executor",
    "ExecutorError",
    "InlineExecutor",
    "Judge",
    "Objective",
    "ProcessExecutor",
    "RayExecutor",
    "TrialPruned",
    "TrialResult",
    "TrialTask",
    "TrialTimeout",
    "add_import_path",
    "check_executor",
    "check_workers",
    "declared_trial_timeout",
    "executor_class",
    "is_out_of_memory",
    "make_executor",
    "objective_reference",
    "options_of",
    "resolve_objective",
    "run_trial",
]
