"""The ``ray`` executor: trials run as Ray tasks on a local or remote cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
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
    objective_reference,
    resolve_objective,
    run_trial,
    timed_out,
    worker_died,
)
from medtune.study.store import utc_now

#: How long the Ray executor waits for a cluster's address to accept a connection (seconds).
RAY_CONNECT_TIMEOUT = 10.0

#: How long a Ray worker waits for the driver's decision on one report before its trial fails
#: (seconds): the driver answers at once unless it is stuck; a driver that died is noticed
#: sooner, as its :class:`_PruningChannel` dies with it.
REPORT_TIMEOUT = 600.0


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

    With pruning (:meth:`enable_pruning`), a worker sends each report to a
    :class:`_PruningChannel` actor that the driver owns and waits for the decision; the
    driver's :meth:`wait` wakes on the reports as it does on results, judges them and answers.
    The actor dies with the driver, which ends a worker's wait (and Ray ends the driver's
    tasks); a worker left unanswered for :data:`REPORT_TIMEOUT` fails its trial.

    The objective travels by reference: as its ``"module:function"`` name, or, for a callable
    object (such as a configured objective), pickled with its class named by module; so its
    module must be importable on every node (installed there, on the nodes' PYTHONPATH, or in
    a folder of ``import_path`` that exists there too).
    """

    name = "ray"
    supports_pruning = True

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
        self.capacity = check_workers(n_workers, type(self))
        self.trial_timeout = check_time_limit(trial_timeout)
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
        self._channel: Any = None  # the _PruningChannel actor, with pruning
        self._inbox: Any = None  # the driver's outstanding call for the channel's next reports

    def enable_pruning(self, judge: Judge) -> None:
        super().enable_pruning(judge)
        if self._channel is None:
            self._channel = self._open_channel()

    def _open_channel(self) -> Any:
        """A new :class:`_PruningChannel`: owned by the driver (not detached), so it dies with
        the driver; ``num_cpus=0``, so it never takes a trial's CPU."""
        return self._ray.remote(_PruningChannel).options(num_cpus=0).remote()

    def submit(self, task: TrialTask) -> None:
        if len(self._pending) >= self.capacity:
            raise ExecutorError(
                f"{self.capacity} trials already in flight: wait for a result before submitting"
            )
        if self._channel is not None:
            task = dataclasses.replace(task, pruning=True)
        stream = self._remote.remote(self._objective, task, self._import_path, self._channel)
        self._pending[stream] = _RayTrial(task)

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        if not self._pending:
            return []
        waiting = list(self._pending)
        if self._channel is not None:
            if self._inbox is None:
                self._inbox = self._channel.reports.remote()
            waiting.append(self._inbox)
        ready, _ = self._ray.wait(waiting, num_returns=1, timeout=self._until_deadline(timeout))
        if ready:  # collect whatever else is done too
            more, _ = self._ray.wait(waiting, num_returns=len(waiting), timeout=0)
            ready = list({ref: None for ref in [*ready, *more]})
        inbox = self._inbox
        if inbox is not None and any(ref is inbox for ref in ready):
            self._inbox = None
            try:
                self._answer(self._ray.get(inbox))
            except self._ray.exceptions.RayActorError:
                # the channel died (its node did): the trials waiting on it fail by themselves,
                # the next ones report to a new channel
                self._channel = self._open_channel()
        streams = [ref for ref in ready if ref is not inbox]
        results = [r for r in map(self._advance, streams) if r is not None]
        return results + self._stop_overdue()

    def _answer(self, reports: list[tuple[int, float, float, tuple[float, ...] | None]]) -> None:
        """Judge the reports the channel collected and send the decisions back; a report of a
        trial no longer in flight (cancelled meanwhile) is not judged, only released."""
        assert self.judge is not None
        running = {trial.task.trial_id for trial in self._pending.values()}
        decisions = {trial_id: self.judge(trial_id, step, value, scores)
                     if trial_id in running else None
                     for trial_id, step, value, scores in reports}
        if decisions:
            self._channel.decide.remote(decisions)

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
            return worker_died(
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
        return until_first_limit(timeout, starts, self.trial_timeout)

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
            results.append(timed_out(
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
                while self._pending:  # answering their reports meanwhile
                    self.wait()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._pending.clear()
        if self._channel is not None:  # a worker still waiting on it stops waiting
            try:
                self._ray.kill(self._channel)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            self._channel = self._inbox = None
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


def _ray_trial(objective: str | Objective, task: TrialTask, import_path: Sequence[str] = (),
               channel: Any = None) -> Iterator[_Started | TrialResult]:
    """Ray task body: say where it runs, then import the objective and run the trial (asking
    the driver, through ``channel``, about each report when the study has a pruner)."""
    yield _Started(socket.gethostname(), os.getpid(), utc_now())
    judge = _asking_driver(channel) if task.pruning else None
    yield run_trial(resolve_objective(objective, import_path), task, judge=judge)


def _asking_driver(channel: Any) -> Judge:
    """A Ray worker's judge: send the report through the driver's channel, return its
    decision."""
    import ray

    def judge(trial_id: int, step: float, value: float,
              scores: tuple[float, ...] | None) -> str | None:
        try:
            return ray.get(channel.ask.remote(trial_id, step, value, scores),
                           timeout=REPORT_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise ExecutorError(
                f"the driver did not answer the report of trial {trial_id} at step {step:g} "
                f"within {REPORT_TIMEOUT:g} s (is the driver stuck?)") from None
        except ray.exceptions.RayActorError:
            raise ExecutorError(
                f"the driver's pruning channel is gone (the driver stopped, or the node the "
                f"channel ran on) while trial {trial_id} waited for the decision on its report "
                f"at step {step:g}") from None

    return judge


class _PruningChannel:
    """The Ray actor (async) between the workers and the driver: a worker's :meth:`ask` queues
    its report and waits for the decision; the driver takes the queued reports with
    :meth:`reports` (which waits for one) and answers them all with :meth:`decide`. It only
    carries reports: the driver judges them. A worker waits for one report at a time, so
    decisions are keyed by trial."""

    def __init__(self) -> None:
        self._reports: list[tuple[int, float, float, tuple[float, ...] | None]] = []
        self._arrived: asyncio.Event | None = None  # made in the actor's event loop
        self._decisions: dict[int, asyncio.Future] = {}

    def _event(self) -> asyncio.Event:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        return self._arrived

    async def ask(self, trial_id: int, step: float, value: float,
                  scores: tuple[float, ...] | None) -> str | None:
        """A worker's report; returns the driver's decision (None: go on; else the rule)."""
        decision = asyncio.get_running_loop().create_future()
        self._decisions[trial_id] = decision
        self._reports.append((trial_id, step, value, scores))
        self._event().set()
        try:
            return await decision
        finally:
            if self._decisions.get(trial_id) is decision:
                del self._decisions[trial_id]

    async def reports(self) -> list[tuple[int, float, float, tuple[float, ...] | None]]:
        """The reports queued since the last call, once there is one."""
        arrived = self._event()
        await arrived.wait()
        arrived.clear()
        reports, self._reports = self._reports, []
        return reports

    async def decide(self, decisions: dict[int, str | None]) -> None:
        """The driver's decisions, by trial, on the reports it took."""
        for trial_id, rule in decisions.items():
            decision = self._decisions.get(trial_id)
            if decision is not None and not decision.done():
                decision.set_result(rule)
