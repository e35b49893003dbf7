"""Executors: where trials run. The driver submits tasks and collects results; it alone writes
the study store, so workers never touch the study file.

An objective is ``objective(config, resource, seed, report) -> float``: it trains the model
``config`` describes with budget ``resource`` (``None`` when the searcher does not use one)
and random seed ``seed``, may call ``report(step, value)`` with intermediate values (one per
resource level or epoch), and returns the metric - or a mapping with the metric under
``"value"`` and further named numbers (per-population Dice, seconds per epoch...), which the
store keeps as the trial's ``metrics``. It may raise :class:`TrialPruned` to stop early, and
may declare how long one of its trials may run with a ``trial_timeout`` attribute (seconds;
see :func:`declared_trial_timeout`). What happens to it is classified by :func:`run_trial`,
the same way on every executor:

- a finite number returned: COMPLETE;
- ``TrialPruned``: PRUNED, with the last reported value;
- NaN or infinity returned: FAIL, reason ``nan``;
- ``MemoryError``, ``torch.OutOfMemoryError`` or an allocator's out-of-memory
  ``RuntimeError`` (torch's ``DefaultCPUAllocator: can't allocate memory``): FAIL, reason
  ``out_of_memory``;
- any other exception, ``SystemExit`` included (``sys.exit`` in an objective ends its trial,
  not the study): FAIL, reason ``exception``, with its traceback;
- running past the time limit (``trial_timeout``): FAIL, reason ``timeout``;
- the worker process dying (``process``, ``ray``): FAIL, reason ``worker_died``.

``KeyboardInterrupt`` is not a trial's outcome: it stops the run (see
:mod:`medtune.study.runner`).

Executors: ``inline`` (in the driver, one trial at a time), ``process`` (local worker
processes) and ``ray`` (Ray tasks on a local or remote cluster). How each enforces a time
limit differs (see their docstrings): the process executor kills the worker and starts another,
Ray cancels the task (force), and the inline executor interrupts the objective with a signal,
which stops Python code and sleeps but not one long call into native code.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from medtune.errors import MedtuneError
from medtune.study.store import Execution, FailureReason, TrialState, utc_now

EXECUTORS = ("inline", "process", "ray")

#: How long the Ray executor waits for a cluster's address to accept a connection (seconds).
RAY_CONNECT_TIMEOUT = 10.0

#: After a first stop, how often the inline executor repeats it while an objective that
#: caught it keeps running (seconds).
_REPEAT_STOP = 1.0

#: The messages of the ``RuntimeError`` that allocators raise when memory runs out (torch's
#: CPU allocator, CUDA and other back-ends through older torch versions).
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory",
                           "defaultcpuallocator")


class ExecutorError(MedtuneError):
    """An executor cannot be set up (missing package, objective it cannot ship, bad option)."""


class TrialPruned(Exception):
    """Raised by an objective to stop its trial early; the trial is recorded as PRUNED."""


class TrialTimeout(BaseException):
    """Raised inside an objective run by the inline executor when its trial passes its time
    limit. A ``BaseException``, like ``KeyboardInterrupt``, so that an objective's
    ``except Exception`` does not swallow it; the trial is recorded FAIL, reason ``timeout``."""


class Objective(Protocol):
    """``objective(config, resource, seed, report) -> float | {"value": float, name: float}``;
    ``report(step, value)``."""

    def __call__(
        self,
        config: dict[str, Any],
        resource: float | None,
        seed: int,
        report: Callable[[float, float], None],
    ) -> float | Mapping[str, float]: ...


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs to run one trial."""

    trial_id: int
    config: Mapping[str, Any]
    resource: float | None
    seed: int


@dataclass(frozen=True)
class TrialResult:
    """What a worker sends back: the outcome of one trial and how it ran."""

    trial_id: int
    state: TrialState  # COMPLETE, PRUNED or FAIL
    value: float | None = None
    failure_reason: FailureReason | None = None
    traceback: str | None = None
    execution: Execution = field(default_factory=Execution)


# ------------------------------------------------------------------------------- objectives


def objective_reference(objective: str | Objective) -> str | None:
    """``"module:function"`` for an objective importable by that name, else None."""
    if isinstance(objective, str):
        return objective
    module = getattr(objective, "__module__", None)
    qualname = getattr(objective, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        if _import_reference(f"{module}:{qualname}") is objective:
            return f"{module}:{qualname}"
    except ExecutorError:
        pass
    return None


def resolve_objective(objective: str | Objective, import_path: Sequence[str] = ()) -> Objective:
    """The objective callable: ``objective`` itself, or what a ``"module:function"`` names.

    ``import_path``: folders where such a module is looked for after the installed packages
    and ``PYTHONPATH`` (:func:`add_import_path`), e.g. the folder of a study's configuration.
    """
    add_import_path(import_path)
    if isinstance(objective, str):
        return _import_reference(objective, import_path)
    if not callable(objective):
        raise ExecutorError(
            f"the objective must be a callable or a 'module:function' string, not {objective!r}"
        )
    return objective


def add_import_path(folders: Sequence[str]) -> None:
    """Append ``folders`` that are not there yet to ``sys.path``: last, so that they never
    hide an installed module of the same name."""
    added = False
    for folder in folders:
        if folder not in sys.path:
            sys.path.append(folder)
            added = True
    if added:
        importlib.invalidate_caches()


def declared_trial_timeout(objective: str | Objective,
                           import_path: Sequence[str] = ()) -> float | None:
    """How long one trial of ``objective`` may run, as the objective declares it: its
    ``trial_timeout`` attribute, in seconds (None, or no such attribute: no limit).

    A task that knows how long a trial should take sets it once (``train.trial_timeout =
    600``); a study's own ``trial_timeout`` overrides it. The built-in tasks declare none:
    their trials last as long as their settings ask (a ``--scale``d study trains longer).
    """
    declared = getattr(resolve_objective(objective, import_path), "trial_timeout", None)
    return _time_limit(declared, f"the trial_timeout that objective {objective!r} declares")


def _time_limit(seconds: Any, what: str = "trial_timeout") -> float | None:
    """``seconds`` as a time limit: None or 0 for none, else a positive finite number."""
    if seconds is None or (not isinstance(seconds, bool) and seconds == 0):
        return None
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds) or seconds < 0):
        raise ExecutorError(f"{what} must be a positive number of seconds (0 or None for no "
                            f"limit), got {seconds!r}")
    return float(seconds)


def _import_reference(reference: str, import_path: Sequence[str] = ()) -> Objective:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ExecutorError(
            f"objective reference {reference!r} must look like 'package.module:function'"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        searched = "the installed packages and PYTHONPATH"
        if import_path:
            searched += " and then " + ", ".join(import_path)
        raise ExecutorError(
            f"cannot import module {module_name!r} for objective {reference!r}: {exc}; "
            f"searched {searched}: put the module there (a file {module_name.split('.')[0]}.py "
            "beside the configuration works), install it, or add its folder to PYTHONPATH"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ExecutorError(
                f"module {module_name!r} has no attribute {attribute!r} (objective {reference!r})"
            ) from None
    if not callable(target):
        raise ExecutorError(f"objective {reference!r} is not callable")
    return target


# ----------------------------------------------------------------------------- one trial


def run_trial(objective: Objective, task: TrialTask,
              time_limit: float | None = None) -> TrialResult:
    """Run ``objective`` for ``task`` in this process and classify what happened.

    ``time_limit`` (seconds; only in the main thread, where Unix delivers ``SIGALRM``): past
    it, :class:`TrialTimeout` is raised inside the objective, again every second while it
    keeps running, and the trial fails with reason ``timeout`` (also when the objective caught
    the stop and returned). This stops Python code and sleeps, not one long call into native
    code, which is interrupted only when it returns.

    Never raises for a problem of the trial itself (``KeyboardInterrupt`` still propagates, so
    that Ctrl-C stops the study).
    """
    if time_limit is not None and threading.current_thread() is not threading.main_thread():
        raise ValueError("run_trial enforces a time_limit with SIGALRM, which only the main "
                         "thread receives: call it from the main thread")
    intermediate: list[tuple[float, float]] = []

    def report(step: float, value: float) -> None:
        intermediate.append((float(step), float(value)))

    started = utc_now()
    clock = time.perf_counter()
    state, value, reason, trace = TrialState.COMPLETE, None, None, None
    metrics: dict[str, float | list[float]] = {}
    alarm = _Alarm(time_limit, task.trial_id)
    try:
        with alarm:
            returned = objective(dict(task.config), task.resource, task.seed, report)
        value, metrics = _as_metrics(returned)
    except TrialPruned:
        state = TrialState.PRUNED
        value = intermediate[-1][1] if intermediate else None
    except TrialTimeout:
        state, reason, trace = TrialState.FAIL, FailureReason.TIMEOUT, traceback.format_exc()
    except SystemExit as exc:
        state, reason = TrialState.FAIL, FailureReason.EXCEPTION
        trace = (f"{traceback.format_exc()}the objective called sys.exit({exc.code!r}) in trial "
                 f"{task.trial_id}: a trial cannot end the study, so it counts as failed")
    except Exception as exc:  # noqa: BLE001 - every failure of a trial is recorded
        state, trace = TrialState.FAIL, traceback.format_exc()
        reason = FailureReason.OUT_OF_MEMORY if _is_out_of_memory(exc) else FailureReason.EXCEPTION
    else:
        if not math.isfinite(value):
            state, reason = TrialState.FAIL, FailureReason.NAN
            trace = (
                f"the objective returned {value!r} for trial {task.trial_id}: a metric that is "
                "not finite (a diverged training, a NaN loss) counts as a failed trial"
            )
            value = None
    if alarm.expired and reason is not FailureReason.TIMEOUT:
        # it caught every stop and ended past its limit anyway
        state, value, reason = TrialState.FAIL, None, FailureReason.TIMEOUT
        trace = f"{trace or ''}{alarm.message} (the objective caught the stop and went on)"
    duration = time.perf_counter() - clock
    execution = Execution(
        started=started,
        finished=utc_now(),
        duration=duration,
        host=socket.gethostname(),
        worker_pid=os.getpid(),
        intermediate=tuple(intermediate),
        metrics=metrics,
    )
    return TrialResult(task.trial_id, state, value, reason, trace, execution)


class _Alarm:
    """Raise :class:`TrialTimeout` in this (the main) thread ``seconds`` after entering, and
    every :data:`_REPEAT_STOP` seconds after that, until the block is left (``SIGALRM``).
    ``seconds=None``: does nothing."""

    def __init__(self, seconds: float | None, trial_id: int):
        self.seconds = seconds
        self.message = "" if seconds is None else (
            f"trial {trial_id} ran longer than its time limit (trial_timeout = {seconds:g} s) "
            "and was stopped")
        self.expired = False
        self._armed = False
        self._previous: Any = None

    def _stop(self, signum: int, frame: object) -> None:
        if not self._armed:
            return  # being disarmed: nothing to stop any more
        self.expired = True
        signal.setitimer(signal.ITIMER_REAL, _REPEAT_STOP)
        raise TrialTimeout(self.message)

    def __enter__(self) -> _Alarm:
        if self.seconds is not None:
            self._previous = signal.signal(signal.SIGALRM, self._stop)
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.seconds is None:
            return
        while True:  # a stop that lands between these steps is caught and the steps redone
            try:
                self._armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, self._previous)
                return
            except TrialTimeout:
                continue


def _as_metrics(returned: Any) -> tuple[float, dict[str, float | list[float]]]:
    """The objective's value and further named metrics: it returns one number, or a mapping
    with the value under ``"value"`` and other numbers (or sequences of numbers: a series such
    as a coefficient's trajectory) under their names."""
    if isinstance(returned, Mapping):
        if "value" not in returned:
            raise TypeError(
                f"the objective returned a mapping without a 'value' key (keys: "
                f"{', '.join(map(repr, returned))}); put the metric the study optimises under "
                "'value'"
            )
        metrics = {str(name): _as_series(v, f"metric {name!r}") if _is_sequence(v)
                   else _as_number(v, f"metric {name!r}") for name, v in returned.items()}
        value = metrics.pop("value")
        if isinstance(value, list):
            raise TypeError("the objective's 'value' is a sequence; it must be one number")
        return value, metrics
    return _as_number(returned, "value"), {}


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) == 1


def _as_series(values: Any, what: str) -> list[float]:
    return [_as_number(v, f"{what} entry") for v in values]


def _as_number(returned: Any, what: str) -> float:
    try:
        return float(returned)
    except (TypeError, ValueError):
        raise TypeError(
            f"the objective's {what} is {returned!r} ({type(returned).__name__}); it must be "
            "one number (an objective returns a number or a mapping of named numbers, or "
            "sequences of numbers, with the optimised one under 'value')"
        ) from None


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never import torch just to classify an error
    out_of_memory = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if out_of_memory is not None and isinstance(exc, out_of_memory):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in _OUT_OF_MEMORY_MESSAGES)


def _worker_died(task: TrialTask, message: str, host: str | None = None,
                 pid: int | None = None) -> TrialResult:
    return TrialResult(
        task.trial_id, TrialState.FAIL, None, FailureReason.WORKER_DIED, message,
        Execution(finished=utc_now(), host=host, worker_pid=pid),
    )


def _timed_out(task: TrialTask, limit: float, how: str, started: datetime | None,
               elapsed: float, host: str | None, pid: int | None) -> TrialResult:
    """The result of a trial stopped from outside (process, Ray) at its time limit."""
    return TrialResult(
        task.trial_id, TrialState.FAIL, None, FailureReason.TIMEOUT,
        f"trial {task.trial_id} ran longer than its time limit (trial_timeout = {limit:g} s) "
        f"and was stopped: {how}",
        Execution(started=started, finished=utc_now(), duration=elapsed, host=host,
                  worker_pid=pid),
    )


def _until_first_limit(timeout: float | None, starts: Sequence[float],
                       trial_timeout: float | None) -> float | None:
    """How long a worker-pool executor may wait for results: ``timeout``, shortened to the
    time left until the earliest of the running trials (started at the monotonic times
    ``starts``) passes ``trial_timeout``."""
    if trial_timeout is None or not starts:
        return timeout
    left = max(0.0, min(starts) + trial_timeout - time.monotonic())
    return left if timeout is None else min(timeout, left)


def _check_workers(n_workers: Any) -> int:
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ExecutorError(f"n_workers must be a whole number >= 1, got {n_workers!r}")
    return n_workers


# ---------------------------------------------------------------------------- executors


class Executor(ABC):
    """Runs trials for the driver: :meth:`submit` up to :attr:`capacity` tasks, then
    :meth:`wait` for results. Use as a context manager, or call :meth:`close` (more than once
    is fine).

    ``trial_timeout`` (seconds, None for none) is how long one trial may run; past it the
    trial is stopped and :meth:`wait` returns it as FAIL, reason ``timeout``.
    """

    name: str
    capacity: int
    trial_timeout: float | None = None

    @abstractmethod
    def submit(self, task: TrialTask) -> None:
        """Start ``task``; the caller keeps at most :attr:`capacity` tasks in flight."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        """Results that are ready, waiting up to ``timeout`` seconds (None: until one is)."""

    @abstractmethod
    def close(self, cancel: bool = False) -> None:
        """Release workers; with ``cancel``, stop trials still running instead of waiting."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(cancel=exc_type is not None)


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

    def __init__(self, objective: str | Objective, n_workers: int = 1, *,
                 trial_timeout: float | None = None, import_path: Sequence[str] = ()):
        if n_workers != 1:
            raise ExecutorError(
                f"the inline executor runs one trial at a time (n_workers={n_workers}): use "
                "executor 'process' or 'ray' for parallel trials"
            )
        self.capacity = 1
        self.trial_timeout = _time_limit(trial_timeout)
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
        return [run_trial(self._objective, self._queue.popleft(), self.trial_timeout)]

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()


_READY = "ready"  # a worker's first message: it started and imported the objective


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process from the spawn context
    connection: multiprocessing.connection.Connection
    task: TrialTask | None = None
    ready: bool = False
    started: float | None = None  # time.monotonic() when its task started
    started_at: datetime | None = None


class ProcessExecutor(Executor):
    """Runs trials in ``n_workers`` local worker processes (started with ``spawn``).

    Each worker runs one trial at a time and is reused. A worker that dies (segfault, killed
    by the OOM killer, ``os._exit``) fails only its own trial and is replaced; so does one
    whose trial passes ``trial_timeout`` (counted from when the worker, started, takes the
    trial): it is killed, its trial fails with reason ``timeout``. Workers exit when the
    driver dies, even by SIGKILL, so no orphaned trial keeps running, and they ignore Ctrl-C
    (which a terminal sends to every process of the job): the driver stops them.

    The objective must be importable in a fresh interpreter: a module-level function, a
    picklable callable object, or a ``"module:function"`` string (looked up on ``import_path``
    too, see :func:`resolve_objective`); and a script that runs a study must do so under
    ``if __name__ == "__main__":``. A worker that cannot start at all raises
    :class:`ExecutorError` from :meth:`wait`, since every trial would fail the same way.
    """

    name = "process"

    def __init__(self, objective: str | Objective, n_workers: int = 2, *,
                 trial_timeout: float | None = None, import_path: Sequence[str] = ()):
        self.capacity = _check_workers(n_workers)
        self.trial_timeout = _time_limit(trial_timeout)
        resolve_objective(objective, import_path)  # fail now, in the driver, on a bad reference
        if not isinstance(objective, str):
            try:
                pickle.dumps(objective)
            except Exception as exc:  # noqa: BLE001 - pickling raises many types
                raise ExecutorError(
                    f"the process executor cannot send objective {objective!r} to its workers "
                    f"({exc}): define it at module level, or pass 'module:function'"
                ) from exc
        self._objective = objective
        self._import_path = tuple(import_path)
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def _threads_per_worker(self) -> int:
        """An equal share of this machine's cores, so workers do not oversubscribe them."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // self.capacity)

    def _start_worker(self) -> _Worker:
        driver_end, worker_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_process_worker_main,
            args=(worker_end, self._objective, os.getpid(), self._threads_per_worker(),
                  self._import_path),
            name=f"medtune-worker-{len(self._workers)}",
            daemon=True,
        )
        with _sigint_blocked():  # the worker starts with Ctrl-C blocked (see the worker)
            process.start()
        worker_end.close()
        worker = _Worker(process, driver_end)
        self._workers.append(worker)
        return worker

    def submit(self, task: TrialTask) -> None:
        for worker in [w for w in self._workers if w.task is None and not w.process.is_alive()]:
            worker.process.join()
            self._discard(worker)
        idle = [w for w in self._workers if w.task is None]
        worker = idle[0] if idle else None
        if worker is None:
            if len(self._workers) >= self.capacity:
                raise ExecutorError(
                    f"all {self.capacity} workers are busy: wait for a result before submitting"
                )
            worker = self._start_worker()
        worker.task = task
        if worker.ready:
            self._start_clock(worker)
        try:
            worker.connection.send(task)
        except (BrokenPipeError, EOFError, OSError):
            pass  # the worker died; wait() reports the trial as worker_died

    @staticmethod
    def _start_clock(worker: _Worker) -> None:
        worker.started, worker.started_at = time.monotonic(), utc_now()

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            return []
        handles: dict[Any, _Worker] = {}
        for worker in busy:
            handles[worker.connection] = worker
            handles[worker.process.sentinel] = worker
        ready = multiprocessing.connection.wait(list(handles), self._until_deadline(timeout))
        exited = {id(handles[h]) for h in ready if h == handles[h].process.sentinel}
        results: list[TrialResult] = []
        for worker in {id(handles[h]): handles[h] for h in ready}.values():
            result = self._collect(worker, exited=id(worker) in exited)
            if result is not None:
                results.append(result)
        return results + self._stop_overdue()

    def _until_deadline(self, timeout: float | None) -> float | None:
        starts = [w.started for w in self._workers if w.task is not None and w.started is not None]
        return _until_first_limit(timeout, starts, self.trial_timeout)

    def _stop_overdue(self) -> list[TrialResult]:
        """Kill the workers whose trial passed its time limit; their trials' results."""
        if self.trial_timeout is None:
            return []
        results = []
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.task is None or worker.started is None:
                continue
            elapsed = now - worker.started
            if elapsed < self.trial_timeout:
                continue
            finished = self._collect(worker)  # a result that arrived just in time counts
            if finished is not None:
                results.append(finished)
                continue
            task, pid = worker.task, worker.process.pid
            worker.process.kill()
            worker.process.join()
            self._discard(worker)
            results.append(_timed_out(
                task, self.trial_timeout,
                f"its worker process (pid {pid}) was killed; a new worker takes the next trial",
                worker.started_at, elapsed, socket.gethostname(), pid))
        return results

    def _collect(self, worker: _Worker, exited: bool = False) -> TrialResult | None:
        task = worker.task
        assert task is not None
        try:
            while worker.connection.poll():
                message = worker.connection.recv()
                if message == _READY:
                    worker.ready = True
                    self._start_clock(worker)  # it takes its first trial now
                    continue
                worker.task = None
                worker.started = worker.started_at = None
                return message
        except (EOFError, OSError, pickle.UnpicklingError):
            exited = True  # the pipe closed: the worker is exiting
        if exited:
            # its sentinel fired or its pipe closed: reap it, so that a worker which is still
            # being torn down is not mistaken for a live one
            worker.process.join(timeout=30)
        if worker.process.is_alive():
            return None  # woken by the pipe, nothing complete to read yet
        worker.process.join()
        code = worker.process.exitcode
        if not worker.ready and not (code is not None and code < 0):
            # it exited by itself before it could take work: its code cannot start (a signal
            # from outside, such as the out-of-memory killer, is a worker death like any other)
            self._discard(worker)
            raise ExecutorError(
                f"a worker process could not start (exit code {code}; its error is printed "
                "above). A script that runs a study with executor 'process' must start it "
                "under `if __name__ == \"__main__\":`, and the objective must import in a "
                "fresh interpreter"
            )
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        self._discard(worker)
        return _worker_died(
            task,
            f"the worker process (pid {worker.process.pid}) running trial {task.trial_id} {how} "
            "before returning a result (a crash in native code, the out-of-memory killer, or "
            "os._exit in the objective)",
            host=socket.gethostname(),
            pid=worker.process.pid,
        )

    def _discard(self, worker: _Worker) -> None:
        worker.connection.close()
        self._workers.remove(worker)

    def close(self, cancel: bool = False) -> None:
        for worker in list(self._workers):
            if cancel or worker.task is not None:
                worker.process.kill()
            else:
                try:
                    worker.connection.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for worker in list(self._workers):
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            self._discard(worker)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread for the block. A process started meanwhile inherits the
    block, so a Ctrl-C cannot interrupt it before it ignores SIGINT for good; one that reaches
    the driver meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _process_worker_main(
    connection: multiprocessing.connection.Connection,
    objective: str | Objective,
    driver_pid: int,
    threads: int,
    import_path: Sequence[str] = (),
) -> None:
    """Worker loop: receive a task, run it, send the result; exit on None or driver death."""
    # Ctrl-C in a terminal reaches the whole process group: the driver handles it (and stops
    # the workers); a worker would only print a second traceback. It started with SIGINT
    # blocked (see _sigint_blocked): ignore it, then drop the block and any Ctrl-C pending.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _exit_with_driver(driver_pid)
    try:
        import torch
    except ImportError:  # objectives without torch need no thread limit
        pass
    else:
        torch.set_num_threads(threads)
    function = resolve_objective(objective, import_path)
    connection.send(_READY)
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        connection.send(run_trial(function, task))


def _exit_with_driver(driver_pid: int) -> None:
    """Make this worker die with the driver, so a killed driver leaves no trial running."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != driver_pid:  # the driver died before prctl took effect
        os._exit(1)

    def watch() -> None:  # elsewhere (and as a second guard): poll the parent
        while True:
            time.sleep(0.5)
            if os.getppid() != driver_pid:
                os._exit(1)

    threading.Thread(target=watch, name="medtune-driver-watch", daemon=True).start()


@dataclass(frozen=True)
class _Started:
    """What a Ray task sends first: where its trial runs, and since when."""

    host: str
    pid: int
    at: datetime


@dataclass
class _RayTrial:
    task: TrialTask
    started: float | None = None  # time.monotonic() in the driver when the task started
    where: _Started | None = None


class RayExecutor(Executor):
    """Runs trials as Ray tasks, on the cluster at ``address``.

    ``address``: ``"auto"`` joins the cluster started on this machine (``ray start --head``;
    for a multi-machine cluster, the driver runs on a node of it), ``"host:port"`` or
    ``"ray://host:port"`` joins that cluster, ``"local"`` starts a private Ray instance for
    this study (stopped at the end), and ``None`` does what ``ray.init()`` does (the
    ``RAY_ADDRESS`` variable, else the last cluster started here, else a new instance). A
    cluster address (given, or in ``RAY_ADDRESS``) must accept a connection within
    :data:`RAY_CONNECT_TIMEOUT` seconds, else :class:`ExecutorError` (Ray itself would wait
    for minutes). If Ray is already initialised in this process, that connection is used.
    ``init_options`` go to ``ray.init``. ``n_workers`` is how many trials are in flight at
    once; each takes ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs from the cluster.

    Each task first tells the driver its worker's host and process id, so a trial whose worker
    dies is recorded with them (reason ``worker_died``; Ray does not retry it), and
    ``trial_timeout`` counts from then (not while the task waits for free CPUs): past it the
    task is cancelled with ``force`` (its worker process killed), the trial fails with reason
    ``timeout``.

    The objective travels by reference: as its ``"module:function"`` name, or, for a callable
    object (such as a configured objective), pickled with its class named by module; so its
    module must be importable on every node (installed there, on the nodes' PYTHONPATH, or in
    a folder of ``import_path`` that exists there too).
    """

    name = "ray"

    def __init__(
        self,
        objective: str | Objective,
        n_workers: int = 2,
        *,
        address: str | None = "auto",
        cpus_per_trial: float = 1,
        gpus_per_trial: float = 0,
        init_options: Mapping[str, Any] | None = None,
        trial_timeout: float | None = None,
        import_path: Sequence[str] = (),
    ):
        try:
            import ray
        except ImportError as exc:
            raise ExecutorError(
                "executor 'ray' needs the ray package: pip install 'ray>=2.9' (or use "
                "executor 'process' on one machine)"
            ) from exc
        self.capacity = _check_workers(n_workers)
        self.trial_timeout = _time_limit(trial_timeout)
        resolve_objective(objective, import_path)  # fail now, in the driver, on a bad reference
        shipped = objective_reference(objective) or objective
        if not isinstance(shipped, str):
            try:
                pickle.dumps(shipped)
            except Exception as exc:  # noqa: BLE001 - pickling raises many types
                raise ExecutorError(
                    f"executor 'ray' cannot send objective {objective!r} to its workers ({exc}): "
                    "define it at module level in an importable module and pass "
                    "'module:function'"
                ) from exc
        self._ray = ray
        self._objective = shipped
        self._import_path = tuple(import_path)
        self._owns_ray = False
        if not ray.is_initialized():
            _check_reachable(address)
            try:
                ray.init(address=address, **dict(init_options or {}))
            except ConnectionError as exc:
                raise ExecutorError(
                    f"cannot reach a Ray cluster at address {address!r} ({exc}): start one with "
                    "`ray start --head`, or pass address=None for a local Ray instance"
                ) from exc
            self._owns_ray = True
        self._remote = ray.remote(_ray_trial).options(
            num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=0
        )
        self._pending: dict[Any, _RayTrial] = {}  # the task's stream of results -> its trial

    def submit(self, task: TrialTask) -> None:
        if len(self._pending) >= self.capacity:
            raise ExecutorError(
                f"{self.capacity} trials already in flight: wait for a result before submitting"
            )
        stream = self._remote.remote(self._objective, task, self._import_path)
        self._pending[stream] = _RayTrial(task)

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        if not self._pending:
            return []
        ready, _ = self._ray.wait(list(self._pending), num_returns=1,
                                  timeout=self._until_deadline(timeout))
        if ready:  # collect whatever else is done too
            more, _ = self._ray.wait(list(self._pending), num_returns=len(self._pending),
                                     timeout=0)
            ready = list({stream: None for stream in [*ready, *more]})
        results = [r for r in map(self._advance, ready) if r is not None]
        return results + self._stop_overdue()

    def _advance(self, stream: Any) -> TrialResult | None:
        """Read the next message of a task that has one: its start, or its result."""
        trial = self._pending[stream]
        where = trial.where
        try:
            message = self._ray.get(next(stream))
        except (StopIteration, self._ray.exceptions.RayError) as exc:
            del self._pending[stream]
            on = f" (pid {where.pid} on {where.host})" if where else ""
            cause = "it ended without one" if isinstance(exc, StopIteration) else (
                f"{type(exc).__name__}: {exc}")
            return _worker_died(
                trial.task,
                f"the Ray worker{on} running trial {trial.task.trial_id} died before returning "
                f"a result: {cause}",
                host=where.host if where else None, pid=where.pid if where else None)
        if isinstance(message, _Started):
            trial.started, trial.where = time.monotonic(), message
            return None
        del self._pending[stream]
        return message

    def _until_deadline(self, timeout: float | None) -> float | None:
        starts = [t.started for t in self._pending.values() if t.started is not None]
        return _until_first_limit(timeout, starts, self.trial_timeout)

    def _stop_overdue(self) -> list[TrialResult]:
        """Cancel (force) the tasks whose trial passed its time limit; their results."""
        if self.trial_timeout is None:
            return []
        results = []
        for stream, trial in list(self._pending.items()):
            if trial.started is None or trial.where is None:
                continue
            elapsed = time.monotonic() - trial.started
            if elapsed < self.trial_timeout:
                continue
            done, _ = self._ray.wait([stream], timeout=0)
            if done:  # its result arrived just in time
                result = self._advance(stream)
                if result is not None:
                    results.append(result)
                    continue
            self._ray.cancel(stream, force=True)
            del self._pending[stream]
            results.append(_timed_out(
                trial.task, self.trial_timeout,
                f"its Ray task was cancelled (force: worker process {trial.where.pid} on "
                f"{trial.where.host} killed)",
                trial.where.at, elapsed, trial.where.host, trial.where.pid))
        return results

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for stream in self._pending:
                try:
                    self._ray.cancel(stream, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        elif self._pending:
            try:
                self._ray.wait(list(self._pending), num_returns=len(self._pending))
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._pending.clear()
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False


def _check_reachable(address: str | None) -> None:
    """Refuse at once a Ray cluster address (given, or for ``"auto"``/None in ``RAY_ADDRESS``)
    that accepts no connection within :data:`RAY_CONNECT_TIMEOUT` seconds."""
    if address in (None, "auto"):
        address = os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("auto", "local"):
        return  # Ray finds (or starts) the cluster on this machine by itself
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not port.isdigit():
        return  # not host:port: Ray says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)),
                                 timeout=RAY_CONNECT_TIMEOUT).close()
    except OSError as exc:
        why = (f"no answer within {RAY_CONNECT_TIMEOUT:g} s" if isinstance(exc, TimeoutError)
               else exc.strerror or str(exc))
        raise ExecutorError(
            f"cannot reach a Ray cluster at address {address!r} ({why}): start one there with "
            "`ray start --head`, check the address, or use address = \"local\" for a Ray "
            "instance of this study alone"
        ) from None


def _ray_trial(objective: str | Objective, task: TrialTask,
               import_path: Sequence[str] = ()) -> Iterator[_Started | TrialResult]:
    """Ray task body: say where it runs, then import the objective and run the trial."""
    yield _Started(socket.gethostname(), os.getpid(), utc_now())
    yield run_trial(resolve_objective(objective, import_path), task)


def make_executor(
    name: str,
    objective: str | Objective,
    n_workers: int = 1,
    *,
    trial_timeout: float | None = None,
    import_path: Sequence[str] = (),
    **options: Any,
) -> Executor:
    """Build the executor called ``name`` (``inline``, ``process`` or ``ray``) for ``objective``.

    ``trial_timeout``: seconds one trial may run; None for the limit the objective declares
    (:func:`declared_trial_timeout`), 0 for no limit. ``import_path``: folders where a
    ``"module:function"`` objective is looked for besides the installed packages and
    PYTHONPATH, in the driver and in the workers. ``options`` go to the executor (for
    ``ray``: ``address``, ``cpus_per_trial``, ``gpus_per_trial``, ``init_options``). A Ray
    executor connects to its cluster here: build the executor before writing anything that an
    unreachable cluster should not leave behind.
    """
    if name not in EXECUTORS:
        raise ExecutorError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTORS)}")
    if name != "ray" and options:
        raise ExecutorError(
            f"the {name} executor takes no options, got {', '.join(sorted(options))}"
            + (" (address is for executor 'ray')" if "address" in options else ""))
    if trial_timeout is None:
        trial_timeout = declared_trial_timeout(objective, import_path)
    common = dict(trial_timeout=trial_timeout, import_path=import_path)
    if name == "inline":
        return InlineExecutor(objective, n_workers, **common)
    if name == "process":
        return ProcessExecutor(objective, n_workers, **common)
    return RayExecutor(objective, n_workers, **common, **options)
