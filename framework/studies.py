"""What ``medtune run``, ``resume``, ``status``, ``report`` and ``compare`` do, on top of the
study loop."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

import medtune
from medtune.config import ConfigError, StudyConfig, load_config, parse_config
from medtune.errors import MedtuneError
from medtune.report import study_replay, write_comparison, write_report
from medtune.search.space import SearchSpace
from medtune.study.executors import ExecutorError, resolve_objective
from medtune.study.runner import StudySummary, resume_study, run_study
from medtune.study.store import StudyStore, TrialState
from medtune.tables import study_table
from medtune.tasks import ConfiguredObjective


#: At most this many of the trials' own metrics become columns of the best-trials table.
MAX_METRIC_COLUMNS = 9

#: The built-in demo study ``medtune run`` runs without a configuration.
DEMO_CONFIG = Path(__file__).with_name("demo.toml")


def _searcher_factory(config: StudyConfig):
    where = f"{config.path or '<config>'}: space"
    space = SearchSpace.from_dict(config.space, where=where)

    def build(seed: int):
        # the runner negates values of maximising studies and applies the failure policy
        return medtune.create("searcher", config.searcher, space=space, seed=seed,
                              **config.searcher_options)

    build(config.seed)  # validate the searcher and its options before anything is written
    return build


def _check_objective(config: StudyConfig) -> None:
    """Import the objective before anything is written: a name that does not import would
    otherwise fail every trial of the study."""
    try:
        resolve_objective(config.objective)
    except ExecutorError as exc:
        raise ConfigError(f"{config.path or '<config>'}: objective: {exc}") from None


def _check_replay(config: StudyConfig) -> None:
    """A ``[replay]`` table needs a finite space and searchers that accept their options:
    checked before anything is written, not after the study ran."""
    if config.replay is None:
        return
    where = f"{config.path or '<config>'}: replay"
    space = SearchSpace.from_dict(config.space, where=f"{config.path or '<config>'}: space")
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


def _run_options(config: StudyConfig) -> dict:
    executor_options = {"address": config.address} if config.address else {}
    return dict(
        n_trials=config.n_trials,
        timeout=config.timeout,
        n_workers=config.n_workers,
        on_failure=config.on_failure,
        penalty=config.penalty,
        executor_options=executor_options,
    )


def run(config_path: str | Path | None, console: Console, scale: float | None = None) -> Path:
    """Validate the config, create the study file, run the study, report. Returns the study.

    Without a config, runs the built-in demo study (:data:`DEMO_CONFIG`). ``scale`` multiplies
    what the config's ``[scale]`` table lists (a study of its own, ``<name>_x<scale>``).
    """
    if config_path is None:
        config_path = DEMO_CONFIG
        console.print(f"No configuration given: running the built-in demo study ({DEMO_CONFIG.name}).")
    config = load_config(config_path, scale)
    build = _searcher_factory(config)
    _check_objective(config)
    _check_replay(config)
    if config.storage.exists():
        raise ConfigError(
            f"{config.storage} already exists: continue it with `medtune resume {config.storage}` "
            "or set another study.storage"
        )
    try:
        config.storage.parent.mkdir(parents=True, exist_ok=True)
        store = StudyStore.create(config.storage, name=config.name, direction=config.direction,
                                  seed=config.seed, config_text=config.source)
    except OSError as exc:
        raise ConfigError(
            f"{config.path or '<config>'}: study.storage: cannot create {config.storage} "
            f"({exc.strerror or exc}); set study.storage to a writable path"
        ) from None
    with store:
        summary = run_study(store, build(config.seed),
                            ConfiguredObjective(config.objective, config.settings),
                            config.executor, **_run_options(config))
    _finish(config.storage, summary, console)
    return config.storage


def resume(study_path: str | Path, console: Console) -> Path:
    """Continue a study from its file (the configuration is stored inside it)."""
    study_path = Path(study_path)
    with StudyStore(study_path) as store:
        config = parse_config(store.config_text, f"{study_path} (stored configuration)")
    _check_objective(config)
    summary = resume_study(study_path, _searcher_factory(config),
                           ConfiguredObjective(config.objective, config.settings),
                           config.executor, **_run_options(config))
    _finish(study_path, summary, console)
    return study_path


def status(study_path: str | Path, console: Console) -> None:
    """Print trial counts by state and the best trial."""
    with StudyStore(study_path) as store:
        trials = store.trials()
        table = Table(title=f"study {store.name} ({store.direction})")
        table.add_column("state")
        table.add_column("trials", justify="right")
        for state in TrialState:
            table.add_row(state.value, str(sum(t.state == state for t in trials)))
        console.print(table)
        best = store.best_trial()
        if best is None:
            console.print("No completed trial yet.")
        else:
            console.print(f"Best: trial {best.id}, value {best.value:.4g}, "
                          f"config {json.dumps(best.config, sort_keys=True)}")


def report(study_path: str | Path, console: Console) -> Path:
    """Write the HTML report and its plots; returns the HTML path."""
    page = write_report(study_path)
    console.print(f"Report: {page}")
    return page


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
        table.add_row(item.searcher, str(len(item.best)), f"{item.mean:.4g} ± {item.std:.2g}",
                      ", ".join(f"{b:.4g}" for b in item.best))
    console.print(table)
    console.print(f"Comparison: {page}")
    return page


def _finish(study_path: Path, summary: StudySummary, console: Console) -> None:
    with StudyStore(study_path) as store:
        finished = [t for t in store.trials() if t.state == TrialState.COMPLETE]
        maximize = store.direction == "maximize"
        finished.sort(key=lambda t: -t.value if maximize else t.value)
        table = Table(title=f"{store.name}: best trials ({store.direction})")
        top = finished[:8]
        for column in ("trial", "value", "resource", "seconds", "configuration"):
            table.add_column(column)
        for t in top:
            table.add_row(str(t.id), f"{t.value:.4g}", "" if t.resource is None else f"{t.resource:g}",
                          "" if t.duration is None else f"{t.duration:.1f}",
                          json.dumps(t.config, sort_keys=True))
        console.print(table)
        # the scalar metrics the trials returned beside their value, in first-seen order
        metrics = list(dict.fromkeys(name for t in top for name, v in t.metrics.items()
                                     if isinstance(v, (int, float))))[:MAX_METRIC_COLUMNS]
        if metrics:
            table = Table(title="their other metrics")
            for column in ("trial", "value", *metrics):
                table.add_column(column.replace("_", " "), justify="right")
            for t in top:
                table.add_row(str(t.id), f"{t.value:.4g}", *(
                    f"{t.metrics[m]:.3g}" if isinstance(t.metrics.get(m), (int, float)) else ""
                    for m in metrics))
            console.print(table)
        results = study_table(store)
        if results is not None:
            summary_table = Table(title=results.title)
            for column in results.header:
                summary_table.add_column(column)
            for row in results.text_rows():
                summary_table.add_row(*row)
            console.print(summary_table)
        failed = sum(t.state == TrialState.FAIL for t in store.trials())
        if failed:
            console.print(f"{failed} trial(s) failed; `medtune report {study_path}` lists why.")
    console.print(
        f"Stopped ({summary.stop_reason}) after {summary.elapsed:.0f} s: {summary.n_complete} "
        f"complete, {summary.n_pruned} pruned, {summary.n_failed} failed. Study file: {study_path}"
    )
    page = report(study_path, console)
    with StudyStore(study_path) as store:
        replayed = study_replay(store, page.parent)  # computed by the report just written
    if replayed is not None:
        console.print(f"Replayed searches over the {replayed.configurations} models trained "
                      f"(of {replayed.population}), {replayed.runs} runs each: draws to reach "
                      "each goal (seed 004 table 2.3)")
        console.print(replayed.table, highlight=False, soft_wrap=True)
