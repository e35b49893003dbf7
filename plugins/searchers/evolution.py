"""(1+1) evolution strategy with a decaying mutation rate (Pourchot2022, ch. 5.3.4).

At any time the searcher proposes a child of the best configuration found so far (the
*parent*): each active parameter mutates with probability p (see
:meth:`medtune.search.SearchSpace.mutate`), and the child replaces the parent when it is at
least as good. To keep early search from sticking to the start point, p decays over the
``budget`` trials from ``initial_rate`` (1: every parameter mutates) to ``final_rate``
(default 1/d for d parameters: one mutation on average), as Pourchot2022 does after brain storm
optimisation. Proposals never repeat a configuration already proposed.

The first proposal is ``start`` when given (Pourchot2022 starts from a known good model), a
random draw otherwise; until a first result arrives, further asks are random draws, so
parallel workers are never idle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medtune.search.searcher import Proposal, Searcher, SearcherError, Suggestion
from medtune.search.space import SearchSpace, UniqueSampler

SCHEDULES = ("linear", "geometric")


class EvolutionSearcher(Searcher):
    """(1+1)-ES; see the module docstring.

    Args:
        budget: number of trials; the mutation rate reaches ``final_rate`` at the last one and
            the searcher finishes after it.
        start: optional first configuration (the initial parent once evaluated).
        initial_rate, final_rate: mutation probability per parameter at the first and last
            trial; ``final_rate`` defaults to 1/d, d the number of parameters.
        schedule: ``"linear"`` or ``"geometric"`` interpolation between the two rates.
        scale: standard deviation of numeric and ordinal mutations, as a fraction of the
            parameter's (log-)range.
        retries: mutations tried before giving up on finding an unseen child; a random
            unseen configuration is proposed instead.
        The other arguments are the :class:`Searcher` ones (``max_trials`` defaults to
        ``budget``).
    """

    name = "evolution"

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        budget: int = 100,
        start: Mapping[str, Any] | None = None,
        initial_rate: float = 1.0,
        final_rate: float | None = None,
        schedule: str = "linear",
        scale: float = 0.2,
        retries: int = 100,
        **shared: Any,
    ) -> None:
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise SearcherError(f"evolution: budget must be an integer >= 1, got {budget!r}")
        shared.setdefault("max_trials", budget)
        super().__init__(space, **shared)
        dimension = len(self.space.names)
        final_rate = 1.0 / dimension if final_rate is None else final_rate
        for label, rate in (("initial_rate", initial_rate), ("final_rate", final_rate)):
            if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
                raise SearcherError(f"evolution: {label} must be in (0, 1], got {rate!r}")
        if schedule not in SCHEDULES:
            raise SearcherError(
                f"evolution: schedule must be 'linear' or 'geometric', got {schedule!r}"
            )
        if not isinstance(scale, (int, float)) or not scale > 0:
            raise SearcherError(f"evolution: scale must be a positive number, got {scale!r}")
        self.budget = budget
        self.initial_rate = float(initial_rate)
        self.final_rate = float(final_rate)
        self.schedule = schedule
        self.scale = float(scale)
        self.retries = int(retries)
        self.start = None if start is None else self.space.validate(start)
        self._sampler = UniqueSampler(self.space, self.rng)
        self._parent: tuple[float, dict[str, Any]] | None = None
        self._started = False

    def mutation_rate(self, trial: int) -> float:
        """Mutation probability per parameter for the ``trial``-th suggestion (from 0)."""
        if self.budget == 1:
            return self.final_rate
        progress = min(max(trial, 0), self.budget - 1) / (self.budget - 1)
        if self.schedule == "linear":
            return self.initial_rate + (self.final_rate - self.initial_rate) * progress
        return self.initial_rate * (self.final_rate / self.initial_rate) ** progress

    @property
    def parent(self) -> tuple[dict[str, Any], float] | None:
        """``(config, value)`` of the current parent, or None before the first result."""
        if self._parent is None:
            return None
        score, config = self._parent
        return dict(config), self._as_value(score)

    def _propose(self) -> Proposal | None:
        trial = self.asked
        if not self._started:
            self._started = True
            if self.start is not None:
                self._sampler.mark(self.start)
                return Proposal(dict(self.start), tag={"origin": "start", "trial": trial})
        if self._parent is None:
            config = self._sampler.draw()
            return None if config is None else Proposal(config, tag={"origin": "random",
                                                                     "trial": trial})
        rate = self.mutation_rate(trial)
        parent = self._parent[1]
        for _ in range(self.retries):
            child = self.space.mutate(parent, rate, self.rng, self.scale)
            if not self._sampler.seen(child):
                self._sampler.mark(child)
                return Proposal(child, tag={"origin": "mutation", "trial": trial,
                                            "mutation_rate": rate})
        config = self._sampler.draw()
        return None if config is None else Proposal(config, tag={"origin": "random",
                                                                 "trial": trial})

    def _observe(self, suggestion: Suggestion, score: float | None, failed: bool) -> None:
        if score is None:
            return
        if self._parent is None or score <= self._parent[0]:
            self._parent = (score, dict(suggestion.config))

    def _exhausted(self) -> bool:
        return self._sampler.exhausted
