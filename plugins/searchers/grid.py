"""Grid search (seed 004, sec. 2.1.2.1): every configuration of a finite space, in order.

Configurations come in nested-loop order, the first parameter varying slowest (see
:meth:`medtune.search.SearchSpace.enumerate`). Floats are discretised into ``grid_points``
evenly spaced values (geometrically for log-scale floats), bounds included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from medtune.plugins.searchers.base import Proposal, Searcher, SearcherError
from medtune.search.space import Float, SearchSpace


class GridSearcher(Searcher):
    """Grid search over a finite space; finished once every configuration was proposed.

    Args:
        grid_points: values per float parameter, an integer or ``{name: count}``; required
            when the space has floats.
        The other arguments are the :class:`Searcher` ones.
    """

    name = "grid"

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        seed: int = 0,
        direction: str = "minimize",
        grid_points: int | Mapping[str, int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, direction=direction, **options)
        floats = [p.name for p in self.space.parameters if isinstance(p, Float)]
        if floats:
            if grid_points is None:
                raise SearcherError(
                    f"grid: the float parameter(s) {', '.join(map(repr, floats))} need "
                    "grid_points=<values per float> (or a table {name = count}) to be put on a "
                    "grid"
                )
            self.grid = self.space.discretize(grid_points)
        else:
            self.grid = self.space
        self.total: int = self.grid.size()  # type: ignore[assignment]
        self._configs: Iterator[dict[str, Any]] = self.grid.enumerate()
        self._position = 0

    def _propose(self) -> Proposal | None:
        config = next(self._configs, None)
        if config is None:
            return None
        self._position += 1
        return Proposal(config, tag={"grid_index": self._position - 1})

    def _exhausted(self) -> bool:
        return self._position >= self.total
