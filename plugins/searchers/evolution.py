"""Evolution: a (1+1) evolution strategy with a decaying mutation rate (Pourchot2022, ch.
5.3.4), or NSGA-II (Deb et al. 2002) for several objectives.

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

NSGA-II (``algorithm = "nsga2"``, the default when the study has several objectives): the
first ``population`` proposals are random draws (or ``start`` and draws); after that each
proposal is a child of two parents, each the winner of a binary tournament in the current
population, combined by uniform crossover (each parameter from either parent; on spaces
without conditional parameters) and mutated (rate 1/d, step ``scale``). The population is the
best ``population`` of all the results told so far, by constrained non-dominated sorting
(feasible results first, by Pareto front; infeasible ones after, by total violation) and
crowding distance. This is the steady-state form of NSGA-II: a child is proposed as soon as a
worker is free, rather than a generation at a time, so that asynchronous workers never wait;
with one worker the two coincide up to the order in which children replace parents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medtune.search.objectives import crowding_distance, non_dominated_sort
from medtune.search.searcher import Proposal, Searcher, SearcherError, Suggestion
from medtune.search.space import SearchSpace, SearchSpaceError, UniqueSampler

SCHEDULES = ("linear", "geometric")
ALGORITHMS = ("auto", "es", "nsga2")


class EvolutionSearcher(Searcher):
    """(1+1)-ES or NSGA-II; see the module docstring.

    Args:
        algorithm: ``"es"`` ((1+1)-ES, one objective), ``"nsga2"`` or ``"auto"`` (default:
            NSGA-II for several objectives, the ES otherwise).
        population: NSGA-II's population size (and its random initial proposals).
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
    multi_objective = True

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        budget: int = 100,
        algorithm: str = "auto",
        population: int = 20,
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
        if algorithm not in ALGORITHMS:
            raise SearcherError(f"evolution: algorithm must be one of {', '.join(ALGORITHMS)}, "
                                f"got {algorithm!r}")
        if algorithm == "auto":
            algorithm = "nsga2" if self.objectives.multi else "es"
        if algorithm == "es" and self.objectives.multi:
            raise SearcherError("evolution: the (1+1)-ES optimises one objective; use "
                                "algorithm = \"nsga2\" for several")
        if not isinstance(population, int) or isinstance(population, bool) or population < 2:
            raise SearcherError(f"evolution: population must be an integer >= 2, got "
                                f"{population!r}")
        self.algorithm = algorithm
        self.population = population
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
        # NSGA-II: every result told, as (config, score vector, total violation)
        self._results: list[tuple[dict[str, Any], tuple[float, ...], float]] = []
        self._violations: dict[int, float] = {}

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
        if self.algorithm == "nsga2":
            return self._nsga2_proposal(trial)
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

    # -- NSGA-II ---------------------------------------------------------------------------------
    def _nsga2_proposal(self, trial: int) -> Proposal | None:
        if len(self._results) < self.population or self.asked < self.population:
            config = self._sampler.draw()
            return None if config is None else Proposal(config, tag={"origin": "random",
                                                                     "trial": trial})
        members, rank, crowding = self.current_population()
        rate = 1.0 / max(1, len(self.space.names))

        def tournament() -> dict[str, Any]:
            a, b = self.rng.integers(len(members), size=2)
            better = a if (rank[a], -crowding[a]) <= (rank[b], -crowding[b]) else b
            return members[int(better)]

        for _ in range(self.retries):
            first, second = tournament(), tournament()
            child = self._crossover(first, second)
            try:
                child = self.space.mutate(child, rate, self.rng, self.scale)
            except SearchSpaceError:
                child = self.space.mutate(first, rate, self.rng, self.scale)
            if not self._sampler.seen(child):
                self._sampler.mark(child)
                return Proposal(child, tag={"origin": "offspring", "trial": trial})
        config = self._sampler.draw()
        return None if config is None else Proposal(config, tag={"origin": "random",
                                                                 "trial": trial})

    def _crossover(self, first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
        """Uniform crossover (each parameter from either parent); the first parent itself on
        a space with conditional parameters, where a mix may not be a configuration."""
        if any(p.condition for p in self.space.parameters):
            return dict(first)
        take = self.rng.random(len(self.space.names)) < 0.5
        return {name: (second if pick else first)[name]
                for name, pick in zip(self.space.names, take)}

    def current_population(self) -> tuple[list[dict[str, Any]], list[int], list[float]]:
        """NSGA-II's population: the configurations kept, their front (0 the best; infeasible
        results rank after every feasible one) and crowding distance."""
        feasible = [i for i, r in enumerate(self._results) if r[2] == 0]
        infeasible = sorted((i for i, r in enumerate(self._results) if r[2] > 0),
                            key=lambda i: self._results[i][2])
        fronts = [[feasible[j] for j in front] for front in non_dominated_sort(
            np.array([self._results[i][1] for i in feasible]).reshape(len(feasible), -1))]
        fronts += [[i] for i in infeasible]
        members: list[int] = []
        rank: list[int] = []
        crowding: list[float] = []
        for level, front in enumerate(fronts):
            distance = crowding_distance(np.array([self._results[i][1] for i in front]))
            order = sorted(range(len(front)), key=lambda k: -distance[k])
            room = self.population - len(members)
            for k in order[:room]:
                members.append(front[k])
                rank.append(level)
                crowding.append(float(distance[k]))
            if len(members) >= self.population:
                break
        return [dict(self._results[i][0]) for i in members], rank, crowding

    def _observe_constraints(self, suggestion: Suggestion, values: tuple[float, ...]) -> None:
        self._violations[suggestion.id] = sum(
            c.violation(v) for c, v in zip(self.objectives.constraints, values))

    def _observe(self, suggestion: Suggestion, score: Any, failed: bool) -> None:
        violation = self._violations.pop(suggestion.id, 0.0)
        if score is None:
            return
        if self.algorithm == "nsga2":
            vector = tuple(score) if isinstance(score, tuple) else (score,)
            self._results.append((dict(suggestion.config), vector, violation))
            return
        if violation > 0:
            return  # an infeasible child never becomes the ES's parent
        if self._parent is None or score <= self._parent[0]:
            self._parent = (score, dict(suggestion.config))

    def _exhausted(self) -> bool:
        return self._sampler.exhausted
