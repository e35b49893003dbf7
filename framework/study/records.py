"""What a study records, as Python values: a trial's state and why it failed, the
:class:`Trial` as its row reads, the :class:`Execution` of an objective (where, when, what it
reported), and the study's metadata (:class:`StudyInfo`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any


class TrialState(str, Enum):
    """Where a trial stands.

    ``REQUEUED`` marks a trial that was RUNNING when its driver died or was interrupted (then
    with failure reason ``interrupted``): its configuration is run again as a new trial (whose
    ``requeued_from`` names it), and it is never counted.
    """

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    REQUEUED = "REQUEUED"

    @property
    def finished(self) -> bool:
        """True for the states that count as a finished trial."""
        return self in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class FailureReason(str, Enum):
    """Why a trial failed."""

    EXCEPTION = "exception"
    NAN = "nan"
    OUT_OF_MEMORY = "out_of_memory"
    WORKER_DIED = "worker_died"
    TIMEOUT = "timeout"  # ran past the study's trial_timeout and was stopped
    INTERRUPTED = "interrupted"  # in flight when the run was interrupted (a REQUEUED trial)


FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

#: The metric that records the step a PRUNED trial was stopped at.
PRUNED_AT_STEP = "pruned_at_step"

@dataclass(frozen=True)
class Trial:
    """One row of the ``trials`` table, with its intermediate values."""

    id: int
    suggestion_id: int
    config: dict[str, Any]
    resource: float | None
    tag: dict[str, Any]
    seed: int
    state: TrialState
    value: float | None
    failure_reason: FailureReason | None
    traceback: str | None
    started: datetime
    finished: datetime | None
    duration: float | None
    host: str | None
    worker_pid: int | None
    completion_order: int | None
    asked_after: int
    requeued_from: int | None
    told_value: float | None
    told_failed: bool | None
    intermediate: dict[float, float] = field(default_factory=dict)
    metrics: dict[str, float | list[float]] = field(default_factory=dict)
    #: the folder of the files it kept, relative to the study file's folder (see
    #: :mod:`medtune.study.artifacts`); None when it keeps none
    artifact: str | None = None

    @property
    def pruned_at(self) -> float | None:
        """The step a PRUNED trial was stopped at (its metric ``pruned_at_step``, else its last
        report); None for other trials and one stopped before any report."""
        if self.state is not TrialState.PRUNED:
            return None
        step = self.metrics.get(PRUNED_AT_STEP)
        if isinstance(step, (int, float)):
            return float(step)
        return max(self.intermediate) if self.intermediate else None

    @property
    def pruned_by(self) -> str | None:
        """The rule that stopped a PRUNED trial (kept as its ``traceback``); None otherwise."""
        return self.traceback if self.state is TrialState.PRUNED else None


@dataclass(frozen=True)
class Execution:
    """Where and when an objective ran, the intermediate values it reported and the further
    named metrics it returned (besides its value).

    Executors fill this in on the worker. A field left ``None`` is unknown (a worker that died
    cannot say when it started), except ``finished``, which defaults to the time of recording.
    """

    started: datetime | None = None
    finished: datetime | None = None
    duration: float | None = None
    host: str | None = None
    worker_pid: int | None = None
    intermediate: tuple[tuple[float, float], ...] = ()
    metrics: Mapping[str, float | Sequence[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyInfo:
    """A study's metadata (the ``meta`` table)."""

    name: str
    direction: str
    seed: int
    config_text: str
    created: datetime
    schema_version: int
    medtune_version: str


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the store's timestamps)."""
    return datetime.now(timezone.utc)
