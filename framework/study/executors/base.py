"""What every executor is: the :class:`Executor` interface the study loop drives (submit up to
its capacity, wait for results, close), and the checks and timing its implementations share."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from medtune.study.executors.trial import ExecutorError, Judge, TrialResult, TrialTask


class Executor(ABC):
    """Runs trials for the driver: :meth:`submit` up to :attr:`capacity` tasks, then
    :meth:`wait` for results. Use as a context manager, or call :meth:`close` (more than once
    is fine).

    ``trial_timeout`` (seconds, None for none) is how long one trial may run; past it the
    trial is stopped and :meth:`wait` returns it as FAIL, reason ``timeout``.

    An executor that :attr:`supports_pruning` takes the driver's :data:`Judge` through
    :meth:`enable_pruning`: each report of a trial is judged as it happens (in the driver)
    and the objective goes on only once it is.
    """

    name: ClassVar[str]
    #: the most trials it can run at once (None: as many as it is given workers)
    max_workers: ClassVar[int | None] = None
    capacity: int
    trial_timeout: float | None = None
    #: whether trials can be stopped early by the driver's pruner
    supports_pruning: ClassVar[bool] = False
    judge: Judge | None = None

    @abstractmethod
    def submit(self, task: TrialTask) -> None:
        """Start ``task``; the caller keeps at most :attr:`capacity` tasks in flight."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        """Results that are ready, waiting up to ``timeout`` seconds (None: until one is)."""

    @abstractmethod
    def close(self, cancel: bool = False) -> None:
        """Release workers; with ``cancel``, stop trials still running instead of waiting."""

    def enable_pruning(self, judge: Judge) -> None:
        """Judge every report of the trials submitted from now on with ``judge``; an executor
        that cannot raises :class:`ExecutorError`."""
        if not self.supports_pruning:
            raise ExecutorError(refuse_pruning(self.name))
        self.judge = judge

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(cancel=exc_type is not None)


def refuse_pruning(executor: str) -> str:
    """What an executor that cannot stop trials early says to a study with a pruner."""
    return (f"the {executor} executor cannot stop trials early (a [pruner] needs each report "
            "answered by the driver while the trial runs): use executor \"process\" or "
            "\"inline\", or remove [pruner]")


def check_workers(n_workers: Any, executor: type[Executor]) -> int:
    """``n_workers`` (trials in flight at once) if ``executor`` can run that many, else an
    :class:`ExecutorError` that says which executor can."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ExecutorError(f"n_workers must be a whole number >= 1, got {n_workers!r}")
    most = executor.max_workers
    if most is not None and n_workers > most:
        from medtune.study.executors.choice import EXECUTORS  # it imports every executor

        parallel = " or ".join(repr(name) for name, cls in EXECUTORS.items()
                               if cls.max_workers is None)
        at_a_time = "one trial" if most == 1 else f"at most {most} trials"
        raise ExecutorError(
            f"the {executor.name} executor runs {at_a_time} at a time (n_workers={n_workers}): "
            f"use executor {parallel} for parallel trials"
        )
    return n_workers


def until_first_limit(timeout: float | None, starts: Sequence[float],
                      trial_timeout: float | None) -> float | None:
    """How long a worker-pool executor may wait for results: ``timeout``, shortened to the
    time left until the earliest of the running trials (started at the monotonic times
    ``starts``) passes ``trial_timeout``."""
    if trial_timeout is None or not starts:
        return timeout
    left = max(0.0, min(starts) + trial_timeout - time.monotonic())
    return left if timeout is None else min(timeout, left)
