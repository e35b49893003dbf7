"""Built-in searchers, each a :class:`medtune.search.Searcher` behind one ask/tell interface.

``grid`` and ``random`` (Bertrand2019, sec. 2.1), ``bayes`` (GP Bayesian optimisation,
Bertrand2019, sec. 2.2-2.3), ``hyperband`` (Bertrand2019, sec. 2.5.1), ``bohb`` (Hyperband with
GP proposals, Bertrand2019, sec. 2.5), ``evolution`` ((1+1)-ES, Pourchot2022, ch. 5.3.4),
``local`` (greedy hill climbing, Pourchot2022, ch. 4.3.3) and ``optuna`` (Optuna's samplers, with
the extra ``medtune[optuna]``); build one with
``medtune.create("searcher", name, space=..., seed=..., direction=..., **options)``.
"""

from medtune.plugins.searchers.bayes import BayesSearcher
from medtune.plugins.searchers.bohb import BOHBSearcher
from medtune.plugins.searchers.evolution import EvolutionSearcher
from medtune.plugins.searchers.grid import GridSearcher
from medtune.plugins.searchers.hyperband import BracketPlan, HyperbandSearcher, bracket_plan
from medtune.plugins.searchers.local import LocalSearcher
from medtune.plugins.searchers.optuna_sampler import OptunaSearcher
from medtune.plugins.searchers.random import RandomSearcher
from medtune.search.searcher import (  # the contract, re-exported beside its implementations
    Proposal,
    Searcher,
    SearcherError,
    Suggestion,
)

#: ``{name: factory}`` as registered under the ``searcher`` kind by the built-in plugin.
SEARCHERS = {
    "grid": GridSearcher,
    "random": RandomSearcher,
    "bayes": BayesSearcher,
    "hyperband": HyperbandSearcher,
    "bohb": BOHBSearcher,
    "evolution": EvolutionSearcher,
    "local": LocalSearcher,
    "optuna": OptunaSearcher,
}

__all__ = [
    "SEARCHERS",
    "BOHBSearcher",
    "BayesSearcher",
    "BracketPlan",
    "EvolutionSearcher",
    "GridSearcher",
    "HyperbandSearcher",
    "LocalSearcher",
    "OptunaSearcher",
    "Proposal",
    "RandomSearcher",
    "Searcher",
    "SearcherError",
    "Suggestion",
    "bracket_plan",
]
