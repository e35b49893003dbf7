"""Executors: where trials run. The driver submits tasks and collects results; it alone writes
the study store, so workers never touch the study file.

An objective is ``objective(config, resource, seed, report) -> float``: it trains the model
``config`` describes with budget ``resource`` (``None`` when the searcher does not use one)
and random seed ``seed``, may call ``report(step, value)`` with intermediate values (one per
resource level or epoch), and returns the metric - or a mapping with the metric under
``"value"`` and further named numbers (per-population Dice, seconds per epoch...), which the
store keeps as the trial's ``metrics``. It may raise :class:`TrialPruned` to stop early. What happens to it is classified by :func:`run_trial`, the same way on every executor:

- a finite number returned: COMPLETE;
- ``TrialPruned``: PRUNED, with the last reported value;
- NaN or infinity returned: FAIL, reason ``nan``;
- ``MemoryError`` or ``torch.cuda.OutOfMemoryError``: FAIL, reason ``out_of_memory``;
- any other exception: FAIL, reason ``exception``, with its traceback;
- the worker process dying (``process``, ``ray``): FAIL, reason ``worker_died``.

Executors: ``inline`` (in the driver, one trial at a time), ``process`` (local worker
processes) and ``ray`` (Ray tasks on a local or remote cluster).
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from medtune.errors import MedtuneError
from medtune.study.store import Execution, FailureReason, TrialState, utc_now

EXECUTORS = ("inline", "process", "ray")


class ExecutorError(MedtuneError):
    """An executor cannot be set up (missing package, objective it cannot ship, bad option)."""


class TrialPruned(Exception):
    """Raised by an objective to stop its trial early; the trial is recorded as PRUNED."""


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


def resolve_objective(objective: str | Objective) -> Objective:
    """The objective callable: ``objective`` itself, or what a ``"module:function"`` names."""
    if isinstance(objective, str):
        return _import_reference(objective)
    if not callable(objective):
        raise ExecutorError(
            f"the objective must be a callable or a 'module:function' string, not {objective!r}"
        )
    return objective


def _import_reference(reference: str) -> Objective:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ExecutorError(
            f"objective reference {reference!r} must look like 'package.module:function'"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExecutorError(
            f"cannot import module {module_name!r} for objective {reference!r}: {exc}; "
            "check that it is installed or on PYTHONPATH"
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


def run_trial(objective: Objective, task: TrialTask) -> TrialResult:
    """Run ``objective`` for ``task`` in this process and classify what happened.

    Never raises for a problem of the trial itself (``KeyboardInterrupt`` and ``SystemExit``
    still propagate, so the inline executor can be interrupted).
    """
    intermediate: list[tuple[float, float]] = []

    def report(step: float, value: float) -> None:
        intermediate.append((float(step), float(value)))

    started = utc_now()
    clock = time.perf_counter()
    state, value, reason, trace = TrialState.COMPLETE, None, None, None
    metrics: dict[str, float | list[float]] = {}
    try:
        returned = objective(dict(task.config), task.resource, task.seed, report)
        value, metrics = _as_metrics(returned)
    except TrialPruned:
        state = TrialState.PRUNED
        value = intermediate[-1][1] if intermediate else None
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
    return out_of_memory is not None and isinstance(exc, out_of_memory)


def _worker_died(task: TrialTask, message: str, host: str | None = None,
                 pid: int | None = None) -> TrialResult:
    return TrialResult(
        task.trial_id, TrialState.FAIL, None, FailureReason.WORKER_DIED, message,
        Execution(finished=utc_now(), host=host, worker_pid=pid),
    )


# ---------------------------------------------------------------------------- executors


class Executor(ABC):
    """Runs trials for the driver: :meth:`submit` up to :attr:`capacity` tasks, then
    :meth:`wait` for results. Use as a context manager, or call :meth:`close`."""

    name: str
    capacity: int

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
    """Runs each trial in the driver process when :meth:`wait` is called; capacity 1."""

    name = "inline"

    def __init__(self, objective: str | Objective):
        self.capacity = 1
        self._objective = resolve_objective(objective)
        self._queue: deque[TrialTask] = deque()

    def submit(self, task: TrialTask) -> None:
        self._queue.append(task)

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        if not self._queue:
            return []
        return [run_trial(self._objective, self._queue.popleft())]

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()


_READY = "ready"  # a worker's first message: it started and imported the objective


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process from the spawn context
    connection: multiprocessing.connection.Connection
    task: TrialTask | None = None
    ready: bool = False


class ProcessExecutor(Executor):
    """Runs trials in ``n_workers`` local worker processes (started with ``spawn``).

    Each worker runs one trial at a time and is reused. A worker that dies (segfault, killed
    by the OOM killer, ``os._exit``) fails only its own trial and is replaced. Workers exit
    when the driver dies, even by SIGKILL, so no orphaned trial keeps running.

    The objective must be importable in a fresh interpreter: a module-level function, a
    picklable callable object, or a ``"module:function"`` string; and a script that runs a
    study must do so under ``if __name__ == "__main__":``. A worker that cannot start at all
    raises :class:`ExecutorError` from :meth:`wait`, since every trial would fail the same way.
    """

    name = "process"

    def __init__(self, objective: str | Objective, n_workers: int = 2):
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        resolve_objective(objective)  # fail now, in the driver, on a bad reference
        if not isinstance(objective, str):
            try:
                pickle.dumps(objective)
            except Exception as exc:  # noqa: BLE001 - pickling raises many types
                raise ExecutorError(
                    f"the process executor cannot send objective {objective!r} to its workers "
                    f"({exc}): define it at module level, or pass 'module:function'"
                ) from exc
        self.capacity = n_workers
        self._objective = objective
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
            args=(worker_end, self._objective, os.getpid(), self._threads_per_worker()),
            name=f"medtune-worker-{len(self._workers)}",
            daemon=True,
        )
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
        try:
            worker.connection.send(task)
        except (BrokenPipeError, EOFError, OSError):
            pass  # the worker died; wait() reports the trial as worker_died

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            return []
        handles: dict[Any, _Worker] = {}
        for worker in busy:
            handles[worker.connection] = worker
            handles[worker.process.sentinel] = worker
        ready = multiprocessing.connection.wait(list(handles), timeout)
        exited = {id(handles[h]) for h in ready if h == handles[h].process.sentinel}
        results: list[TrialResult] = []
        for worker in {id(handles[h]): handles[h] for h in ready}.values():
            result = self._collect(worker, exited=id(worker) in exited)
            if result is not None:
                results.append(result)
        return results

    def _collect(self, worker: _Worker, exited: bool = False) -> TrialResult | None:
        task = worker.task
        assert task is not None
        try:
            while worker.connection.poll():
                message = worker.connection.recv()
                if message == _READY:
                    worker.ready = True
                    continue
                worker.task = None
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


def _process_worker_main(
    connection: multiprocessing.connection.Connection,
    objective: str | Objective,
    driver_pid: int,
    threads: int,
) -> None:
    """Worker loop: receive a task, run it, send the result; exit on None or driver death."""
    _exit_with_driver(driver_pid)
    try:
        import torch
    except ImportError:  # objectives without torch need no thread limit
        pass
    else:
        torch.set_num_threads(threads)
    # Ctrl-C in a terminal reaches the whole process group: the driver handles it (and stops
    # the workers); a worker would only print a second traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    function = resolve_objective(objective)
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


class RayExecutor(Executor):
    """Runs trials as Ray tasks, on the cluster at ``address``.

    ``address``: ``"auto"`` joins the cluster started on this machine (``ray start --head``;
    for a multi-machine cluster, the driver runs on a node of it), ``"host:port"`` or
    ``"ray://host:port"`` joins that cluster, ``"local"`` starts a private Ray instance for
    this study (stopped at the end), and ``None`` does what ``ray.init()`` does (the
    ``RAY_ADDRESS`` variable, else the last cluster started here, else a new instance). If Ray
    is already initialised in this process, that connection is used. ``init_options`` go to
    ``ray.init``. ``n_workers`` is how many trials are in flight at once; each takes
    ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs from the cluster.

    The objective travels by reference: as its ``"module:function"`` name, or, for a callable
    object (such as a configured objective), pickled with its class named by module; so its
    module must be importable on every node (installed there, or on the nodes' PYTHONPATH).
    Ray does not retry a task whose worker dies: that trial fails with reason ``worker_died``.
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
    ):
        try:
            import ray
        except ImportError as exc:
            raise ExecutorError(
                "executor 'ray' needs the ray package: pip install 'ray>=2.9' (or use "
                "executor 'process' on one machine)"
            ) from exc
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        resolve_objective(objective)  # fail now, in the driver, on a bad reference
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
        self.capacity = n_workers
        self._owns_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, **dict(init_options or {}))
            except ConnectionError as exc:
                raise ExecutorError(
                    f"cannot reach a Ray cluster at address {address!r} ({exc}): start one with "
                    "`ray start --head`, or pass address=None for a local Ray instance"
                ) from exc
            self._owns_ray = True
        self._remote = ray.remote(_run_trial_by_reference).options(
            num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=0
        )
        self._pending: dict[Any, TrialTask] = {}

    def submit(self, task: TrialTask) -> None:
        if len(self._pending) >= self.capacity:
            raise ExecutorError(
                f"{self.capacity} trials already in flight: wait for a result before submitting"
            )
        self._pending[self._remote.remote(self._objective, task)] = task

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        if not self._pending:
            return []
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if ready:  # collect whatever else is done too
            more, _ = self._ray.wait(list(self._pending), num_returns=len(self._pending),
                                     timeout=0)
            ready = list({ref: None for ref in [*ready, *more]})
        results = []
        for ref in ready:
            task = self._pending.pop(ref)
            try:
                results.append(self._ray.get(ref))
            except self._ray.exceptions.RayError as exc:
                results.append(_worker_died(
                    task, f"the Ray worker running trial {task.trial_id} died before returning a "
                          f"result: {type(exc).__name__}: {exc}"))
        return results

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self._pending:
                try:
                    self._ray.cancel(ref, force=True)
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


def _run_trial_by_reference(objective: str | Objective, task: TrialTask) -> TrialResult:
    """Ray task body: import the objective on the worker node and run the trial."""
    return run_trial(resolve_objective(objective), task)


def make_executor(
    name: str,
    objective: str | Objective,
    n_workers: int = 1,
    **options: Any,
) -> Executor:
    """Build the executor called ``name`` (``inline``, ``process`` or ``ray``) for ``objective``.

    ``options`` go to the executor (for ``ray``: ``address``, ``cpus_per_trial``,
    ``gpus_per_trial``, ``init_options``).
    """
    if name == "inline":
        if n_workers != 1:
            raise ExecutorError(
                f"the inline executor runs one trial at a time (n_workers={n_workers}): use "
                "executor 'process' or 'ray' for parallel trials"
            )
        if options:
            raise ExecutorError(f"the inline executor takes no options, got {sorted(options)}")
        return InlineExecutor(objective)
    if name == "process":
        if options:
            raise ExecutorError(f"the process executor takes no options, got {sorted(options)}")
        return ProcessExecutor(objective, n_workers)
    if name == "ray":
        return RayExecutor(objective, n_workers, **options)
    raise ExecutorError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTORS)}")
