"""Random search (Bertrand2019, sec. 2.1.2.2): configurations drawn from the space's prior.

On a finite space no configuration is drawn twice (Bertrand2019, sec. 2.4.1 assumes draws without
replacement; :mod:`medtune.search.theory` gives the resulting odds), and the search finishes
once every configuration was proposed. Failed configurations are never proposed again,
whatever the failure policy: random search learns nothing from results.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medtune.search.searcher import Proposal, Searcher
from medtune.search.space import SearchSpace, UniqueSampler


class RandomSearcher(Searcher):
    """Random search without replacement; see the module docstring.

    Takes the :class:`Searcher` arguments only (``max_trials`` bounds the number of draws).
    """

    name = "random"
    multi_objective = True

    def __init__(self, space: SearchSpace | Mapping[str, Any], **shared: Any) -> None:
        super().__init__(space, **shared)
        self._sampler = UniqueSampler(self.space, self.rng)

    def _propose(self) -> Proposal | None:
        config = self._sampler.draw()
        return None if config is None else Proposal(config)

    def _exhausted(self) -> bool:
        return self._sampler.exhausted
