"""Studies: the SQLite study store, the executors that run trials, and the study loop.

A study is one SQLite file (:class:`StudyStore`); :func:`run_study` drives a searcher and an
objective over it with an executor (``inline``, ``process`` or ``ray``), and
:func:`resume_study` continues it after the driver stopped or was killed.
"""

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
    make_executor,
    run_trial,
)
from medtune.study.runner import (
    FAILURE_POLICIES,
    StudyInterrupted,
    StudyRunError,
    StudySummary,
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
    "FAILURE_POLICIES",
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
    "driver_lock",
    "make_executor",
    "replay",
    "resume_study",
    "run_study",
    "run_trial",
    "trial_seed",
]
