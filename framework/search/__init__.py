"""Hyper-parameter search: spaces, random-search theory and simulated replays.

- :mod:`medtune.search.space`: :class:`SearchSpace` and its parameters (float, int, ordinal,
  categorical, conditional), declared in Python or in the TOML config;
- :mod:`medtune.search.theory`: the odds of random search (seed 004, eq. 2.20-2.22, table 2.2);
- :mod:`medtune.search.replay`: many seeded runs of a searcher over a tabulated objective
  (seed 004, table 2.3).

The searchers themselves are plugins of kind ``searcher`` (:mod:`medtune.plugins.searchers`).
"""

from medtune.search.replay import (
    TABLE_2_3_GOALS,
    Goal,
    GoalSummary,
    ReplayError,
    ReplayReport,
    TabulatedObjective,
    format_table,
    replay,
)
from medtune.search.space import (
    Categorical,
    Float,
    Int,
    Ordinal,
    Parameter,
    SearchSpace,
    SearchSpaceError,
    UniqueSampler,
)

__all__ = [
    "TABLE_2_3_GOALS",
    "Categorical",
    "Float",
    "Goal",
    "GoalSummary",
    "Int",
    "Ordinal",
    "Parameter",
    "ReplayError",
    "ReplayReport",
    "SearchSpace",
    "SearchSpaceError",
    "TabulatedObjective",
    "UniqueSampler",
    "format_table",
    "replay",
]
