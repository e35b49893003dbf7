"""The study loop: ask the searcher, record and run trials, store results, tell the searcher; and
resume a study whose driver died.

The driver (the process calling :func:`run_study` or :func:`resume_study`) is the only writer
of the study file. Every result is committed before the searcher hears of it, so a killed
driver loses nothing but the trials it had in flight; :func:`resume_study` marks those
REQUEUED and runs their configurations again as new trials.

How a run goes is one :class:`RunOptions`: it stops after ``n_trials`` finished trials, when
``timeout`` seconds have passed (no new trial starts; those in flight finish), or when the
searcher has nothing more to propose. A trial that runs past ``trial_timeout`` is stopped by
its executor and recorded FAIL (reason ``timeout``); the run goes on. Ctrl-C
(``KeyboardInterrupt``) stops the run at once: the trials in flight are stopped and recorded
REQUEUED with reason ``interrupted``, and :class:`StudyInterrupted` is raised;
:func:`resume_study` runs their configurations again.

Each trial may keep files (its trained weights...) in the folder
:func:`medtune.study.artifacts.trial_folder` gives it; the driver records the folders of
COMPLETE trials, keeps those of the best ``keep_best`` trials only, and a resume removes the
folders of trials that were in flight (see :mod:`medtune.study.artifacts`).

The searcher hears each outcome as it is (:func:`outcome`: the objective's value, or a
failure); its direction and failure policy decide what that counts as
(:class:`medtune.search.Searcher`), so it must be built with the study's direction. With
several objectives or constraints (the searcher's ``objectives``), :func:`tell_outcome` reads
the named values from the trial's metrics; a COMPLETE result lacking one is recorded FAIL with
a message naming it.

With a pruner (:mod:`medtune.pruners`), the driver answers each report of a running trial
(:class:`medtune.study.pruning.PruningJudge`); a trial it stops is recorded PRUNED with the step
(metric ``pruned_at_step``) and the rule that stopped it (as its ``traceback``).

Resuming relies on searchers being deterministic given their seed and the order of their
``ask``/``tell`` calls: the searcher is rebuilt from the study's seed, the stored proposals and
outcomes are replayed to it in their original interleaving (each trial records how many results
had been recorded when it was proposed), and the study continues. Every replayed proposal is
checked against the stored one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from medtune.search.objectives import ObjectivesError
from medtune.search.searcher import Searcher, Suggestion, to_score
from medtune.pruners import Pruner
from medtune.study import artifacts
from medtune.study.executors import (
    Executor,
    Objective,
    TrialResult,
    TrialTask,
    check_executor,
    make_executor,
)
from medtune.study.pruning import PruningJudge
from medtune.study.store import FailureReason, StudyStore, Trial, TrialState, driver_lock

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


@dataclass(frozen=True)
class RunOptions:
    """How one run of a study goes: when it stops, where its trials run, what it shows.

    Attributes:
        n_trials: finished trials (COMPLETE, PRUNED or FAIL) the study should end with,
            earlier runs included; None: no limit.
        timeout: seconds after which no new trial starts (trials in flight still finish);
            None: no limit.
        executor: where trials run, a name of :data:`~medtune.study.executors.EXECUTORS`
            (``"inline"``, ``"process"``, ``"ray"``).
        n_workers: trials in flight at once.
        trial_timeout: seconds one trial may run before it is stopped and recorded FAIL
            (reason ``timeout``); None for the limit the objective declares (its
            ``trial_timeout`` attribute, if any), 0 for no limit.
        executor_options: further options of the executor (for ``ray``: ``address`` and so
            on).
        import_path: folders where a ``"module:function"`` objective is looked for after the
            installed packages and PYTHONPATH, in the driver and in the workers.
        progress: show a progress bar (trials done of ``n_trials`` or of the searcher's
            ``planned_trials``, best value, ETA).
        keep_best: how many of the best COMPLETE trials keep their artifacts (0: every
            trial's; see :mod:`medtune.study.artifacts`).

    Raises :class:`~medtune.study.executors.ExecutorError` for executor settings the executor
    refuses (checked here, before anything runs) and ``ValueError`` for the others.
    """

    n_trials: int | None = None
    timeout: float | None = None
    executor: str = "inline"
    n_workers: int = 1
    trial_timeout: float | None = None
    executor_options: Mapping[str, Any] = field(default_factory=dict)
    import_path: tuple[str, ...] = ()
    progress: bool = True
    keep_best: int = artifacts.KEEP_BEST

    def __post_init__(self) -> None:
        artifacts.check_keep_best(self.keep_best)
        if self.n_trials is not None and (isinstance(self.n_trials, bool)
                                          or not isinstance(self.n_trials, int)
                                          or self.n_trials < 0):
            raise ValueError(f"n_trials must be an integer >= 0 or None, got {self.n_trials!r}")
        if self.timeout is not None and (isinstance(self.timeout, bool)
                                         or not isinstance(self.timeout, (int, float))
                                         or not self.timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got "
                             f"{self.timeout!r}")
        check_executor(self.executor, self.n_workers, self.trial_timeout, self.executor_options)
        object.__setattr__(self, "executor_options", dict(self.executor_options))
        object.__setattr__(self, "import_path", tuple(self.import_path))

    def make_executor(self, objective: str | Objective) -> Executor:
        """The executor these options describe, built for ``objective``. A Ray executor
        connects to its cluster here: build it before writing anything that an unreachable
        cluster should not leave behind, and pass it to :func:`run_study`."""
        return make_executor(self.executor, objective, self.n_workers,
                             trial_timeout=self.trial_timeout, import_path=self.import_path,
                             **self.executor_options)


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


def outcome(state: TrialState, value: float | None) -> tuple[float | None, bool]:
    """What a searcher is told about a finished trial: ``(value, failed)``. A FAIL trial, and a
    PRUNED one stopped before it reported a finite value, is a failure (value None); the
    searcher's failure policy decides what it counts as. The same in a run and in a replay."""
    if state is TrialState.FAIL or value is None or not math.isfinite(value):
        return None, True
    return value, False


def tell_outcome(searcher: Searcher, suggestion: Suggestion, state: TrialState,
                 value: float | None, metrics: Mapping[str, Any]) -> tuple[float | None, bool]:
    """Tell ``searcher`` a finished trial's :func:`outcome`, read through the study's
    objectives (``searcher.objectives``): with several objectives the values by name, in
    order, and with constraints the constrained values; a trial lacking one (a PRUNED trial
    has no metrics) is a failure. The same in a run and in a replay; returns the outcome."""
    told, failed = outcome(state, value)
    objectives = searcher.objectives
    if not failed and (objectives.multi or objectives.constraints):
        try:
            named = objectives.values(value, metrics)
        except ObjectivesError:
            told, failed = None, True
        else:
            searcher.tell(suggestion, objectives.vector(named) if objectives.multi else told,
                          constraint_values=objectives.constraint_values(named))
            return told, failed
    searcher.tell(suggestion, told, failed=failed)
    return told, failed


def run_study(
    store: StudyStore,
    searcher: Searcher,
    objective: str | Objective,
    options: RunOptions = RunOptions(),
    *,
    executor: Executor | None = None,
    pruner: Pruner | None = None,
) -> StudySummary:
    """Run a new study until ``options.n_trials`` trials have finished, ``options.timeout``
    seconds have passed, or the searcher has nothing more to propose.

    Args:
        store: a study without trials (continue one with :func:`resume_study`).
        searcher: a fresh :class:`~medtune.search.Searcher` built with the study's direction
            and, so that the study can be resumed, with ``store.seed``.
        objective: ``objective(config, resource, seed, report) -> float`` or its
            ``"module:function"`` name (see :mod:`medtune.study.executors`).
        options: how the run goes (:class:`RunOptions`).
        executor: the executor ``options.make_executor(objective)`` built, when it must exist
            before the study does (a Ray executor connects when built); None to build it
            here. The run closes it.
        pruner: stops trials early from their reports (a :class:`medtune.pruners.Pruner`
            built with the study's direction); None: every trial runs to its end.

    Raises :class:`StudyRunError` for a study that has trials or a searcher that does not fit
    it, :class:`~medtune.study.artifacts.ArtifactError` when its artifact folder holds an
    earlier study's trials, and :class:`StudyInterrupted` on Ctrl-C (see the module
    docstring).
    """
    with driver_lock(store.path):
        existing = store.count(TrialState)
        if existing:
            raise StudyRunError(
                f"{store.path} already has {existing} trials: continue it with resume_study "
                "(`medtune resume`), or start a new study file"
            )
        _check_searcher(searcher, store)
        artifacts.require_absent(store.path)
        return _Driver(store, searcher, objective, options, executor, pruner).run(deque())


def resume_study(
    path: str | os.PathLike[str],
    searcher: Searcher | Callable[[int], Searcher],
    objective: str | Objective,
    options: RunOptions = RunOptions(),
    *,
    executor: Executor | None = None,
    pruner: Pruner | None = None,
) -> StudySummary:
    """Continue the study at ``path`` after its driver stopped, was interrupted or was killed.

    RUNNING trials left by the dead driver are marked REQUEUED and their configurations run
    again as new trials, as are those an interrupted run recorded REQUEUED; the searcher
    (``searcher``: one built with the study's seed, or a function ``seed -> searcher`` that
    builds it) hears the stored proposals and outcomes again, and the study goes on. No
    recorded result is lost or recomputed and no trial id is reused. ``options.n_trials``
    counts the study's finished trials, earlier runs included; the other arguments are as in
    :func:`run_study`. A study with a damaged trial row is refused
    (:class:`~medtune.study.store.DamagedTrialError`), before any trial is requeued.
    """
    with StudyStore(path) as store, driver_lock(store.path):
        store.require_intact()  # a history with a trial left out cannot be replayed
        if not isinstance(searcher, Searcher):
            searcher = searcher(store.seed)
        _check_searcher(searcher, store)
        if searcher.seed != store.seed:
            raise StudyRunError(
                f"cannot resume {store.path}: its searcher was built with seed {searcher.seed}, "
                f"but the study's seed is {store.seed}; build it with seed={store.seed} (or "
                "pass a function seed -> searcher)"
            )
        requeued = store.requeue_orphans()
        if requeued:
            logger.info("%s: requeued %d trials left running by the previous driver: %s",
                        store.path, len(requeued), ", ".join(str(t.id) for t in requeued))
        removed = artifacts.remove_unlisted(store.path, store.artifacts().values())
        if removed:
            logger.info("%s: removed the artifact folders of trials that were in flight: %s",
                        store.path, ", ".join(folder.name for folder in removed))
        pending = replay(store, searcher)
        return _Driver(store, searcher, objective, options, executor, pruner).run(pending)


def _check_searcher(searcher: Any, store: StudyStore) -> None:
    """Refuse a searcher that is not one, has been asked already, or optimises the other way."""
    if not isinstance(searcher, Searcher):
        raise StudyRunError(
            f"a study is driven by a medtune.search.Searcher, got {type(searcher).__name__}: "
            "subclass medtune.search.Searcher (see its docstring)"
        )
    if searcher.asked:
        raise StudyRunError(
            f"the {searcher.name} searcher was asked {searcher.asked} times already: give the "
            "study a freshly built one"
        )
    if searcher.direction != store.direction:
        raise StudyRunError(
            f"study {store.name!r} is to {store.direction} its objective, but the "
            f"{searcher.name} searcher was built to {searcher.direction} it: build it with "
            f"direction={store.direction!r}"
        )


def replay(store: StudyStore, searcher: Searcher) -> deque[tuple[Suggestion, int]]:
    """Replay a study's proposals and outcomes to a freshly built ``searcher``.

    Each outcome is derived from the trial's state and value (:func:`outcome`), as the run told
    it, so a study recorded by an earlier version replays the same way.

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
        tell_outcome(searcher, suggestion, trial.state, trial.value, trial.metrics)
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

    def __init__(self, store: StudyStore, searcher: Searcher, objective: str | Objective,
                 options: RunOptions, executor: Executor | None, pruner: Pruner | None = None):
        if executor is not None and (executor.name != options.executor
                                     or executor.capacity != options.n_workers):
            raise ValueError(
                f"the executor passed ({executor.name!r}, {executor.capacity} at a time) is not "
                f"the one the options describe ({options.executor!r}, n_workers="
                f"{options.n_workers}): build it with options.make_executor(objective)"
            )
        self.store = store
        self.searcher = searcher
        self.objective = objective
        self.options = options
        self.executor = executor
        self.artifact_root = artifacts.artifact_root(store.path.resolve())
        best = store.best_trial()
        self.best = best.value if best else None
        self.finished = store.count()
        self.failed = store.count([TrialState.FAIL])
        self.pruning = None if pruner is None else PruningJudge(store, pruner)

    def run(self, pending: deque[tuple[Suggestion, int]]) -> StudySummary:
        started = time.monotonic()
        timeout, n_trials = self.options.timeout, self.options.n_trials
        deadline = None if timeout is None else started + timeout
        in_flight: dict[int, Suggestion] = {}
        executor = self.executor
        try:
            if executor is None:
                executor = self.options.make_executor(self.objective)
            if self.pruning is not None:
                executor.enable_pruning(self.pruning)
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
            if executor is not None:
                executor.close(cancel=True)
            raise
        executor.close()
        if n_trials is not None and self.finished >= n_trials:
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
        known = [n for n in (self.options.n_trials, self.searcher.planned_trials) if n is not None]
        return min(known) if known else None

    def _interrupted(self, executor: Executor | None) -> StudyInterrupted:
        """Stop the trials in flight and record them interrupted (a second Ctrl-C meanwhile
        is ignored, so the record is written whole)."""
        with _sigint_ignored():
            if executor is not None:
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
            n_trials = self.options.n_trials
            if n_trials is not None and self.finished + len(in_flight) >= n_trials:
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
            executor.submit(TrialTask(trial_id, config, suggestion.resource, seed,
                                      str(self.artifact_root)))

    def _record(self, result: TrialResult, suggestion: Suggestion) -> None:
        """Commit one result to the store, then tell the searcher its outcome. A COMPLETE
        result lacking a value the study's objectives or constraints name is recorded FAIL,
        its message naming the value."""
        if result.state is TrialState.COMPLETE and self.searcher.objectives.required != ("value",):
            try:
                self.searcher.objectives.values(result.value, result.execution.metrics)
            except ObjectivesError as exc:
                result = dataclasses.replace(
                    result, state=TrialState.FAIL, value=None, kept_artifacts=False,
                    failure_reason=FailureReason.EXCEPTION,
                    traceback=f"trial {result.trial_id}: {exc}")
        value, failed = outcome(result.state, result.value)
        run = result.execution
        told = {"told_value": value, "told_failed": failed}
        if result.state is not TrialState.COMPLETE:  # a killed worker may have left a folder
            artifacts.TrialArtifacts(self.artifact_root, result.trial_id).discard()
        if result.state is TrialState.COMPLETE:
            assert result.value is not None
            self.store.complete_trial(result.trial_id, result.value, run, **told,
                                      artifact=self._kept_artifact(result))
            for folder in self.store.release_artifacts(self.options.keep_best):
                shutil.rmtree(folder, ignore_errors=True)
            direction = self.store.direction
            if self.best is None or (to_score(result.value, direction)
                                     < to_score(self.best, direction)):
                self.best = result.value
        elif result.state is TrialState.PRUNED:
            self.store.prune_trial(result.trial_id, result.value, run, **told,
                                   reason=result.traceback)
        else:
            assert result.failure_reason is not None
            self.store.fail_trial(result.trial_id, result.failure_reason, result.traceback,
                                  run, **told)
            self.failed += 1
            first_line = (result.traceback or "").strip().splitlines()[-1:] or [""]
            logger.warning("trial %d failed (%s): %s", result.trial_id,
                           result.failure_reason.value, first_line[0])
        self.finished += 1
        if self.pruning is not None:
            self.pruning.finished(result)
        tell_outcome(self.searcher, suggestion, result.state, result.value,
                     result.execution.metrics)

    def _kept_artifact(self, result: TrialResult) -> str | None:
        """The artifact folder of a COMPLETE trial as the store records it, if it kept one
        that this driver can see."""
        if not result.kept_artifacts:
            return None
        if not artifacts.TrialArtifacts(self.artifact_root, result.trial_id).final.is_dir():
            logger.warning(
                "trial %d kept artifacts on host %s in %s, which this driver cannot see: they "
                "are not recorded; put the study on a file system that every worker mounts at "
                "the same path", result.trial_id, result.execution.host, self.artifact_root)
            return None
        return artifacts.relative_folder(self.store.path, result.trial_id)

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
            disable=not self.options.progress,
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
