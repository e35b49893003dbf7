"""The report's section for a study with several objectives or constraints: the Pareto front
as a figure (a scatter of the first two objectives with the front highlighted and infeasible
trials greyed; parallel coordinates, each objective's axis scaled to its range, beyond two)
and as a table (:func:`medtune.tables.front_table`)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from medtune.search.objectives import Objectives
from medtune.study.store import StudyStore, Trial, TrialState
from medtune.tables import front_table, study_objectives
from medtune.tasks import Figure, pyplot


def pareto_section(store: StudyStore, trials: Sequence[Trial], folder: Path) -> str:
    """The HTML of the section (its figure written into ``folder``); empty for a study with
    one objective and no constraint."""
    objectives = study_objectives(store)
    if not objectives.multi and not objectives.constraints:
        return ""
    table = front_table(trials, objectives)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table.header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                     for row in table.rows)
    figure = pareto_figure(trials, objectives, folder) if objectives.multi else None
    image = (f'\n<figure><img src="{figure[0]}" alt="{html.escape(figure[1])}">'
             f"<figcaption>{html.escape(figure[1])}</figcaption></figure>" if figure else "")
    note = (f"<p>{table.infeasible} completed trial(s) break a constraint: kept, never on the "
            "front.</p>" if table.infeasible else "")
    return (f"\n<h2>{html.escape(table.title)}</h2>{image}\n{note}<table><tr>{head}</tr>\n"
            f"{body}\n</table>")


def pareto_figure(trials: Sequence[Trial], objectives: Objectives,
                  folder: Path) -> Figure | None:
    """Write ``pareto.png`` for the COMPLETE ``trials``: a scatter of two objectives, or
    parallel coordinates for more; None when no trial returned every value."""
    plt = pyplot()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    rows = [(trial, objectives.vector(named), objectives.feasible(named))
            for trial, named in objectives.readable(complete)]
    if not rows:
        return None
    on_front = {t.id for t in objectives.front(complete)}
    names = objectives.names
    if len(names) == 2:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for label, keep, style in (
            ("infeasible", lambda r: not r[2], {"color": "0.8", "marker": "x"}),
            ("dominated", lambda r: r[2] and r[0].id not in on_front,
             {"color": "C0", "alpha": 0.5}),
            ("Pareto front", lambda r: r[0].id in on_front, {"color": "C3", "edgecolor": "k"}),
        ):
            points = [r[1] for r in rows if keep(r)]
            if points:
                ax.scatter(*zip(*points), s=22, label=f"{label} ({len(points)})", **style)
        front = sorted(r[1] for r in rows if r[0].id in on_front)
        if len(front) > 1:
            ax.plot(*zip(*front), color="C3", lw=1)
        ax.set_xlabel(f"{names[0]} ({objectives.directions[0]})")
        ax.set_ylabel(f"{names[1]} ({objectives.directions[1]})")
        ax.legend(loc="best", fontsize=8)
        caption = f"Pareto front of {names[0]} and {names[1]}; infeasible trials greyed"
    else:
        fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4.5))
        columns = list(zip(*(r[1] for r in rows)))
        low = [min(c) for c in columns]
        span = [(max(c) - min(c)) or 1.0 for c in columns]
        positions = list(range(len(names)))
        for trial, vector, feasible in sorted(rows, key=lambda r: r[0].id in on_front):
            scaled = [(v - lo) / s for v, lo, s in zip(vector, low, span)]
            if trial.id in on_front:
                ax.plot(positions, scaled, color="C3", lw=1.4)
            else:
                ax.plot(positions, scaled, color="C0" if feasible else "0.8", lw=0.7, alpha=0.5)
        ax.set_xticks(positions, [f"{n}\n({d[:3]})" for n, d in zip(names, objectives.directions)])
        ax.set_ylabel("scaled to each objective's range")
        caption = (f"parallel coordinates of {len(names)} objectives: the Pareto front in red, "
                   "dominated trials blue, infeasible ones grey")
    ax.set_title(f"{len(on_front)} trial(s) on the Pareto front")
    fig.tight_layout()
    fig.savefig(folder / "pareto.png", dpi=100)
    plt.close(fig)
    return "pareto.png", caption
