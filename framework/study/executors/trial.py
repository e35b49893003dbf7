"""One trial: what an objective is, how a driver names it and a worker finds it, and how
:func:`run_trial` runs it in this process and classifies what happened.

An objective is ``objective(config, resource, seed, report) -> float``: it trains the model
``config`` describes with budget ``resource`` (``None`` when the searcher does not use one)
and random seed ``seed``, may call ``report(step, value)`` with intermediate values (one per
resource level or epoch; ``report(step, value, scores=per_case)`` adds the per-case or per-fold
scores behind ``value``, for the ``wilcoxon`` pruner), and returns the metric - or a mapping with the metric under
``"value"`` and further named numbers (per-population Dice, seconds per epoch...), which the
store keeps as the trial's ``metrics``. It may raise :class:`TrialPruned` to stop early, and
may declare how long one of its trials may run with a ``trial_timeout`` attribute (seconds;
see :func:`declared_trial_timeout`). With a study's pruner, ``report`` asks the driver's
:class:`Judge` and raises :class:`TrialPruned` inside the objective when the pruner stops the
trial (and again at each later report, should the objective catch it and go on). What happens to it is classified by :func:`run_trial`,
the same way on every executor:

- a finite number returned: COMPLETE;
- ``TrialPruned``: PRUNED, with the last reported value, the step it was stopped at (metric
  ``pruned_at_step``) and the rule that stopped it (the exception's message, if any, as its
  ``traceback``); also when the objective caught a pruner's stop and returned;
- NaN or infinity returned: FAIL, reason ``nan``;
- ``MemoryError``, ``torch.OutOfMemoryError`` or an allocator's out-of-memory
  ``RuntimeError`` (torch's ``DefaultCPUAllocator: can't allocate memory``): FAIL, reason
  ``out_of_memory``;
- any other exception, ``SystemExit`` included (``sys.exit`` in an objective ends its trial,
  not the study): FAIL, reason ``exception``, with its traceback;
- running past the time limit (``trial_timeout``): FAIL, reason ``timeout``;
- the worker process dying (``process``, ``ray``): FAIL, reason ``worker_died``
  (:func:`worker_died`; :func:`timed_out` for a trial stopped from outside).

``KeyboardInterrupt`` is not a trial's outcome: it stops the run (see
:mod:`medtune.study.runner`).
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from medtune.errors import MedtuneError
from medtune.study.artifacts import TrialArtifacts, collecting
from medtune.study.records import PRUNED_AT_STEP
from medtune.study.store import Execution, FailureReason, TrialState, utc_now

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
    """Raised by an objective to stop its trial early, or by its ``report`` when the study's
    pruner stops it; the trial is recorded as PRUNED, the message as the rule that stopped it."""


#: The driver's decision on one report, ``judge(trial_id, step, value, scores)``: None to go
#: on, else the rule that stops the trial (see :mod:`medtune.pruners`).
Judge = Callable[[int, float, float, "tuple[float, ...] | None"], "str | None"]


class TrialTimeout(BaseException):
    """Raised inside an objective run by the inline executor when its trial passes its time
    limit. A ``BaseException``, like ``KeyboardInterrupt``, so that an objective's
    ``except Exception`` does not swallow it; the trial is recorded FAIL, reason ``timeout``."""


class Objective(Protocol):
    """``objective(config, resource, seed, report) -> float | {"value": float, name: float}``;
    ``report(step, value)`` or ``report(step, value, scores=per_case)``."""

    def __call__(
        self,
        config: dict[str, Any],
        resource: float | None,
        seed: int,
        report: Callable[[float, float], None],
    ) -> float | Mapping[str, float]: ...


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs to run one trial. ``artifact_dir``: the study's artifact root,
    where the trial keeps files (see :mod:`medtune.study.artifacts`); None: it keeps none."""

    trial_id: int
    config: Mapping[str, Any]
    resource: float | None
    seed: int
    artifact_dir: str | None = None
    #: the study has a pruner: each report waits for the driver's decision
    pruning: bool = False


@dataclass(frozen=True)
class TrialResult:
    """What a worker sends back: the outcome of one trial and how it ran."""

    trial_id: int
    state: TrialState  # COMPLETE, PRUNED or FAIL
    value: float | None = None
    failure_reason: FailureReason | None = None
    traceback: str | None = None
    execution: Execution = field(default_factory=Execution)
    #: the trial completed and its artifact folder was kept as ``trial_<id>/``
    kept_artifacts: bool = False


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
    return check_time_limit(declared, f"the trial_timeout that objective {objective!r} declares")


def check_time_limit(seconds: Any, what: str = "trial_timeout") -> float | None:
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


def run_trial(objective: Objective, task: TrialTask,
              time_limit: float | None = None, judge: Judge | None = None) -> TrialResult:
    """Run ``objective`` for ``task`` in this process and classify what happened.

    ``time_limit`` (seconds; only in the main thread, where Unix delivers ``SIGALRM``): past
    it, :class:`TrialTimeout` is raised inside the objective, again every second while it
    keeps running, and the trial fails with reason ``timeout`` (also when the objective caught
    the stop and returned). This stops Python code and sleeps, not one long call into native
    code, which is interrupted only when it returns.

    With ``task.artifact_dir``, :func:`medtune.study.artifacts.trial_folder` gives the
    objective its trial's folder while it runs; the folder is kept when the trial completes
    (a rename that fails fails the trial) and removed otherwise.

    ``judge``: asked at each ``report`` (see :data:`Judge`); a rule it returns stops the
    trial, PRUNED.

    Never raises for a problem of the trial itself (``KeyboardInterrupt`` still propagates, so
    that Ctrl-C stops the study).
    """
    if time_limit is not None and threading.current_thread() is not threading.main_thread():
        raise ValueError("run_trial enforces a time_limit with SIGALRM, which only the main "
                         "thread receives: call it from the main thread")
    intermediate: list[tuple[float, float]] = []
    stopped: list[str] = []  # the rule that stopped the trial, once one did

    def report(step: float, value: float, *, scores: Sequence[float] | None = None) -> None:
        if stopped:
            raise TrialPruned(stopped[0])
        step, value = float(step), float(value)
        intermediate.append((step, value))
        if judge is not None:
            rule = judge(task.trial_id, step, value,
                         None if scores is None else tuple(float(s) for s in scores))
            if rule is not None:
                stopped.append(rule)
                raise TrialPruned(rule)

    started = utc_now()
    clock = time.perf_counter()
    state, value, reason, trace = TrialState.COMPLETE, None, None, None
    metrics: dict[str, float | list[float]] = {}
    alarm = _Alarm(time_limit, task.trial_id)
    folder = None if task.artifact_dir is None else TrialArtifacts(task.artifact_dir,
                                                                    task.trial_id)
    try:
        with collecting(folder), alarm:
            returned = objective(dict(task.config), task.resource, task.seed, report)
        value, metrics = _as_metrics(returned)
    except TrialPruned as exc:
        state, trace = TrialState.PRUNED, str(exc) or None  # the rule, when one stopped it
    except TrialTimeout:
        state, reason, trace = TrialState.FAIL, FailureReason.TIMEOUT, traceback.format_exc()
    except SystemExit as exc:
        state, reason = TrialState.FAIL, FailureReason.EXCEPTION
        trace = (f"{traceback.format_exc()}the objective called sys.exit({exc.code!r}) in trial "
                 f"{task.trial_id}: a trial cannot end the study, so it counts as failed")
    except Exception as exc:  # noqa: BLE001 - every failure of a trial is recorded
        state, trace = TrialState.FAIL, traceback.format_exc()
        reason = FailureReason.OUT_OF_MEMORY if is_out_of_memory(exc) else FailureReason.EXCEPTION
    else:
        if not math.isfinite(value):
            state, reason = TrialState.FAIL, FailureReason.NAN
            trace = (
                f"the objective returned {value!r} for trial {task.trial_id}: a metric that is "
                "not finite (a diverged training, a NaN loss) counts as a failed trial"
            )
            value = None
        if stopped:  # it caught the pruner's stop and returned: stopped all the same
            state, reason, trace = TrialState.PRUNED, None, stopped[0]
    if state is TrialState.PRUNED:
        value = intermediate[-1][1] if intermediate else None
        metrics = {PRUNED_AT_STEP: intermediate[-1][0]} if intermediate else {}
    if alarm.expired and reason is not FailureReason.TIMEOUT:
        # it caught every stop and ended past its limit anyway
        state, value, reason = TrialState.FAIL, None, FailureReason.TIMEOUT
        trace = f"{trace or ''}{alarm.message} (the objective caught the stop and went on)"
    duration = time.perf_counter() - clock
    kept = False
    if folder is not None:
        try:
            kept = folder.finish(keep=state is TrialState.COMPLETE)
        except OSError as exc:
            state, value, reason = TrialState.FAIL, None, FailureReason.EXCEPTION
            trace = (f"trial {task.trial_id} completed but its artifact folder could not be kept "
                     f"as {folder.final} ({exc.strerror or exc}): check that folder's file "
                     "system (space, permissions)")
    execution = Execution(
        started=started,
        finished=utc_now(),
        duration=duration,
        host=socket.gethostname(),
        worker_pid=os.getpid(),
        intermediate=tuple(intermediate),
        metrics=metrics,
    )
    return TrialResult(task.trial_id, state, value, reason, trace, execution, kept)


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


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out (the rule of the ``out_of_memory`` failure
    reason above; a task that shrinks its batch on out-of-memory asks it too)."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never import torch just to classify an error
    out_of_memory = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if out_of_memory is not None and isinstance(exc, out_of_memory):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in _OUT_OF_MEMORY_MESSAGES)


def worker_died(task: TrialTask, message: str, host: str | None = None,
                pid: int | None = None) -> TrialResult:
    """The result of a trial whose worker (process or Ray task) died before returning one;
    ``message`` says how."""
    return TrialResult(
        task.trial_id, TrialState.FAIL, None, FailureReason.WORKER_DIED, message,
        Execution(finished=utc_now(), host=host, worker_pid=pid),
    )


def timed_out(task: TrialTask, limit: float, how: str, started: datetime | None,
              elapsed: float, host: str | None, pid: int | None) -> TrialResult:
    """The result of a trial stopped from outside (process, Ray) at its time limit."""
    return TrialResult(
        task.trial_id, TrialState.FAIL, None, FailureReason.TIMEOUT,
        f"trial {task.trial_id} ran longer than its time limit (trial_timeout = {limit:g} s) "
        f"and was stopped: {how}",
        Execution(started=started, finished=utc_now(), duration=elapsed, host=host,
                  worker_pid=pid),
    )
