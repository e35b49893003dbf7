"""Grid search (Bertrand2019, sec. 2.1.2.1): every configuration of a finite space, in order.

Configurations come in nested-loop order, the first parameter varying slowest (see
:meth:`medtune.search.SearchSpace.enumerate`). Floats are discretised into ``grid_points``
evenly spaced values (geometrically for log-scale floats), bounds included. With ``repeats``
each configuration is proposed that many times in a row (each trial gets its own seed), so a
study can report a mean and a spread per configuration, as results tables do (e.g. the sweep of
the L2 weight in Rukundo2021).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from medtune.search.searcher import Proposal, Searcher, SearcherError
from medtune.search.space import Float, SearchSpace


class GridSearcher(Searcher):
    """Grid search over a finite space; finished once every configuration was proposed.

    Args:
        grid_points: values per float parameter, an integer or ``{name: count}``; required
            when the space has floats.
        repeats: how many times each configuration is proposed (replicates with different
            trial seeds); tagged ``replicate`` 0, 1, ...
        The other arguments are the :class:`Searcher` ones.
    """

    name = "grid"
    multi_objective = True

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        grid_points: int | Mapping[str, int] | None = None,
        repeats: int = 1,
        **shared: Any,
    ) -> None:
        super().__init__(space, **shared)
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise SearcherError(f"grid: repeats must be an integer >= 1, got {repeats!r}")
        self.repeats = repeats
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
        self.total: int = self.grid.size() * repeats  # type: ignore[operator]
        self._configs: Iterator[dict[str, Any]] = self.grid.enumerate()
        self._config: dict[str, Any] = {}
        self._position = 0

    def _propose(self) -> Proposal | None:
        if self._position >= self.total:
            return None
        index, replicate = divmod(self._position, self.repeats)
        if replicate == 0:
            self._config = next(self._configs)
        self._position += 1
        tag: dict[str, Any] = {"grid_index": index}
        if self.repeats > 1:
            tag["replicate"] = replicate
        return Proposal(dict(self._config), tag=tag)

    def _exhausted(self) -> bool:
        return self._position >= self.total

    def _planned(self) -> int:
        return self.total
