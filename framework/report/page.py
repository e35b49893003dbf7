"""The report page of one study: ``index.html`` with the study's plots (:mod:`.plots`), its
results table, the searcher's model (:mod:`.model`), the figures of its task
(:meth:`medtune.tasks.Task.figures`, the task found through the registry by the name in the
stored configuration), its replay results (:mod:`.replay`) and every trial."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from medtune.report.model import plot_model
from medtune.report.pareto import pareto_section
from medtune.report.plots import plot_study
from medtune.report.replay import StudyReplay, plot_replay, replay_html, study_replay
from medtune.report.source import finished_trials, stored_config
from medtune.study.store import StudyStore, Trial, TrialState
from medtune.tables import ResultTable, format_config, format_number, study_table
from medtune.tasks import ConfiguredObjective, Figure, load_task


def report_folder(study_path: str | Path) -> Path:
    """Where a study's report goes by default: ``<study file without suffix>_report`` next to
    the study."""
    study_path = Path(study_path)
    return study_path.with_name(study_path.stem + "_report")


def write_report(study_path: str | Path, folder: str | Path | None = None,
                 replayed: StudyReplay | None = None) -> Path:
    """Write ``index.html`` and the PNG plots of a study; returns the HTML path.

    ``folder`` defaults to :func:`report_folder`. ``replayed``: the study's replay results
    when the caller computed them already (as ``medtune run`` does); None: computed here by
    :func:`~medtune.report.replay.study_replay`, reusing those kept in ``folder``.
    """
    study_path = Path(study_path)
    folder = Path(folder) if folder is not None else report_folder(study_path)
    # read-only: a report never changes the study; a missing or foreign file fails here,
    # before anything is written
    store = StudyStore(study_path, read_only=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        trials = finished_trials(store)
        plots = plot_study(store, trials, folder)
        model_section = _figures_html("Model", plot_model(store, trials, folder))
        metrics_section = _figures_html("Metrics", _task_figures(store, trials, folder))
        results = study_table(store)
        results_section = _results_html(results) if results is not None else ""
        results_section += "".join(_task_table_html(t) for t in task_tables(store, trials))
        results_section = pareto_section(store, trials, folder) + results_section
        if replayed is None:
            replayed = study_replay(store, folder)
        if replayed is not None:
            results_section += replay_html(replayed) + _figures_html(
                "", plot_replay(replayed, store.direction, folder))
            (folder / "replay_table.txt").write_text(replayed.table + "\n")
        best = store.best_trial()
        counts = {state.value: sum(t.state == state for t in store.trials()) for state in TrialState}
        rows = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
                t.id, t.state.value, "" if t.value is None else format_number(t.value),
                "" if t.resource is None else f"{t.resource:g}",
                "" if t.duration is None else f"{t.duration:.1f}",
                format_config(t.config),
                format_config(t.metrics) if t.metrics else "",
                (t.failure_reason.value if t.failure_reason else ""),
            )) + "</tr>"
            for t in sorted(store.trials(), key=lambda t: t.id)
        )
        best_text = (
            f"trial {best.id}: {format_number(best.value)} with "
            f"{html.escape(format_config(best.config))}"
            if best is not None else "no completed trial yet"
        )
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medtune study {html.escape(store.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Study {html.escape(store.name)}</h1>
<p>Direction: {store.direction}. Trials: {html.escape(json.dumps(counts))}.</p>
<p><b>Best:</b> {best_text}</p>{results_section}
{''.join(f'<p><img src="{name}" alt="{name}"></p>' for name in plots)}{metrics_section}{model_section}
<h2>Trials</h2>
<table><tr><th>id</th><th>state</th><th>value</th><th>resource</th><th>seconds</th><th>config</th><th>metrics</th><th>failure</th></tr>
{rows}
</table></body></html>
"""
        (folder / "index.html").write_text(page)
    finally:
        store.close()
    return folder / "index.html"


def _task_figures(store: StudyStore, trials: list[Trial], folder: Path) -> list[Figure]:
    """The figures of the study's task (:meth:`medtune.tasks.Task.figures`); none for a
    ``function`` objective or a study whose configuration no longer reads (its task is not
    installed here)."""
    config = stored_config(store)
    task = ConfiguredObjective(config.objective).task if config is not None else None
    return load_task(task).figures(trials, folder) if task is not None else []


def task_tables(store: StudyStore, trials: list[Trial] | None = None) -> list[Any]:
    """The tables the study's task computes across its finished trials
    (:meth:`medtune.tasks.Task.tables`); none for a ``function`` objective or a study whose
    configuration no longer reads."""
    config = stored_config(store)
    task = ConfiguredObjective(config.objective).task if config is not None else None
    if task is None:
        return []
    return load_task(task).tables(finished_trials(store) if trials is None else trials)


def _task_table_html(table: Any) -> str:
    return f"\n<p>{html.escape(table.title)}</p>\n{_table_html(table)}"


def _table_html(table: Any) -> str:
    """``table`` (a ``header`` and ``text_rows()``) as an HTML table."""
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in table.header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row)
                     + "</tr>" for row in table.text_rows())
    return f"<table><tr>{head}</tr>\n{body}\n</table>"


def _figures_html(title: str, figures: list[Figure]) -> str:
    if not figures:
        return ""
    return (f"\n<h2>{title}</h2>" if title else "") + "".join(
        f'\n<figure><img src="{name}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in figures
    )


def _results_html(table: ResultTable) -> str:
    return (f"\n<h2>Results</h2>\n<p>{html.escape(table.title)} (mean ± standard deviation over "
            f"the completed trials of each row; n trials)</p>\n{_table_html(table)}")
