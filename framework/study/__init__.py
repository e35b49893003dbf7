"""Studies: the SQLite study store, the executors that run trials, and the study loop.

A study is one SQLite file (:class:`StudyStore`); :func:`run_study` drives a searcher
(:class:`medtune.search.Searcher`) and an objective over it with an executor (``inline``,
``process`` or ``ray``: :data:`EXECUTORS`), as one :class:`RunOptions` says, and
:func:`resume_study` continues it after the driver stopped or was killed.

Modules: :mod:`.store` (the trials of a study file), on top of :mod:`.database` (the file:
transactions, checkpoints, upgrades, backups, the driver lock), :mod:`.schema` (its tables),
:mod:`.records` (trials and metadata as Python values) and :mod:`.files` (new files linked
into place); :mod:`.executors` (where trials run); :mod:`.runner` (the study loop);
:mod:`.artifacts` (the files a trial keeps: :func:`medtune.study.artifacts.trial_folder`).
"""

from medtune.study import artifacts

from medtune.study.executors import (
    EXECUTORS,
    Executor,
    ExecutorError,
    InlineExecutor,
    Objective,
    ProcessExecutor,
    RayExecutor,
    TrialPruned,
    TrialResult,
    TrialTask,
    TrialTimeout,
    check_executor,
    executor_class,
    make_executor,
    run_trial,
)
from medtune.study.runner import (
    RunOptions,
    StudyInterrupted,
    StudyRunError,
    StudySummary,
    outcome,
    replay,
    resume_study,
    run_study,
    trial_seed,
)
from medtune.study.store import (
    SCHEMA_VERSION,
    DamagedTrialError,
    Execution,
    FailureReason,
    NotAStudyError,
    StudyInfo,
    StudyLockedError,
    StudyStore,
    StudyStoreError,
    Trial,
    TrialState,
    driver_lock,
)

__all__ = [
    "EXECUTORS",
    "SCHEMA_VERSION",
    "DamagedTrialError",
    "Execution",
    "Executor",
    "ExecutorError",
    "FailureReason",
    "InlineExecutor",
    "NotAStudyError",
    "Objective",
    "ProcessExecutor",
    "RayExecutor",
    "RunOptions",
    "StudyInfo",
    "StudyInterrupted",
    "StudyLockedError",
    "StudyRunError",
    "StudyStore",
    "StudyStoreError",
    "StudySummary",
    "Trial",
    "TrialPruned",
    "TrialResult",
    "TrialState",
    "TrialTask",
    "TrialTimeout",
    "artifacts",
    "check_executor",
    "driver_lock",
    "executor_class",
    "make_executor",
    "outcome",
    "replay",
    "resume_study",
    "run_study",
    "run_trial",
    "trial_seed",
]
