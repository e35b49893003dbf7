"""Hyper-parameter search: the searcher contract, spaces, random-search theory and replays.

- :mod:`medtune.search.searcher`: :class:`Searcher`, the base class of every searcher (its
  ask/tell interface, :class:`Suggestion` and :class:`Proposal`, and the one owner of a
  study's direction and failure policy);
- :mod:`medtune.search.space`: :class:`SearchSpace` and its parameters (float, int, ordinal,
  categorical, conditional; defined in :mod:`medtune.search.parameters`), declared in Python
  or in the TOML config;
- :mod:`medtune.search.objectives`: a study's objectives and constraints
  (:class:`~medtune.search.objectives.Objectives`), Pareto fronts and hypervolume;
- :mod:`medtune.search.theory`: the odds of random search (Bertrand2019, eq. 2.20-2.22,
  table 2.2);
- :mod:`medtune.search.replay`: many seeded runs of a searcher over a tabulated objective
  (Bertrand2019, table 2.3).

The searchers themselves are plugins of kind ``searcher``: ``medtune.create("searcher", name,
space=..., seed=..., direction=..., **options)`` builds one; a plugin's own searcher subclasses
:class:`Searcher`.
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
from medtune.search.searcher import (
    DIRECTIONS,
    FAILURE_POLICIES,
    SHARED_OPTIONS,
    Proposal,
    Searcher,
    SearcherError,
    Suggestion,
    split_options,
    to_score,
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
    "DIRECTIONS",
    "FAILURE_POLICIES",
    "SHARED_OPTIONS",
    "TABLE_2_3_GOALS",
    "Categorical",
    "Float",
    "Goal",
    "GoalSummary",
    "Int",
    "Ordinal",
    "Parameter",
    "Proposal",
    "ReplayError",
    "ReplayReport",
    "SearchSpace",
    "SearchSpaceError",
    "Searcher",
    "SearcherError",
    "Suggestion",
    "TabulatedObjective",
    "UniqueSampler",
    "format_table",
    "replay",
    "split_options",
    "to_score",
]
