"""The replay results of a study: for a study whose configuration has a ``[replay]`` table (see
:mod:`medtune.config`), the listed searchers replayed many times over the study's tabulated
values (Bertrand2019 sec. 2.4, table 2.3, :mod:`medtune.search.replay`), shown as a table of
draws per goal and a plot of the mean regret after each draw.

:func:`study_replay` computes them once; given a report folder, it keeps them in
``replay.json`` there and reuses that file until the trials or the ``[replay]`` table change.
``medtune run`` computes them once and hands them to the report and to the terminal;
``medtune report`` alone reuses the kept file.
"""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path

from medtune.report.source import ReportError, stored_config
from medtune.search.replay import TabulatedObjective, format_table, replay
from medtune.search.space import SearchSpace
from medtune.study.store import StudyStore, TrialState
from medtune.tasks import Figure, pyplot

#: The replay results kept in a report folder (see :func:`study_replay`).
REPLAY_FILE = "replay.json"


@dataclass(frozen=True)
class StudyReplay:
    """Searchers replayed over a finished study: ``table`` is Bertrand2019's table 2.3 (draws
    per goal, mean ± std and worst, next to the random-search theory) as text; ``regret`` the
    mean regret after each draw per searcher; ``configurations`` the tabulated configurations
    with a valid value, of ``population`` in the space."""

    table: str
    runs: int
    configurations: int
    population: int
    regret: dict[str, list[float]]


def study_replay(store: StudyStore, folder: Path | None = None) -> StudyReplay | None:
    """Replay the searchers of the study's ``[replay]`` table over its completed trials.

    Each configuration's value is the mean of its completed trials; failed configurations and
    those never run count as failures. With a report ``folder``, reuses ``folder/replay.json``
    when it was computed from the same trials and settings, and otherwise writes it there.
    None when the study has no ``[replay]`` table or no completed trial yet. Raises
    :class:`ReportError` for a space that is not finite.
    """
    config = stored_config(store)
    if config is None or config.replay is None:
        return None
    spec = config.replay
    trials = [t for t in store.trials() if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return None
    results = sorted((json.dumps(t.config, sort_keys=True),
                      t.value if t.state == TrialState.COMPLETE else None) for t in trials)
    fingerprint = hashlib.sha256(json.dumps(
        [results, config.space, store.direction, config.seed, list(spec.searchers), spec.runs,
         [g.label for g in spec.goals], spec.options], sort_keys=True, default=str,
    ).encode()).hexdigest()
    cache = folder / REPLAY_FILE if folder is not None else None
    if cache is not None and cache.exists():
        try:
            kept = json.loads(cache.read_text())
            if kept.get("fingerprint") == fingerprint:
                return StudyReplay(**kept["replay"])
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable or older cache is recomputed
    space = SearchSpace.from_dict(config.space, where=f"{store.path}: space")
    if not space.is_finite:
        raise ReportError(f"{store.path}: [replay] needs a finite space (ordinal and categorical "
                          "parameters, no floats); make the space finite or remove [replay]")
    objective = TabulatedObjective.from_results(
        space, [(t.config, t.value if t.state == TrialState.COMPLETE else None) for t in trials],
        direction=store.direction)
    reports = [replay(name, objective, runs=spec.runs, seed=config.seed, goals=spec.goals,
                      **spec.options.get(name, {}))
               for name in spec.searchers]
    result = StudyReplay(
        table=format_table(reports),
        runs=spec.runs,
        configurations=objective.total,
        population=objective.population,
        regret={r.searcher: [float(v) for v in r.mean_regret] for r in reports},
    )
    if cache is not None:
        folder.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"fingerprint": fingerprint, "replay": result.__dict__}))
    return result


def plot_replay(result: StudyReplay, direction: str, folder: Path) -> list[Figure]:
    """The mean regret after each draw of every replayed searcher, ``replay_regret.png``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in result.regret.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("draws (configurations evaluated)")
    ax.set_ylabel("mean regret (gap to the best value)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"replayed searches: {result.runs} runs each over {result.configurations} "
                 "tabulated models")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "replay_regret.png", dpi=100)
    plt.close(fig)
    return [("replay_regret.png",
             f"Mean regret after each draw over {result.runs} replays of each searcher on the "
             f"study's {result.configurations} tabulated models (Bertrand2019 sec. 2.4): the "
             f"gap between the best value of the space and the best value found so far "
             f"({'higher' if direction == 'maximize' else 'lower'} values are better, so the "
             "regret is their absolute difference). A run that reached every goal keeps its "
             "last regret.")]


def replay_html(result: StudyReplay) -> str:
    """The replay section of the report page: the table of draws per goal."""
    return (f"\n<h2>Replay</h2>\n<p>Draws needed to reach each goal, mean ± std and worst over "
            f"{result.runs} replays per searcher over the {result.configurations} models the "
            f"study trained (of {result.population} in the space), with uniform random search "
            f"without replacement in theory (Bertrand2019 table 2.3, eq. 2.20-2.22).</p>\n"
            f"<pre>{html.escape(result.table)}</pre>")
