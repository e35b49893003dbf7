"""What ``medtune run``, ``resume``, ``status``, ``report``, ``backup`` and ``compare`` do, on
top of the study loop."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

import medtune
from medtune.config import ConfigError, StudyConfig, load_config, parse_config
from medtune.errors import MedtuneError
from medtune.report import (StudyReplay, report_folder, study_replay, task_tables,
                            write_comparison, write_report)
from medtune.pruners import Pruner
from medtune.search import Searcher, SearchSpace
from medtune.study.artifacts import artifact_root, require_absent
from medtune.study.executors import (
    Executor,
    ExecutorError,
    declared_trial_timeout,
    executor_class,
)
from medtune.study.executors.base import refuse_pruning
from medtune.study.runner import RunOptions, StudySummary, resume_study, run_study
from medtune.study.store import SCHEMA_VERSION, StudyStore, StudyStoreError, TrialState
from medtune.tables import (
    format_config,
    format_number,
    front_table,
    study_objectives,
    study_table,
    verbatim,
)
from medtune.tasks import ConfiguredObjective, Task, check_settings


#: At most this many of the trials' own metrics become columns of the best-trials table.
MAX_METRIC_COLUMNS = 9

#: The built-in demo study ``medtune run`` runs without a configuration.
DEMO_CONFIG = Path(__file__).with_name("demo.toml")


def _searcher(config: StudyConfig, space: SearchSpace, seed: int) -> Searcher:
    """The study's searcher, built with the study's direction and failure policy (it applies
    them; the study loop only reports outcomes)."""
    try:
        return medtune.create("searcher", config.searcher, space=space, seed=seed,
                              objectives=config.objectives, on_failure=config.on_failure,
                              penalty=config.penalty, **config.searcher_options)
    except TypeError as exc:  # an option the searcher's constructor does not take
        raise ConfigError(f"{config.path or '<config>'}: searcher {config.searcher!r}: {exc}; "
                          "check the option names of [searcher]") from None


def _import_path(config: StudyConfig) -> tuple[str, ...]:
    """Where a ``function = "module:function"`` objective is looked for after the installed
    packages and PYTHONPATH, in the driver and in the workers: the configuration's folder
    (a ``quad.py`` beside it), then the current directory."""
    folders = [config.path.resolve().parent] if config.path is not None else []
    folders.append(Path.cwd())
    return tuple(dict.fromkeys(str(folder) for folder in folders))


@dataclass(frozen=True)
class _Study:
    """What a configuration describes, built and checked before anything is written: the
    search space, the searcher (once, with the study's seed), the objective and how the run
    goes."""

    space: SearchSpace
    searcher: Searcher
    objective: ConfiguredObjective
    options: RunOptions
    pruner: Pruner | None = None


def _prepare(config: StudyConfig, seed: int) -> _Study:
    """Build the study ``config`` describes: its space and searcher, its objective (resolved
    here, once: a name that does not import would otherwise fail every trial; a task was found
    when the configuration was read) and its run options."""
    where = config.path or "<config>"
    space = SearchSpace.from_dict(config.space, where=f"{where}: space")
    searcher = _searcher(config, space, seed)
    import_path = _import_path(config)
    objective = ConfiguredObjective(
        config.objective, config.settings,
        config.objectives.names if config.objectives.multi else ())
    trial_timeout = config.trial_timeout
    try:
        function = objective.resolve(import_path)
        if trial_timeout is None:  # the limit the objective declares (0: none)
            trial_timeout = declared_trial_timeout(function) or 0.0
    except ExecutorError as exc:
        raise ConfigError(f"{where}: objective: {exc}") from None
    if isinstance(function, Task):  # what would fail every trial the same way
        try:
            function.preflight(check_settings(function.name, function.settings, config.settings))
        except MedtuneError as exc:
            raise ConfigError(f"{where}: objective.settings: {exc}") from None
    try:
        options = RunOptions(
            n_trials=config.n_trials, timeout=config.timeout, executor=config.executor,
            n_workers=config.n_workers, trial_timeout=trial_timeout,
            executor_options={"address": config.address} if config.address else {},
            import_path=import_path, keep_best=config.keep_best,
        )
    except ExecutorError as exc:  # an executor setting or option it refuses
        raise ConfigError(f"{where}: study: {exc}") from None
    return _Study(space, searcher, objective, options, _pruner(config, function))


def _pruner(config: StudyConfig, function: object) -> Pruner | None:
    """The study's pruner, built in the study's direction (with several objectives the
    first's: the direction of the one value an objective reports). Refused before anything is
    written: an objective that declares it never reports (``reports_intermediate = False``,
    see :class:`medtune.tasks.Task`), an executor that cannot stop trials, unknown names and
    bad options."""
    if config.pruner is None:
        return None
    where = f"{config.path or '<config>'}: pruner"
    if getattr(function, "reports_intermediate", True) is False:
        raise ConfigError(
            f"{where}: objective {config.objective!r} never reports intermediate values "
            "(reports_intermediate = False), so no trial can be stopped early: remove [pruner] "
            "or use an objective that calls report(step, value)")
    if not executor_class(config.executor).supports_pruning:
        raise ConfigError(f"{where}: study.executor: {refuse_pruning(config.executor)}")
    try:
        return medtune.create("pruner", config.pruner, direction=config.direction,
                              **config.pruner_options)
    except TypeError as exc:  # an option the pruner's constructor does not take
        raise ConfigError(f"{where}: {config.pruner!r}: {exc}; check the option names of "
                          "[pruner]") from None
    except MedtuneError as exc:  # an unknown name, an invalid option value
        raise ConfigError(f"{where}: {exc}") from None


def _executor(config: StudyConfig, study: _Study) -> Executor:
    """The study's executor, built before anything is written: a Ray cluster it cannot reach
    leaves no study file behind."""
    try:
        return study.options.make_executor(study.objective)
    except ExecutorError as exc:
        raise ConfigError(f"{config.path or '<config>'}: study: {exc}") from None


def _check_replay(config: StudyConfig, space: SearchSpace) -> None:
    """A ``[replay]`` table needs a finite space and searchers that accept their options:
    checked before anything is written, not after the study ran."""
    if config.replay is None:
        return
    where = f"{config.path or '<config>'}: replay"
    if not space.is_finite:
        raise ConfigError(f"{where}: replaying needs a finite space (ordinal and categorical "
                          "parameters, no float ones) whose every model the study trains, e.g. "
                          'with [searcher] name = "grid"')
    for name in config.replay.searchers:
        try:
            medtune.create("searcher", name, space=space, seed=0, direction=config.direction,
                           **config.replay.options.get(name, {}))
        except (MedtuneError, TypeError) as exc:
            raise ConfigError(f"{where}: searcher {name!r}: {exc}") from None


def run(config_path: str | Path | None, console: Console, scale: float | None = None) -> Path:
    """Validate the config, create the study file, run the study, report. Returns the study.

    Without a config, runs the built-in demo study (:data:`DEMO_CONFIG`). ``scale`` multiplies
    what the config's ``[scale]`` table lists (a study of its own, ``<name>_x<scale>``).
    """
    if config_path is None:
        config_path = DEMO_CONFIG
        console.print(f"No configuration given: running the built-in demo study ({DEMO_CONFIG.name}).")
    config = load_config(config_path, scale)
    study = _prepare(config, config.seed)
    _check_replay(config, study.space)
    if config.storage.exists():
        raise ConfigError(
            f"{config.storage} already exists: continue it with `medtune resume {config.storage}` "
            "or set another study.storage"
        )
    require_absent(config.storage)
    with _executor(config, study) as executor:
        try:
            config.storage.parent.mkdir(parents=True, exist_ok=True)
            store = StudyStore.create(config.storage, name=config.name,
                                      direction=config.direction, seed=config.seed,
                                      config_text=config.source)
        except OSError as exc:
            raise ConfigError(
                f"{config.path or '<config>'}: study.storage: cannot create {config.storage} "
                f"({exc.strerror or exc}); set study.storage to a writable path"
            ) from None
        with store:
            summary = run_study(store, study.searcher, study.objective, study.options,
                                executor=executor, pruner=study.pruner)
    _finish(config.storage, summary, console)
    return config.storage


def resume(study_path: str | Path, console: Console) -> Path:
    """Continue a study from its file (the configuration is stored inside it)."""
    study_path = Path(study_path)
    with StudyStore(study_path) as store:
        config = parse_config(store.config_text, f"{study_path} (stored configuration)")
        seed = store.seed
    study = _prepare(config, seed)
    with _executor(config, study) as executor:
        summary = resume_study(study_path, study.searcher, study.objective, study.options,
                               executor=executor, pruner=study.pruner)
    _finish(study_path, summary, console)
    return study_path


def locate(study: str | Path) -> Path:
    """The study file ``study`` names: a path as given, or a bare study name (no folder, no
    suffix) looked up as ``studies/NAME.sqlite``, where ``medtune run`` puts studies by default."""
    path = Path(study)
    if path.exists() or path.suffix or len(path.parts) != 1:
        return path
    candidate = Path("studies") / f"{path.name}.sqlite"
    if not candidate.exists():
        raise StudyStoreError(f"no study {study!r}: neither a file {path} nor {candidate} exists "
                              "here; give the study file's path or the name of a study under "
                              "studies/")
    return candidate


def status(study_path: str | Path, console: Console) -> None:
    """Print trial counts by state and the best trial; the study file is only read.

    Trials whose row is damaged are counted apart (each is named in a warning); an older
    schema is read as it is and upgraded by the next ``run`` or ``resume``.
    """
    with StudyStore(study_path, read_only=True) as store:
        trials = store.trials()
        damaged = store.damaged_trials()
        console.print(f"Study {verbatim(store.name)} ({store.direction}):")
        table = Table()
        table.add_column("state")
        table.add_column("trials", justify="right")
        for state in TrialState:
            table.add_row(state.value, str(sum(t.state == state for t in trials)))
        if damaged:
            table.add_row("damaged", str(len(damaged)))
        console.print(table)
        _print_pruned(trials, console)
        if store.info.schema_version < SCHEMA_VERSION:
            console.print(f"This study file uses schema version {store.info.schema_version}; "
                          f"`medtune resume` upgrades it to {SCHEMA_VERSION}.")
        best = store.best_trial()
        if _print_front(store, trials, console):
            pass
        elif best is None:
            console.print("No completed trial yet.")
        else:
            console.print(f"Best: trial {best.id}, value {format_number(best.value)}, "
                          f"config {verbatim(format_config(best.config))}")
        kept = store.artifacts()
        if kept:
            console.print(f"Artifacts: {len(kept)} trial(s) keep theirs in "
                          f"{verbatim(artifact_root(study_path))}; `medtune export` copies one "
                          "out", highlight=False, soft_wrap=True)


def _print_pruned(trials: list, console: Console) -> None:
    """How many trials each rule stopped and at which steps, and the latest rule in full."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if not pruned:
        return
    rules = Counter((t.pruned_by or "").split(":")[0] or "the objective" for t in pruned)
    steps = sorted(t.pruned_at for t in pruned if t.pruned_at is not None)
    at = (f", at steps {format_number(steps[0])} to {format_number(steps[-1])}"
          if steps else "")
    counts = ", ".join(f"{n} by {verbatim(rule)}" for rule, n in rules.most_common())
    console.print(f"Pruned: {counts}{at}. Latest: trial {pruned[-1].id}: "
                  f"{verbatim(pruned[-1].pruned_by or 'stopped by the objective')}",
                  highlight=False, soft_wrap=True)


def _print_front(store: StudyStore, trials: list, console: Console) -> bool:
    """Print the Pareto front (several objectives) or the best feasible trial and the
    infeasible ones (constraints); False, printing nothing, for a study with neither."""
    objectives = study_objectives(store)
    if not objectives.multi and not objectives.constraints:
        return False
    front = front_table(trials, objectives)
    table = Table(title=verbatim(front.title))
    for column in front.header:
        table.add_column(verbatim(column))
    for row in front.rows:
        table.add_row(*map(verbatim, row))
    console.print(table)
    if front.infeasible:
        console.print(f"{front.infeasible} completed trial(s) break a constraint: kept, shown "
                      "as infeasible, never on the front.")
    return True


def report(study_path: str | Path, console: Console, replayed: StudyReplay | None = None) -> Path:
    """Write the HTML report and its plots; returns the HTML path. ``replayed``: the study's
    replay results when the caller computed them (see :func:`medtune.report.write_report`)."""
    page = write_report(study_path, replayed=replayed)
    console.print(f"Report: {verbatim(page)}")
    return page


def backup(study_path: str | Path, destination: str | Path, console: Console) -> Path:
    """Copy a study, even one that is running, to the new file ``destination`` (see
    :meth:`~medtune.study.store.StudyStore.backup`) and print how many trials it holds."""
    with StudyStore(study_path, read_only=True) as store:
        copied = store.backup(destination)
    console.print(f"Copied {copied} trials of {verbatim(study_path)} to {verbatim(destination)}.",
                  highlight=False, soft_wrap=True)
    return Path(destination)


def compare(study_paths: list[str | Path], console: Console, out: str | Path | None = None) -> Path:
    """Write the comparison of several studies (figure and table, see
    :func:`medtune.report.write_comparison`) and print the best value per searcher; returns
    the HTML path. ``out`` defaults to ``comparison/`` next to the first study."""
    folder = Path(out) if out is not None else Path(study_paths[0]).parent / "comparison"
    page, summaries = write_comparison(study_paths, folder)
    table = Table(title="best value per searcher over its studies")
    for column in ("searcher", "studies", "best value (mean ± std)", "per study"):
        table.add_column(column)
    for item in summaries:
        table.add_row(verbatim(item.searcher), str(len(item.best)),
                      f"{format_number(item.mean)} ± {format_number(item.std, 2)}",
                      ", ".join(format_number(b) for b in item.best))
    console.print(table)
    console.print(f"Comparison: {verbatim(page)}")
    return page


def _finish(study_path: Path, summary: StudySummary, console: Console) -> None:
    """Print the results of a run (best trials, their metrics, the results table), write the
    report and print the replay results; the replay is computed once, here, for both."""
    with StudyStore(study_path) as store:
        finished = [t for t in store.trials() if t.state == TrialState.COMPLETE]
        maximize = store.direction == "maximize"
        finished.sort(key=lambda t: -t.value if maximize else t.value)
        table = Table(title=f"{verbatim(store.name)}: best trials ({store.direction})")
        top = finished[:8]
        for column in ("trial", "value", "resource", "seconds", "configuration"):
            table.add_column(column)
        for t in top:
            table.add_row(str(t.id), format_number(t.value),
                          "" if t.resource is None else f"{t.resource:g}",
                          "" if t.duration is None else f"{t.duration:.1f}",
                          verbatim(format_config(t.config)))
        console.print(table)
        # the scalar metrics the trials returned beside their value, in first-seen order
        metrics = list(dict.fromkeys(name for t in top for name, v in t.metrics.items()
                                     if isinstance(v, (int, float))))[:MAX_METRIC_COLUMNS]
        if metrics:
            table = Table(title="their other metrics")
            for column in ("trial", "value", *metrics):
                table.add_column(verbatim(column.replace("_", " ")), justify="right")
            for t in top:
                table.add_row(str(t.id), format_number(t.value), *(
                    format_number(t.metrics[m]) if isinstance(t.metrics.get(m), (int, float))
                    else "" for m in metrics))
            console.print(table)
        _print_front(store, store.trials(), console)
        results = study_table(store)
        # the [table] results, then the task's own (e.g. the segmentation task's paired tests)
        for shown in ([results] if results is not None else []) + task_tables(store):
            rich_table = Table(title=verbatim(shown.title))
            for column in shown.header:
                rich_table.add_column(verbatim(column))
            for row in shown.text_rows():
                rich_table.add_row(*map(verbatim, row))
            console.print(rich_table)
        failed = sum(t.state == TrialState.FAIL for t in store.trials())
        if failed:
            console.print(f"{failed} trial(s) failed; `medtune report {verbatim(study_path)}` "
                          "lists why.")
    console.print(
        f"Stopped ({summary.stop_reason}) after {summary.elapsed:.0f} s: {summary.n_complete} "
        f"complete, {summary.n_pruned} pruned, {summary.n_failed} failed. Study file: "
        f"{verbatim(study_path)}"
    )
    with StudyStore(study_path, read_only=True) as store:
        replayed = study_replay(store, report_folder(study_path))
    report(study_path, console, replayed)
    if replayed is not None:
        console.print(f"Replayed searches over the {replayed.configurations} models trained "
                      f"(of {replayed.population}), {replayed.runs} runs each: draws to reach "
                      "each goal (Bertrand2019 table 2.3)")
        console.print(verbatim(replayed.table), highlight=False, soft_wrap=True)
