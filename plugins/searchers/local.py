"""Greedy local search (hill climbing) with random restarts (Pourchot2022, ch. 4.3.3).

From a random configuration (or ``start``), the searcher evaluates the neighbours of the
current configuration (:meth:`medtune.search.SearchSpace.neighbours`: one parameter moved one
step) and moves:

- ``strategy="best"`` (the greedy search of Pourchot2022): once every neighbour is evaluated,
  to the best one if it improves on the current configuration;
- ``strategy="first"``: to the first neighbour, in a random order, that improves on it.

When no neighbour improves, the current configuration is a local optimum (recorded in
:attr:`LocalSearcher.optima`) and the search restarts from a random configuration it has not
evaluated. No configuration is proposed twice: results are remembered and reused when a
neighbourhood overlaps one seen before. On a finite space the search finishes when every
configuration has been proposed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medtune.search.searcher import Proposal, Searcher, SearcherError, Suggestion
from medtune.search.space import SearchSpace, UniqueSampler

STRATEGIES = ("best", "first")


class LocalSearcher(Searcher):
    """Hill climbing with restarts; see the module docstring.

    Args:
        strategy: ``"best"`` (best improvement) or ``"first"`` (first improvement).
        start: optional first configuration.
        The other arguments are the :class:`Searcher` ones (``max_trials`` bounds the search).
    """

    name = "local"

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        strategy: str = "best",
        start: Mapping[str, Any] | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(space, **shared)
        if strategy not in STRATEGIES:
            raise SearcherError(
                f"local: strategy must be 'best' (best improvement) or 'first' (first "
                f"improvement), got {strategy!r}"
            )
        self.strategy = strategy
        self._start = None if start is None else self.space.validate(start)
        self._sampler = UniqueSampler(self.space, self.rng)
        self._configs: dict[str, dict[str, Any]] = {}
        self._scores: dict[str, float | None] = {}
        self._current: str | None = None
        self._neighbours: list[str] = []
        self._queue: list[str] = []
        self._restarts = -1
        self._steps = 0
        self._optima: list[str] = []

    @property
    def optima(self) -> list[tuple[dict[str, Any], float]]:
        """``(config, value)`` of every local optimum reached so far, in order."""
        return [(dict(self._configs[k]), self._as_value(self._scores[k]))  # type: ignore
                for k in self._optima]

    def _remember(self, config: dict[str, Any]) -> str:
        key = SearchSpace._key(config)
        self._configs.setdefault(key, config)
        return key

    def _move_to(self, key: str) -> None:
        self._current = key
        self._neighbours = [self._remember(c) for c in self.space.neighbours(self._configs[key])]
        queue = [k for k in self._neighbours if not self._sampler.seen(self._configs[k])]
        if self.strategy == "first":
            queue = [queue[i] for i in self.rng.permutation(len(queue))]
            self._neighbours = queue + [k for k in self._neighbours if k not in queue]
        self._queue = queue

    def _restart(self) -> Proposal | None:
        if self._restarts < 0 and self._start is not None:
            config = dict(self._start)
            self._sampler.mark(config)
        else:
            config = self._sampler.draw()
            if config is None:
                return None
        self._restarts += 1
        self._steps = 0
        self._move_to(self._remember(config))
        return Proposal(config, tag={"role": "start" if self._restarts == 0 else "restart",
                                     "restart": self._restarts, "step": 0})

    def _improvement(self, current_score: float) -> str | None:
        """The neighbour to move to, or None (none yet, or a local optimum)."""
        if self.strategy == "first":
            for key in self._neighbours:
                score = self._scores.get(key)
                if score is not None and score < current_score:
                    return key
            return None
        resolved = [k for k in self._neighbours if k in self._scores]
        if len(resolved) < len(self._neighbours):
            return None
        candidates = [(self._scores[k], i, k) for i, k in enumerate(resolved)
                      if self._scores[k] is not None]
        if candidates:
            score, _, key = min(candidates)  # type: ignore[type-var]
            if score < current_score:
                return key
        return None

    def _settle(self) -> None:
        """Make every move the known results allow; drop a local optimum (or a failed start)."""
        while self._current is not None and self._current in self._scores:
            current_score = self._scores[self._current]
            if current_score is None:  # the current configuration failed: start elsewhere
                self._current = None
                return
            better = self._improvement(current_score)
            if better is not None:
                self._steps += 1
                self._move_to(better)
                continue
            if all(k in self._scores for k in self._neighbours):
                self._optima.append(self._current)  # a fixed point: restart at the next ask
                self._current = None
            return

    def _propose(self) -> Proposal | None:
        self._settle()
        if self._current is None:
            return self._restart()
        while self._queue:
            key = self._queue.pop(0)
            config = self._configs[key]
            if not self._sampler.seen(config):
                self._sampler.mark(config)
                return Proposal(dict(config), tag={"role": "neighbour", "restart": self._restarts,
                                                   "step": self._steps})
        return None  # waiting for results of the current neighbourhood

    def _observe(self, suggestion: Suggestion, score: float | None, failed: bool) -> None:
        self._scores[self._remember(dict(suggestion.config))] = score
        self._settle()

    def _exhausted(self) -> bool:
        return self._sampler.exhausted
