"""Study reports: PNG plots and one HTML page, written from a study file (read-only).

Plots: the best value so far against completed trials (with every trial's value and the
running median of all trials, as in seed 004 Fig. 2.10), the best value so far against wall
time, the objective against each parameter (shaded by training budget), and the learning
curves that trials reported (value per epoch or resource level).
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

from medtune.study.store import StudyStore, Trial, TrialState


def _finished(store: StudyStore) -> list[Trial]:
    trials = [t for t in store.trials() if t.completion_order is not None]
    return sorted(trials, key=lambda t: t.completion_order)


def best_so_far(values: list[float | None], maximize: bool) -> list[float | None]:
    """Running best of ``values`` (None for failed trials is skipped)."""
    best, out = None, []
    for value in values:
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        out.append(best)
    return out


def running_median(values: list[float | None]) -> list[float | None]:
    """Median of all successful values up to each position."""
    seen, out = [], []
    for value in values:
        if value is not None:
            seen.append(value)
        out.append(statistics.median(seen) if seen else None)
    return out


def _plot(store: StudyStore, trials: list[Trial], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maximize = store.direction == "maximize"
    values = [t.value if t.state == TrialState.COMPLETE else None for t in trials]
    order = list(range(1, len(trials) + 1))
    names = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ok = [(i, v) for i, v in zip(order, values) if v is not None]
    if ok:
        ax.scatter(*zip(*ok), s=14, color="0.6", label="trial value")
    ax.step(order, [float("nan") if b is None else b for b in best_so_far(values, maximize)],
            where="post", color="C0", label="best so far")
    ax.plot(order, [float("nan") if m is None else m for m in running_median(values)],
            color="C1", label="running median of all trials")
    failed = [i for i, t in zip(order, trials) if t.state == TrialState.FAIL]
    for i in failed:
        ax.axvline(i, color="C3", alpha=0.25, lw=1)
    ax.set_xlabel("completed trials")
    ax.set_ylabel("objective")
    ax.set_title(f"{store.name}: best so far ({'max' if maximize else 'min'}imize)"
                 + (f"; {len(failed)} failed (red)" if failed else ""))
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "best_by_trial.png", dpi=100)
    plt.close(fig)
    names.append("best_by_trial.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    if trials:
        start = min(t.started for t in trials)
        times = [((t.finished or t.started) - start).total_seconds() / 60 for t in trials]
        ax.step(times, [float("nan") if b is None else b for b in best_so_far(values, maximize)],
                where="post", color="C0")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("best objective so far")
    ax.set_title("best so far over time")
    fig.tight_layout()
    fig.savefig(folder / "best_by_time.png", dpi=100)
    plt.close(fig)
    names.append("best_by_time.png")

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names_seen = sorted({name for t in complete for name in t.config})
    if complete and names_seen:
        fig, axes = plt.subplots(1, len(names_seen), figsize=(3.2 * len(names_seen), 3.2),
                                 squeeze=False)
        for ax, name in zip(axes[0], names_seen):
            having = [t for t in complete if name in t.config]
            _parameter_panel(ax, name, [(t.config[name], t.value) for t in having],
                             [t.resource or 0.0 for t in having])
        axes[0][0].set_ylabel("objective")
        budgets = sorted({t.resource for t in complete if t.resource is not None})
        note = f"; darker = larger budget ({', '.join(f'{b:g}' for b in budgets)})" if len(budgets) > 1 else ""
        fig.suptitle("objective against each parameter (completed trials" + note + ")")
        fig.tight_layout()
        fig.savefig(folder / "parameters.png", dpi=100)
        plt.close(fig)
        names.append("parameters.png")

    curves = [t for t in trials if t.intermediate]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for t in curves:
            steps = sorted(t.intermediate)
            ax.plot(steps, [t.intermediate[s] for s in steps], alpha=0.6, lw=1,
                    color="C3" if t.state == TrialState.FAIL else "C0")
        ax.set_xlabel("epoch / resource")
        ax.set_ylabel("reported value")
        ax.set_title("learning curves reported by the trials")
        fig.tight_layout()
        fig.savefig(folder / "learning_curves.png", dpi=100)
        plt.close(fig)
        names.append("learning_curves.png")
    return names


def _parameter_panel(ax, name: str, points: list[tuple[object, float]],
                     budgets: list[float]) -> None:
    """Objective against one parameter: a scatter for numbers, a strip per category otherwise."""
    values = [v for _, v in points]
    style = {"s": 14, "c": budgets, "cmap": "Blues", "vmin": -0.5 * max(budgets + [1.0]),
             "edgecolors": "0.3", "linewidths": 0.3}
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points):
        xs = [float(x) for x, _ in points]
        ax.scatter(xs, values, **style)
        if min(xs) > 0 and max(xs) / min(xs) > 100:
            ax.set_xscale("log")
    else:
        categories = sorted({str(x) for x, _ in points})
        position = {c: i for i, c in enumerate(categories)}
        ax.scatter([position[str(x)] for x, _ in points], values, **style)
        ax.set_xticks(range(len(categories)), categories, rotation=30)
    ax.set_xlabel(name)


def write_report(study_path: str | Path, folder: str | Path | None = None) -> Path:
    """Write ``index.html`` and the PNG plots of a study; returns the HTML path.

    ``folder`` defaults to ``<study file without suffix>_report`` next to the study.
    """
    study_path = Path(study_path)
    folder = Path(folder) if folder is not None else study_path.with_name(study_path.stem + "_report")
    folder.mkdir(parents=True, exist_ok=True)
    store = StudyStore(study_path)
    try:
        trials = _finished(store)
        plots = _plot(store, trials, folder)
        best = store.best_trial()
        counts = {state.value: sum(t.state == state for t in store.trials()) for state in TrialState}
        rows = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
                t.id, t.state.value, "" if t.value is None else f"{t.value:.4g}",
                "" if t.resource is None else f"{t.resource:g}",
                "" if t.duration is None else f"{t.duration:.1f}",
                json.dumps(t.config, sort_keys=True),
                (t.failure_reason.value if t.failure_reason else ""),
            )) + "</tr>"
            for t in sorted(store.trials(), key=lambda t: t.id)
        )
        best_text = (
            f"trial {best.id}: {best.value:.4g} with {html.escape(json.dumps(best.config, sort_keys=True))}"
            if best is not None else "no completed trial yet"
        )
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medtune study {html.escape(store.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Study {html.escape(store.name)}</h1>
<p>Direction: {store.direction}. Trials: {html.escape(json.dumps(counts))}.</p>
<p><b>Best:</b> {best_text}</p>
{''.join(f'<p><img src="{name}" alt="{name}"></p>' for name in plots)}
<h2>Trials</h2>
<table><tr><th>id</th><th>state</th><th>value</th><th>resource</th><th>seconds</th><th>config</th><th>failure</th></tr>
{rows}
</table></body></html>
"""
        (folder / "index.html").write_text(page)
    finally:
        store.close()
    return folder / "index.html"
