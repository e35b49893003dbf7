"""The study loop: ask the searcher, record and run trials, store results, tell the searcher; and
resume a study whose driver died.

The driver (the process calling :func:`run_study` or :func:`resume_study`) is the only writer
of the study file. Every result is committed before the searcher hears of it, so a killed
driver loses nothing but the trials it had in flight; :func:`resume_study` marks those
REQUEUED and runs their configurations again as new trials.

How a run stops: after ``n_trials`` finished trials, when ``timeout`` seconds have passed (no
new trial starts; those in flight finish), or when the searcher has nothing more to propose. A
trial that runs past ``trial_timeout`` is stopped by its executor and recorded FAIL (reason
``timeout``); the run goes on. Ctrl-C (``KeyboardInterrupt``) stops the run at once: the
trials in flight are stopped and recorded REQUEUED with reason ``interrupted``, and
:class:`StudyInterrupted` is raised; :func:`resume_study` runs their configurations again.

Resuming relies on searchers being deterministic given their seed and the order of their
``ask``/``tell`` calls: the searcher is rebuilt from the study's seed, the stored proposals and
results are replayed to it in their original interleaving (each trial records how many results
had been recorded when it was proposed), and the study continues. Every replayed proposal is
checked against the stored one.

Searchers minimise. For a ``maximize`` study the runner tells them ``-value``; the store keeps
the values as the objective returned them, and what the searcher was told.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medtune.errors import MedtuneError
from medtune.study.executors import Executor, Objective, TrialResult, TrialTask, make_executor
from medtune.study.store import StudyStore, Trial, TrialState, driver_lock

FAILURE_POLICIES = ("exclude", "penalize")

#: How long the driver waits for a result before refreshing the progress bar (seconds).
_POLL_INTERVAL = 1.0

logger = logging.getLogger("medtune.study")


class StudyRunError(MedtuneError):
    """A study cannot be run or resumed as asked."""


class StudyInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C. Its trials in flight were stopped and recorded REQUEUED with
    reason ``interrupted`` (``trial_ids``), so :func:`resume_study` runs them again; the
    message says so in one line. A ``KeyboardInterrupt``, so code that stops on Ctrl-C still
    does."""

    def __init__(self, path: Path, trial_ids: list[int]):
        count = len(trial_ids)
        super().__init__(
            f"Interrupted: {count} trial{'' if count == 1 else 's'} in flight recorded as "
            f"interrupted; continue with `medtune resume {path}`"
        )
        self.path = path
        self.trial_ids = trial_ids


class Suggestion(Protocol):
    """A configuration proposed by a searcher (see ``medtune.search``)."""

    id: int
    config: Mapping[str, Any]
    resource: float | None
    tag: Mapping[str, Any]


class Searcher(Protocol):
    """The ask/tell interface the runner drives. A searcher that knows in advance how many
    suggestions it will make may say so in a ``planned_trials`` property (None when unknown);
    the progress bar then shows that total and an ETA."""

    @property
    def finished(self) -> bool: ...

    def ask(self) -> Suggestion | None: ...

    def tell(self, suggestion: Suggestion, value: float | None, failed: bool = False) -> None: ...


@dataclass(frozen=True)
class StudySummary:
    """How a run of a study ended (counts are over the whole study, earlier runs included)."""

    path: Path
    n_complete: int
    n_pruned: int
    n_failed: int
    n_requeued: int
    best: Trial | None
    elapsed: float  # seconds this run took
    stop_reason: str  # "n_trials", "timeout" or "searcher" (nothing more to propose)


def trial_seed(study_seed: int, suggestion_id: int) -> int:
    """The seed a trial trains with: fixed by the study's seed and the searcher's proposal id,
    so a requeued trial trains exactly as its orphaned original would have."""
    return int(np.random.SeedSequence([study_seed, suggestion_id]).generate_state(1)[0])


def run_study(
    store: StudyStore,
    searcher: Searcher,
    objective: str | Objective,
    executor: str | Executor = "inline",
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    trial_timeout: float | None = None,
    n_workers: int = 1,
    on_failure: str = "exclude",
    penalty: float | None = None,
    progress: bool = True,
    executor_options: Mapping[str, Any] | None = None,
) -> StudySummary:
    """Run a new study until ``n_trials`` trials have finished, ``timeout`` seconds have
    passed, or the searcher has nothing more to propose.

    Args:
        store: a study without trials (continue one with :func:`resume_study`).
        searcher: built with ``store.seed``, so the study can be resumed.
        objective: ``objective(config, resource, seed, report) -> float`` or its
            ``"module:function"`` name (see :mod:`medtune.study.executors`).
        executor: ``"inline"``, ``"process"`` or ``"ray"``, built here with ``n_workers``,
            ``trial_timeout`` and ``executor_options``; or an executor already built for
            ``objective`` (:func:`~medtune.study.executors.make_executor`: a Ray executor
            connects when built), which then has those settings; the run closes it.
        n_trials: finished trials (COMPLETE, PRUNED or FAIL) the study should end with.
        timeout: seconds after which no new trial starts; trials in flight still finish.
        trial_timeout: seconds one trial may run before it is stopped and recorded FAIL
            (reason ``timeout``); None for the limit the objective declares (its
            ``trial_timeout`` attribute, if any), 0 for no limit.
        n_workers: trials in flight at once (``process``/``ray``).
        on_failure: what the searcher is told about a failed trial: ``"exclude"`` tells it the
            trial failed (searchers leave the region out), ``"penalize"`` tells it a bad value,
            ``penalty`` or, without one, the worst value seen so far. Seed 004 sec. 2.6.3:
            excluding lets the search retry similar configurations; penalising with an
            arbitrary value misleads a smooth surrogate.
        progress: show a progress bar (trials done of ``n_trials`` or of the searcher's
            ``planned_trials``, best value, ETA).
        executor_options: options for the executor (for ``ray``: ``address`` and so on).

    Raises :class:`StudyInterrupted` on Ctrl-C (see the module docstring).
    """
    with driver_lock(store.path):
        existing = store.count(TrialState)
        if existing:
            raise StudyRunError(
                f"{store.path} already has {existing} trials: continue it with resume_study "
                "(`medtune resume`), or start a new study file"
            )
        driver = _Driver(store, searcher, objective, executor, n_trials, timeout, trial_timeout,
                         n_workers, on_failure, penalty, progress, executor_options)
        return driver.run(deque())


def resume_study(
    path: str | os.PathLike[str],
    searcher_factory: Callable[[int], Searcher],
    objective: str | Objective,
    executor: str | Executor = "inline",
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    trial_timeout: float | None = None,
    n_workers: int = 1,
    on_failure: str = "exclude",
    penalty: float | None = None,
    progress: bool = True,
    executor_options: Mapping[str, Any] | None = None,
) -> StudySummary:
    """Continue the study at ``path`` after its driver stopped, was interrupted or was killed.

    RUNNING trials left by the dead driver are marked REQUEUED and their configurations run
    again as new trials, as are those an interrupted run recorded REQUEUED;
    ``searcher_factory(seed)`` rebuilds the searcher from the study's seed, the stored results
    are replayed to it, and the study goes on. No recorded result is lost or recomputed and no
    trial id is reused. ``n_trials`` counts the study's finished trials, earlier runs
    included; the other arguments are as in :func:`run_study`. A study with a damaged trial
    row is refused (:class:`~medtune.study.store.DamagedTrialError`), before any trial is
    requeued.
    """
    with StudyStore(path) as store, driver_lock(store.path):
        store.require_intact()  # a history with a trial left out cannot be replayed
        requeued = store.requeue_orphans()
        if requeued:
            logger.info("%s: requeued %d trials left running by the previous driver: %s",
                        store.path, len(requeued), ", ".join(str(t.id) for t in requeued))
        searcher = searcher_factory(store.seed)
        pending = replay(store, searcher)
        driver = _Driver(store, searcher, objective, executor, n_trials, timeout, trial_timeout,
                         n_workers, on_failure, penalty, progress, executor_options)
        return driver.run(pending)


def replay(store: StudyStore, searcher: Searcher) -> deque[tuple[Suggestion, int]]:
    """Replay a study's proposals and results to a freshly built ``searcher``.

    Returns the proposals that have no result yet (those of requeued trials), each with the id
    of the latest trial that ran it, in the order they were first proposed.
    """
    trials = store.trials()
    proposals = [t for t in trials if t.requeued_from is None]
    results = sorted((t for t in trials if t.state.finished), key=lambda t: t.completion_order)
    asked: dict[int, Suggestion] = {}
    told: set[int] = set()
    position = 0

    def tell_next() -> None:
        nonlocal position
        trial = results[position]
        suggestion = asked.get(trial.suggestion_id)
        if suggestion is None:
            raise StudyRunError(
                f"{store.path}: trial {trial.id} has a result for proposal "
                f"{trial.suggestion_id}, which no earlier trial proposed; the study file is "
                "inconsistent"
            )
        failed = bool(trial.told_failed) if trial.told_failed is not None else (
            trial.state is not TrialState.COMPLETE)
        searcher.tell(suggestion, None if failed else trial.told_value, failed=failed)
        told.add(trial.suggestion_id)
        position += 1

    for trial in proposals:
        while position < len(results) and results[position].completion_order <= trial.asked_after:
            tell_next()
        suggestion = searcher.ask()
        if (suggestion is None or suggestion.id != trial.suggestion_id
                or _as_json(suggestion.config) != trial.config):
            got = "nothing" if suggestion is None else (
                f"proposal {suggestion.id} {_as_json(suggestion.config)}")
            raise StudyRunError(
                f"cannot resume {store.path}: replayed to the rebuilt searcher, trial {trial.id} "
                f"should be proposal {trial.suggestion_id} {trial.config} but the searcher "
                f"proposed {got}. Rebuild the searcher exactly as the study was started (same "
                "searcher, space and options; the seed comes from the study)"
            )
        asked[suggestion.id] = suggestion
    while position < len(results):
        tell_next()

    latest: dict[int, int] = {}
    for trial in trials:
        latest[trial.suggestion_id] = trial.id
    first = {t.suggestion_id: t.id for t in reversed(proposals)}
    open_ids = sorted((s for s in asked if s not in told), key=first.__getitem__)
    return deque((asked[s], latest[s]) for s in open_ids)


class _Driver:
    """One run of the study loop (shared by :func:`run_study` and :func:`resume_study`)."""

    def __init__(
        self,
        store: StudyStore,
        searcher: Searcher,
        objective: str | Objective,
        executor: str | Executor,
        n_trials: int | None,
        timeout: float | None,
        trial_timeout: float | None,
        n_workers: int,
        on_failure: str,
        penalty: float | None,
        progress: bool,
        executor_options: Mapping[str, Any] | None,
    ):
        if on_failure not in FAILURE_POLICIES:
            raise ValueError(
                f"on_failure must be one of {', '.join(FAILURE_POLICIES)}, not {on_failure!r}"
            )
        if n_trials is not None and n_trials < 0:
            raise ValueError(f"n_trials must be at least 0, got {n_trials}")
        if penalty is not None and not math.isfinite(penalty):
            raise ValueError(f"penalty must be a finite number, got {penalty!r}")
        if isinstance(executor, Executor) and (
                trial_timeout is not None or n_workers != 1 or executor_options):
            raise ValueError("trial_timeout, n_workers and executor_options are settings of the "
                             "executor: pass them to make_executor when passing an executor "
                             "already built")
        self.store = store
        self.searcher = searcher
        self.objective = objective
        self.executor = executor
        self.executor_options = dict(executor_options or {})
        self.n_trials = n_trials
        self.timeout = timeout
        self.trial_timeout = trial_timeout
        self.n_workers = n_workers
        self.on_failure = on_failure
        self.sign = 1.0 if store.direction == "minimize" else -1.0
        self.penalty = None if penalty is None else self.sign * penalty
        self.progress = progress
        complete = store.trials([TrialState.COMPLETE])
        told = [t.told_value for t in complete if t.told_value is not None]
        self.worst_told = max(told) if told else None
        best = store.best_trial()
        self.best = best.value if best else None
        self.finished = store.count()
        self.failed = store.count([TrialState.FAIL])

    def run(self, pending: deque[tuple[Suggestion, int]]) -> StudySummary:
        started = time.monotonic()
        deadline = None if self.timeout is None else started + self.timeout
        in_flight: dict[int, Suggestion] = {}
        executor = self.executor
        try:
            if not isinstance(executor, Executor):
                executor = make_executor(executor, self.objective, self.n_workers,
                                         trial_timeout=self.trial_timeout,
                                         **self.executor_options)
            with self._progress_bar() as bar:
                task = bar.add_task(
                    f"study {self.store.name}", total=self._total(), completed=self.finished,
                    best=self._best_text(), failed=self.failed,
                )
                while True:
                    self._fill(executor, in_flight, pending, deadline)
                    if not in_flight:
                        break
                    for result in executor.wait(_POLL_INTERVAL):
                        self._record(result, in_flight.pop(result.trial_id))
                        bar.update(task, completed=self.finished, best=self._best_text(),
                                   failed=self.failed)
        except KeyboardInterrupt:
            raise self._interrupted(executor) from None
        except BaseException:
            if isinstance(executor, Executor):
                executor.close(cancel=True)
            raise
        executor.close()
        if self.n_trials is not None and self.finished >= self.n_trials:
            reason = "n_trials"
        elif deadline is not None and time.monotonic() >= deadline:
            reason = "timeout"
        else:
            reason = "searcher"
        return StudySummary(
            path=self.store.path,
            n_complete=self.store.count([TrialState.COMPLETE]),
            n_pruned=self.store.count([TrialState.PRUNED]),
            n_failed=self.store.count([TrialState.FAIL]),
            n_requeued=self.store.count([TrialState.REQUEUED]),
            best=self.store.best_trial(),
            elapsed=time.monotonic() - started,
            stop_reason=reason,
        )

    def _total(self) -> int | None:
        """How many finished trials the run ends with, when known: ``n_trials``, or what the
        searcher plans to propose, whichever is smaller."""
        planned = getattr(self.searcher, "planned_trials", None)
        known = [n for n in (self.n_trials, planned) if n is not None]
        return min(known) if known else None

    def _interrupted(self, executor: Executor | str) -> StudyInterrupted:
        """Stop the trials in flight and record them interrupted (a second Ctrl-C meanwhile
        is ignored, so the record is written whole)."""
        with _sigint_ignored():
            if isinstance(executor, Executor):
                executor.close(cancel=True)
            trials = self.store.interrupt_running(
                "interrupted (Ctrl-C) while it ran; `medtune resume` runs its configuration "
                "again as a new trial")
        if trials:
            logger.info("%s: interrupted; trials in flight recorded as interrupted: %s",
                        self.store.path, ", ".join(str(t.id) for t in trials))
        return StudyInterrupted(self.store.path, [t.id for t in trials])

    def _fill(
        self,
        executor: Executor,
        in_flight: dict[int, Suggestion],
        pending: deque[tuple[Suggestion, int]],
        deadline: float | None,
    ) -> None:
        """Start trials until the executor is full or no more may start now."""
        while len(in_flight) < executor.capacity:
            if self.n_trials is not None and self.finished + len(in_flight) >= self.n_trials:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            if pending:
                suggestion, requeued_from = pending.popleft()
            elif self.searcher.finished:
                return
            else:
                suggestion = self.searcher.ask()
                if suggestion is None:  # waits for results of trials in flight
                    return
                requeued_from = None
            seed = trial_seed(self.store.seed, suggestion.id)
            config = dict(suggestion.config)
            trial_id = self.store.create_trial(
                suggestion_id=suggestion.id, config=config, seed=seed,
                resource=suggestion.resource, tag=dict(suggestion.tag or {}),
                requeued_from=requeued_from,
            )
            in_flight[trial_id] = suggestion
            executor.submit(TrialTask(trial_id, config, suggestion.resource, seed))

    def _record(self, result: TrialResult, suggestion: Suggestion) -> None:
        """Commit one result to the store, then tell the searcher."""
        told_value, told_failed = self._told(result)
        run = result.execution
        told = {"told_value": told_value, "told_failed": told_failed}
        if result.state is TrialState.COMPLETE:
            assert result.value is not None
            self.store.complete_trial(result.trial_id, result.value, run, **told)
            self.worst_told = told_value if self.worst_told is None else max(
                self.worst_told, told_value)
            if self.best is None or self.sign * result.value < self.sign * self.best:
                self.best = result.value
        elif result.state is TrialState.PRUNED:
            self.store.prune_trial(result.trial_id, result.value, run, **told)
        else:
            assert result.failure_reason is not None
            self.store.fail_trial(result.trial_id, result.failure_reason, result.traceback,
                                  run, **told)
            self.failed += 1
            first_line = (result.traceback or "").strip().splitlines()[-1:] or [""]
            logger.warning("trial %d failed (%s): %s", result.trial_id,
                           result.failure_reason.value, first_line[0])
        self.finished += 1
        self.searcher.tell(suggestion, told_value, failed=told_failed)

    def _told(self, result: TrialResult) -> tuple[float | None, bool]:
        """What the searcher hears about ``result``: ``(value to minimise, failed)``."""
        if result.state is not TrialState.FAIL:
            if result.value is None:  # pruned before reporting anything
                return None, True
            return self.sign * result.value, False
        if self.on_failure == "penalize":
            penalty = self.penalty if self.penalty is not None else self.worst_told
            if penalty is not None:
                return penalty, False
        return None, True

    def _best_text(self) -> str:
        return "-" if self.best is None else f"{self.best:.6g}"

    def _progress_bar(self) -> Progress:
        return Progress(
            TextColumn("{task.description}", style="bold", markup=False),  # names stay verbatim
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials  best {task.fields[best]}  failed {task.fields[failed]}",
                       markup=False),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            disable=not self.progress,
        )


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C for the block (in the main thread, where Python handles signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _as_json(config: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(dict(config), sort_keys=True))
