"""The ``process`` executor: trials run in local worker processes (``spawn``), one trial per
worker at a time; a worker that dies or passes its trial's time limit is replaced, and workers
die with the driver."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medtune.study.executors.base import Executor, check_workers, until_first_limit
from medtune.study.executors.trial import (
    ExecutorError,
    Judge,
    Objective,
    TrialResult,
    TrialTask,
    check_time_limit,
    resolve_objective,
    run_trial,
    timed_out,
    worker_died,
)
from medtune.study.store import utc_now

_READY = "ready"  # a worker's first message: it started and imported the objective


@dataclass(frozen=True)
class _Report:
    """A report of a trial run with a pruner: the worker waits for the driver's decision."""

    step: float
    value: float
    scores: tuple[float, ...] | None


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

    With pruning (:meth:`enable_pruning`), a worker sends each report over its pipe and waits
    for the decision, which :meth:`wait` gives as the report arrives.
    """

    name = "process"
    supports_pruning = True

    def __init__(self, objective: str | Objective, n_workers: int = 2, *,
                 trial_timeout: float | None = None, import_path: Sequence[str] = ()):
        self.capacity = check_workers(n_workers, type(self))
        self.trial_timeout = check_time_limit(trial_timeout)
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
        if self.judge is not None:
            task = dataclasses.replace(task, pruning=True)
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
        return until_first_limit(timeout, starts, self.trial_timeout)

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
            results.append(timed_out(
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
                if isinstance(message, _Report):
                    assert self.judge is not None
                    worker.connection.send(self.judge(task.trial_id, message.step,
                                                      message.value, message.scores))
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
        return worker_died(
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
        judge = _asking_driver(connection) if task.pruning else None
        connection.send(run_trial(function, task, judge=judge))


def _asking_driver(connection: multiprocessing.connection.Connection) -> Judge:
    """A worker's judge: send the report to the driver, return its decision."""

    def judge(trial_id: int, step: float, value: float,
              scores: tuple[float, ...] | None) -> str | None:
        connection.send(_Report(step, value, scores))
        return connection.recv()

    return judge


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
