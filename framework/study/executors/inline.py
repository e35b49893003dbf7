"""The ``inline`` executor: each trial runs in the driver process, one at a time."""

from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Sequence

from medtune.study.executors.base import Executor, check_workers
from medtune.study.executors.trial import (
    ExecutorError,
    Objective,
    TrialResult,
    TrialTask,
    check_time_limit,
    resolve_objective,
    run_trial,
)


class InlineExecutor(Executor):
    """Runs each trial in the driver process when :meth:`wait` is called; capacity 1.

    With a ``trial_timeout``, the objective runs under a ``SIGALRM`` timer (Unix, main thread
    only) that raises :class:`TrialTimeout` inside it at the limit: that stops Python code,
    loops and sleeps, but a hang inside one call into native code (a C extension that never
    returns, a deadlocked lock) is interrupted only when the call returns - and
    ``os._exit`` or a crash in native code ends the driver itself (``resume`` runs that
    trial again). Use ``executor = "process"`` for a hard stop: it kills the worker.
    """

    name = "inline"
    max_workers = 1
    supports_pruning = True

    def __init__(self, objective: str | Objective, n_workers: int = 1, *,
                 trial_timeout: float | None = None, import_path: Sequence[str] = ()):
        self.capacity = check_workers(n_workers, type(self))
        self.trial_timeout = check_time_limit(trial_timeout)
        if self.trial_timeout is not None and (
                not hasattr(signal, "setitimer")
                or threading.current_thread() is not threading.main_thread()):
            raise ExecutorError(
                "the inline executor stops a trial at its trial_timeout with SIGALRM, which "
                "needs Unix and the main thread: run the study from the main thread, or use "
                "executor 'process', which stops a trial by killing its worker"
            )
        self._objective = resolve_objective(objective, import_path)
        self._queue: deque[TrialTask] = deque()

    def submit(self, task: TrialTask) -> None:
        self._queue.append(task)

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        if not self._queue:
            return []
        return [run_trial(self._objective, self._queue.popleft(), self.trial_timeout,
                          self.judge)]

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()
