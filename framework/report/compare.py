"""Several studies side by side (Bertrand2019 Fig. 2.10 across methods): per searcher, over
its studies (seeds), the best value so far and the running median of all trials against trials
and against wall time, and the best value per searcher (:func:`write_comparison`)."""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medtune.report.plots import best_so_far, running_median
from medtune.report.source import ReportError, finished_trials, stored_config
from medtune.study.store import StudyStore, Trial, TrialState
from medtune.tables import format_number
from medtune.tasks import pyplot


@dataclass(frozen=True)
class MethodSummary:
    """The best value each study of one searcher reached: ``best`` per study, in the order
    given, with their mean and sample standard deviation (0 for one study)."""

    searcher: str
    studies: tuple[str, ...]
    best: tuple[float, ...]
    mean: float
    std: float


def _curves(trials: list[Trial], maximize: bool) -> dict[str, list[float]]:
    """Per finished trial (completion order): best so far, running median, wall minutes."""
    values = [t.value if t.state == TrialState.COMPLETE else None for t in trials]
    start = min(t.started for t in trials)
    return {
        "best": [math.nan if b is None else b for b in best_so_far(values, maximize)],
        "median": [math.nan if m is None else m for m in running_median(values)],
        "minutes": [((t.finished or t.started) - start).total_seconds() / 60 for t in trials],
    }


def _band(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Median, minimum and maximum over curves of unequal length. A shorter curve (a study
    that stopped after fewer trials) holds its last value: otherwise the median would jump
    whenever a study drops out, and a median of best-so-far curves could fall."""
    length = max(len(c) for c in curves)
    median, low, high = [], [], []
    for i in range(length):
        column = [c[min(i, len(c) - 1)] for c in curves if c]
        column = [v for v in column if not math.isnan(v)]
        median.append(statistics.median(column) if column else math.nan)
        low.append(min(column) if column else math.nan)
        high.append(max(column) if column else math.nan)
    return median, low, high


def _on_grid(minutes: list[float], values: list[float], grid: list[float]) -> list[float]:
    """A step curve (value held from each time on, the last one to the end of the grid, as
    a stopped study keeps its result) sampled at ``grid``; NaN before its start."""
    out, j = [], -1
    for time in grid:
        while j + 1 < len(minutes) and minutes[j + 1] <= time:
            j += 1
        out.append(values[j] if 0 <= j else math.nan)
    return out


def write_comparison(study_paths: Sequence[str | Path], folder: str | Path) -> tuple[Path, list[MethodSummary]]:
    """Compare studies by searcher (Bertrand2019 Fig. 2.10 across methods): write
    ``comparison.png`` and ``comparison.html`` into ``folder``; returns the HTML path and the
    best value per searcher over its studies.

    The figure has four panels: best value so far and running median of all trials, against
    completed trials and against wall time; per searcher the median over its studies (seeds)
    with the range between the lowest and highest shaded. A study that stopped earlier than
    others (fewer trials, or less time) keeps its last value to the end of the panel. All
    studies must share a direction.
    """
    if not study_paths:
        raise ReportError("compare needs at least one study file")
    folder = Path(folder)
    groups: dict[str, list[tuple[str, dict[str, list[float]], float]]] = {}
    directions = set()
    for path in study_paths:
        with StudyStore(path, read_only=True) as store:
            config = stored_config(store)
            searcher = config.searcher if config is not None else "unknown searcher"
            trials = finished_trials(store)
            best = store.best_trial()
            if best is None:
                raise ReportError(f"{path}: no completed trial to compare; run or resume the "
                                  "study first, or leave it out")
            directions.add(store.direction)
            groups.setdefault(searcher, []).append(
                (store.name, _curves(trials, store.direction == "maximize"), best.value))
    if len(directions) > 1:
        raise ReportError("the studies do not share a direction (some maximise, some minimise); "
                          "compare studies of one objective")
    maximize = directions.pop() == "maximize"
    summaries = []
    for searcher, runs in groups.items():
        best = tuple(b for _, _, b in runs)
        summaries.append(MethodSummary(
            searcher, tuple(name for name, _, _ in runs), best, statistics.fmean(best),
            statistics.stdev(best) if len(best) > 1 else 0.0))

    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    end = max(c["minutes"][-1] for runs in groups.values() for _, c, _ in runs) or 1.0
    grid = [end * k / 200 for k in range(201)]
    for colour, (searcher, runs) in enumerate(groups.items()):
        style = {"color": f"C{colour}"}
        for row, key in enumerate(("best", "median")):
            median, low, high = _band([c[key] for _, c, _ in runs])
            order = list(range(1, len(median) + 1))
            axes[row][0].plot(order, median, label=f"{searcher} ({len(runs)} studies)", **style)
            axes[row][0].fill_between(order, low, high, alpha=0.2, lw=0, **style)
            timed = _band([_on_grid(c["minutes"], c[key], grid) for _, c, _ in runs])
            axes[row][1].plot(grid, timed[0], **style)
            axes[row][1].fill_between(grid, timed[1], timed[2], alpha=0.2, lw=0, **style)
    axes[0][0].set_ylabel("best value so far")
    axes[1][0].set_ylabel("running median of all trials")
    axes[1][0].set_xlabel("completed trials")
    axes[1][1].set_xlabel("wall time (minutes)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{', '.join(groups)}: median over studies, range shaded "
                 f"({'max' if maximize else 'min'}imize)")
    fig.tight_layout()
    fig.savefig(folder / "comparison.png", dpi=100)
    plt.close(fig)

    rows = "\n".join(
        f"<tr><td>{html.escape(m.searcher)}</td><td>{len(m.best)}</td>"
        f"<td>{format_number(m.mean)} ± {format_number(m.std, 2)}</td>"
        f"<td>{html.escape(', '.join(format_number(b) for b in m.best))}</td></tr>"
        for m in summaries)
    page = folder / "comparison.html"
    page.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medtune comparison</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Comparison of {len(study_paths)} studies</h1>
<table><tr><th>searcher</th><th>studies</th><th>best value, mean ± std</th><th>per study</th></tr>
{rows}
</table>
<figure><img src="comparison.png" alt="comparison"><figcaption>Per searcher, the median over
its studies (seeds) of the best value so far (top) and of the running median of all trials
(bottom), against completed trials (left) and wall time (right); the shaded band spans the
lowest to the highest study; a study that stopped earlier keeps its last value. Bertrand2019
Fig. 2.10.</figcaption></figure>
</body></html>
""")
    return page, summaries
